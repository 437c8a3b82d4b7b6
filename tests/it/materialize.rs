//! Reads the shards cannot answer alone whose parts run first: the part's rows (an uncorrelated
//! subquery's, a WITH query's, a table's) are read into shardwire and put into the statement.
//! Answers are compared with one database in `differential`; here, what users rely on around
//! them: their own writes seen inside a transaction, the size bound and what a failure leaves,
//! refusals that stand, the counters.

use tokio_postgres::SimpleQueryMessage;

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each};
use crate::shards::{MAP, sharded};

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

fn cells(msgs: &[SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_that_run_first_see_the_transaction_and_stay_bounded() {
    let (topo, _guard) = sharded().await;
    let config = topo
        .config(MAP)
        .replacen("[routing]\n", "[routing]\nmax_intermediate_bytes = 20000\n", 1);
    let proxy = Proxy::start(&config).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let rows: Vec<String> = (1..=2000).map(|i| format!("({i}, 'user{i}', {})", i % 100)).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        rows.join(",")
    ))
    .await
    .unwrap();
    let top = "SELECT id FROM users WHERE score = (SELECT max(score) FROM users) ORDER BY id LIMIT 3";
    assert_eq!(cells(&c.simple_query(top).await.unwrap()), ["99", "199", "299"]);
    // A negative OFFSET is an error over several shards too, as on one database.
    let e = c
        .simple_query("SELECT id FROM users ORDER BY id LIMIT 5 OFFSET -1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("2201X"), "{e:?}");
    // One statement with a `;` in a literal is still one statement.
    assert_eq!(
        cells(
            &c.simple_query(
                "SELECT count(*) FROM users WHERE name <> 'x;y' AND score = (SELECT max(score) FROM users)"
            )
            .await
            .unwrap()
        ),
        ["20"]
    );

    // Inside a transaction the part reads on the transaction's connections: it sees the
    // transaction's own uncommitted row, as one database would.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO users (id, name, score) VALUES (5001, 'new', 1000)")
        .await
        .unwrap();
    assert_eq!(cells(&c.simple_query(top).await.unwrap()), ["5001"]);
    let prepared = c.prepare(top).await.unwrap();
    let got: Vec<i64> = c
        .query(&prepared, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, [5001]);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(cells(&c.simple_query(top).await.unwrap()), ["99", "199", "299"]);

    // A write's uncorrelated subquery runs first, inside the transaction (it sees the
    // transaction's row), on every shard the write needs; through the extended protocol with
    // parameters too. Rolled back, nothing changed.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO users (id, name, score) VALUES (5002, 'new', 500)")
        .await
        .unwrap();
    let n = c
        .execute(
            "UPDATE users SET name = 'below' WHERE score < (SELECT max(score) FROM users) / $1",
            &[&100i32],
        )
        .await
        .unwrap();
    assert_eq!(n, 100, "scores 0..4 of 2000 rows, below 500 / 100");
    let deleted = c
        .simple_query("DELETE FROM users WHERE score IN (SELECT score FROM users WHERE name = 'below' AND score = 0)")
        .await
        .unwrap();
    assert!(
        deleted
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(20))),
        "{deleted:?}"
    );
    assert_eq!(
        cells(
            &c.simple_query("SELECT count(*) FROM users WHERE name = 'below'")
                .await
                .unwrap()
        ),
        ["80"]
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        cells(
            &c.simple_query("SELECT count(*) FROM users WHERE name = 'below' OR id = 5002")
                .await
                .unwrap()
        ),
        ["0"]
    );

    // Past the bound: 54000 naming the setting, and the session goes on.
    let whole = "SELECT id, row_number() OVER (ORDER BY score DESC, id) FROM users ORDER BY 2 LIMIT 2";
    let e = c.simple_query(whole).await.unwrap_err();
    assert_eq!(code(&e), Some("54000"), "{e:?}");
    assert!(
        e.as_db_error().unwrap().message().contains("max_intermediate_bytes"),
        "{e:?}"
    );
    // A narrower part fits.
    assert_eq!(
        cells(
            &c.simple_query("SELECT id, row_number() OVER (ORDER BY id) FROM users WHERE score = 7 ORDER BY 2 LIMIT 2")
                .await
                .unwrap()
        ),
        ["7", "107"]
    );
    // In a transaction the failure fails it, as any error does on one database.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(code(&c.simple_query(whole).await.unwrap_err()), Some("54000"));
    assert_eq!(code(&c.simple_query("SELECT 1").await.unwrap_err()), Some("25P02"));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        cells(&c.simple_query("SELECT count(*) FROM users").await.unwrap()),
        ["2000"]
    );

    // A subquery correlated on another column than the key needs the whole tables: over the
    // bound here.
    let e = c
        .simple_query(
            "SELECT count(*) FROM users u WHERE u.score > (SELECT count(*) FROM orders o WHERE o.status = u.name)",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("54000"), "{e:?}");
    // What cannot run on its own stays refused: a part naming an outer column unqualified, and
    // rows locked FOR UPDATE (the lock must be taken where the rows are).
    for sql in [
        "SELECT count(*) FROM users WHERE score IN (SELECT 1 FROM orders WHERE amount > score)",
        "SELECT * FROM users WHERE score IN (SELECT user_id FROM orders) FOR UPDATE",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), Some("0A000"), "{sql}: {e:?}");
    }
    c.batch_execute("SELECT 1").await.unwrap();

    // A character(n) value comes back whole (an aggregate's result has no length: not cut to
    // one character), a column with its own collation keeps the refusal (the rows would come
    // back in the database's), and so does a DateStyle that prints zone abbreviations.
    each(
        &c,
        "ALTER TABLE users ADD COLUMN tag char(3); ALTER TABLE users ADD COLUMN code text COLLATE \"C\"",
    )
    .await;
    c.batch_execute("UPDATE users SET tag = CASE WHEN id % 10 = 0 THEN 'abc' ELSE 'abb' END")
        .await
        .unwrap();
    let tagged = "SELECT count(*) FROM users WHERE tag = (SELECT max(tag) FROM users)";
    let e = c.simple_query(tagged).await.unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e:?}");
    each(&c, "ALTER TABLE users DROP COLUMN code").await;
    assert_eq!(cells(&c.simple_query(tagged).await.unwrap()), ["200"]);
    c.batch_execute("SET DateStyle = 'SQL, DMY'").await.unwrap();
    assert_eq!(code(&c.simple_query(tagged).await.unwrap_err()), Some("0A000"));
    c.batch_execute("RESET DateStyle").await.unwrap();
    assert_eq!(cells(&c.simple_query(tagged).await.unwrap()), ["200"]);

    // A type outside the built-in ones (an enum) is named as the shard's catalog names it. The
    // derived table's window is over every row, so its table is read first too (one level
    // nested).
    each(
        &c,
        "DROP TYPE IF EXISTS mood CASCADE; CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         ALTER TABLE users ADD COLUMN m mood",
    )
    .await;
    c.batch_execute("UPDATE users SET m = (ARRAY['sad', 'ok', 'happy']::mood[])[id % 3 + 1]")
        .await
        .unwrap();
    assert_eq!(
        cells(
            &c.simple_query(
                "SELECT count(*) FROM (SELECT m, row_number() OVER (ORDER BY id) AS r FROM users WHERE id <= 40) s \
                 WHERE m = 'happy' AND r % 2 = 0"
            )
            .await
            .unwrap()
        ),
        ["7"]
    );

    // Explained and counted apart by the admin console.
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let route = cells(
        &admin
            .simple_query("SHOW ROUTE FOR SELECT count(*) FROM users UNION ALL SELECT count(*) FROM events")
            .await
            .unwrap(),
    );
    assert!(route[0].starts_with("materialized:"), "{route:?}");
    assert!(
        route[1].starts_with("part 1: SELECT count(*) FROM users -- scatter s0,s1,s2 merge"),
        "{route:?}"
    );
    assert!(
        route[2].starts_with("part 2: SELECT count(*) FROM events -- scatter"),
        "{route:?}"
    );
    let routes: Vec<String> = admin
        .simple_query("SHOW ROUTES")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(format!("{} {}", r.get(0).unwrap_or(""), r.get(1).unwrap_or(""))),
            _ => None,
        })
        .collect();
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with("materialized ") && r != "materialized 0"),
        "{routes:?}"
    );
}
