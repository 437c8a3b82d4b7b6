use super::*;

fn map() -> ShardMap {
    crate::shardmap::parse(
        r#"
version = 1
shards = ["s0", "s1", "s2"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 64 }
assignment = { s0 = "0-20", s1 = "21-41", s2 = "42-63" }
[groups.events]
key_type = "bigint"
partitioning = { kind = "range" }
ranges = [{ to = 1000, shard = "s0" }, { from = 1000, to = 2000, shard = "s1" }, { from = 2000, shard = "s2" }]
[tables.users]
group = "users"
key = "id"
[tables.orders]
group = "users"
key = "user_id"
[tables.events]
group = "events"
key = "id"
[tables.countries]
reference = true
"#,
    )
    .expect("the test map parses")
}

fn parts(sql: &str) -> Vec<String> {
    plan(sql, &map())
        .unwrap_or_else(|| panic!("no parts for {sql}"))
        .parts
        .into_iter()
        .map(|p| p.sql)
        .collect()
}

fn rows(names: &[&str], types: &[&str], rows: &[&[Option<&str>]]) -> PartRows {
    PartRows {
        names: names.iter().map(|s| s.to_string()).collect(),
        types: types.iter().map(|s| s.to_string()).collect(),
        rows: rows
            .iter()
            .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
            .collect(),
    }
}

#[test]
fn uncorrelated_subqueries_run_first_and_correlated_ones_do_not() {
    assert_eq!(
        parts("SELECT * FROM users WHERE score IN (SELECT user_id FROM orders)"),
        ["SELECT user_id FROM orders"]
    );
    assert_eq!(
        parts("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.amount > 499)"),
        ["SELECT 1 FROM orders o WHERE o.amount > 499"]
    );
    // Correlated on something else than the key: the subquery needs the outer row.
    assert!(
        plan(
            "SELECT * FROM users u WHERE u.score > (SELECT avg(o.amount) FROM orders o WHERE o.status = u.country)",
            &map()
        )
        .is_none_or(|m| m.parts.iter().all(|p| !p.sql.contains("avg")))
    );
}

#[test]
fn an_in_list_of_keys_routes_like_one_written_by_hand() {
    let m = plan(
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders ORDER BY amount DESC LIMIT 2)",
        &map(),
    )
    .unwrap();
    let text = m
        .text(
            &[rows(&["user_id"], &["bigint"], &[&[Some("5")], &[Some("7")]])],
            usize::MAX,
        )
        .unwrap();
    assert_eq!(text, "SELECT * FROM users WHERE id IN ('5'::bigint, '7'::bigint)");
    match shape(&text, &map()) {
        Shape::Group { cond, .. } => assert_ne!(cond, KeyCond::All),
        other => panic!("{other:?}"),
    }
    // No rows: still a subquery, so NOT IN of nothing stays true.
    let text = m.text(&[rows(&["user_id"], &["bigint"], &[])], usize::MAX).unwrap();
    assert_eq!(
        text,
        "SELECT * FROM users WHERE id IN (SELECT c1 AS \"user_id\" FROM (VALUES (NULL::bigint)) AS shardwire_rows(c1) WHERE false)"
    );
    // A padded character(n) value does not route as written: the rows stay a query.
    let text = m
        .text(
            &[rows(&["user_id"], &["character(5)"], &[&[Some("ab   ")]])],
            usize::MAX,
        )
        .unwrap();
    assert!(text.contains("FROM (VALUES ('ab   '::character(5)))"), "{text}");
    // Past the length bound: refused rather than built.
    assert_eq!(
        m.text(&[rows(&["user_id"], &["bigint"], &[&[Some("5")], &[Some("7")]])], 40),
        Err(Unwritten::TooLong(40))
    );
}

#[test]
fn set_operation_branches_and_with_queries_run_first() {
    assert_eq!(
        parts("SELECT count(*) FROM users UNION ALL SELECT count(*) FROM orders"),
        ["SELECT count(*) FROM users", "SELECT count(*) FROM orders"]
    );
    // A reference-table branch stays.
    assert_eq!(
        parts("SELECT code FROM countries UNION ALL SELECT country FROM users ORDER BY 1"),
        ["SELECT country FROM users"]
    );
    let m = plan(
        "WITH t AS (SELECT status, count(*) AS n FROM orders GROUP BY status) SELECT sum(n) FROM t",
        &map(),
    )
    .unwrap();
    assert_eq!(
        m.parts[0].sql,
        "SELECT status, count(*) AS n FROM orders GROUP BY status"
    );
    let text = m
        .text(
            &[rows(
                &["status", "n"],
                &["text", "int8"],
                &[&[Some("it's"), Some("3")], &[None, Some("4")]],
            )],
            usize::MAX,
        )
        .unwrap();
    assert_eq!(
        text,
        "WITH t AS (SELECT c1 AS \"status\", c2 AS \"n\" FROM (VALUES ('it''s'::text, '3'::int8), (NULL::text, '4'::int8)) \
         AS shardwire_rows(c1, c2)) SELECT sum(n) FROM t"
    );
    assert_eq!(shape(&text, &map()), Shape::Neutral);
}

#[test]
fn whole_tables_come_last_with_their_where() {
    assert_eq!(
        parts("SELECT id, row_number() OVER (ORDER BY id) FROM users WHERE score > 5"),
        ["SELECT * FROM users WHERE score > 5"]
    );
    // A correlated subquery's WHERE names the outer table: its table comes whole.
    assert_eq!(
        parts("SELECT e.id FROM events e WHERE e.weight > (SELECT count(*) FROM orders o WHERE o.status = e.kind)"),
        ["SELECT * FROM events e", "SELECT * FROM orders o"]
    );
    assert_eq!(
        parts("SELECT u.id, e.id FROM users u JOIN events e ON e.id = u.id"),
        ["SELECT * FROM users u", "SELECT * FROM events e"]
    );
    let m = plan("SELECT sum(DISTINCT score) FROM users u", &map()).unwrap();
    let text = m
        .text(
            &[rows(
                &["id", "score"],
                &["int8", "int4"],
                &[&[Some("1"), Some("2")], &[Some("3"), Some("a\\b")]],
            )],
            usize::MAX,
        )
        .unwrap();
    assert_eq!(
        text,
        "SELECT sum(DISTINCT score) FROM (SELECT c1 AS \"id\", c2 AS \"score\" FROM (VALUES ('1'::int8, '2'::int4), \
         ('3'::int8, E'a\\\\b'::int4)) AS shardwire_rows(c1, c2)) AS u"
    );
}

#[test]
fn a_write_s_uncorrelated_subqueries_run_first() {
    let m = plan(
        "UPDATE users SET score = 1 WHERE score IN (SELECT user_id FROM orders)",
        &map(),
    )
    .unwrap();
    assert!(m.write);
    assert_eq!(
        m.parts.iter().map(|p| p.sql.as_str()).collect::<Vec<_>>(),
        ["SELECT user_id FROM orders"]
    );
    assert_eq!(
        parts("DELETE FROM orders WHERE amount > (SELECT avg(amount) FROM orders) RETURNING id"),
        ["SELECT avg(amount) FROM orders"]
    );
    // Correlated with the table written: not a part (it has no answer of its own).
    assert!(
        plan(
            "UPDATE users SET score = (SELECT max(amount) FROM orders o WHERE o.status = users.name)",
            &map()
        )
        .is_none()
    );
    // Only subqueries in expressions: the write's own FROM stays as written.
    assert!(
        plan(
            "UPDATE users SET score = 1 FROM (SELECT user_id FROM orders GROUP BY user_id) o WHERE o.user_id = users.score",
            &map()
        )
        .is_none()
    );
    assert!(
        !plan(
            "SELECT * FROM users WHERE score IN (SELECT user_id FROM orders)",
            &map()
        )
        .unwrap()
        .write
    );
    // A map that refuses writes on every shard: only a write the key narrows gets parts.
    let mut strict = map();
    strict.refuse_scatter_writes = true;
    assert!(
        plan(
            "UPDATE users SET score = 1 WHERE score IN (SELECT user_id FROM orders)",
            &strict
        )
        .is_none()
    );
    assert!(
        plan(
            "UPDATE users SET score = (SELECT max(score) FROM users) WHERE id = 3",
            &strict
        )
        .is_some()
    );
}

#[test]
fn writes_locks_and_recursive_queries_are_left_alone() {
    for sql in [
        "SELECT * FROM users WHERE score IN (SELECT user_id FROM orders) FOR UPDATE",
        "WITH d AS (DELETE FROM orders RETURNING user_id) SELECT count(*) FROM users WHERE score IN (SELECT user_id FROM d)",
        "INSERT INTO users (id, score) SELECT 1, (SELECT max(score) FROM users)",
        "SELECT 1; SELECT 2",
        "SELECT \"__shardwire_rows_0\" FROM users",
    ] {
        assert!(plan(sql, &map()).is_none(), "{sql}");
    }
    // A subquery naming the main query's WITH query cannot run on its own.
    let m = plan(
        "WITH t AS (SELECT user_id FROM orders WHERE user_id = 3) SELECT * FROM users WHERE score IN (SELECT user_id FROM t)",
        &map(),
    );
    assert!(m.is_none_or(|m| m.parts.iter().all(|p| !p.sql.contains("FROM t"))));
}

#[test]
fn marks_in_the_rows_are_data() {
    let m = plan(
        "SELECT count(*) FROM users UNION ALL SELECT count(*) FROM orders",
        &map(),
    )
    .unwrap();
    let text = m
        .text(
            &[
                rows(&["count"], &["text"], &[&[Some("(SELECT \"__shardwire_rows_1\")")]]),
                rows(&["count"], &["int8"], &[&[Some("9")]]),
            ],
            usize::MAX,
        )
        .unwrap();
    assert!(text.contains("'(SELECT \"__shardwire_rows_1\")'::text"), "{text}");
    assert!(text.contains("'9'::int8"), "{text}");
    assert!(
        m.text(&[rows(&["count"], &["int8"], &[])], usize::MAX).is_err(),
        "one rows per part"
    );
}

#[test]
fn parameters_become_literals_of_their_declared_types() {
    let p = |v: Option<&str>, t: Option<&str>| ParamText {
        value: v.map(str::to_owned),
        ty: t.map(str::to_owned),
    };
    assert_eq!(
        inline_params(
            "SELECT * FROM users WHERE score > $1 AND name <> $2 AND country = '$1' AND id IN (SELECT user_id FROM orders WHERE amount > $3)",
            &[p(Some("5"), Some("bigint")), p(Some("o'k"), None), p(None, Some("numeric"))]
        )
        .as_deref(),
        Some(
            "SELECT * FROM users WHERE score > ('5'::BIGINT) AND name <> ('o''k') AND country = '$1' AND id IN \
             (SELECT user_id FROM orders WHERE amount > (NULL::NUMERIC))"
        )
    );
    assert_eq!(inline_params("SELECT $2", &[p(Some("1"), None)]), None);
}

#[test]
fn a_where_pushed_into_a_part_is_not_evaluated_again() {
    let m = plan(
        "SELECT id, row_number() OVER (ORDER BY id) FROM users WHERE random() < 0.5",
        &map(),
    )
    .unwrap();
    assert_eq!(m.parts[0].sql, "SELECT * FROM users WHERE random() < 0.5");
    let text = m
        .text(&[rows(&["id"], &["bigint"], &[&[Some("1")]])], usize::MAX)
        .unwrap();
    assert!(!text.contains("random"), "{text}");
}

#[test]
fn collations_schemas_and_marks_in_strings_keep_the_refusal() {
    // A part collating its values would give them back in the default collation.
    assert!(
        plan(
            "SELECT * FROM users WHERE name < (SELECT max(name COLLATE \"C\") FROM users)",
            &map()
        )
        .is_none_or(|m| m.parts.iter().all(|p| !p.sql.contains("COLLATE")))
    );
    // `public.users.id` names no column of a derived table.
    assert!(
        plan(
            "SELECT public.users.id, row_number() OVER (ORDER BY public.users.id) FROM public.users",
            &map()
        )
        .is_none()
    );
    // A mark written with escapes in a string literal.
    assert!(
        plan(
            "SELECT E'(SELECT \"\\x5f_shardwire_rows_0\")' FROM users UNION ALL SELECT 'x' FROM events",
            &map()
        )
        .is_none()
    );
    // The tables the parts read, for the collation check.
    let m = plan(
        "SELECT count(*) FROM users UNION ALL SELECT count(*) FROM orders",
        &map(),
    )
    .unwrap();
    assert_eq!(m.tables, ["users", "orders"]);
}
