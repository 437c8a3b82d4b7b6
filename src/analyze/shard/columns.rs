//! INSERTs into a sharded table that need a step before they can be routed. Without a column
//! list the values go to the table's columns in their order, which only the shard's catalog
//! knows: once the session has read them, the statement gets its column list written out. From
//! a SELECT, the rows do not exist before the SELECT runs: the session runs it where it is
//! planned, and the INSERT gets them as VALUES. Either way the result is planned like any
//! INSERT (each row by its key, split over shards atomically).

use super::*;

/// `sql`, an INSERT ... VALUES without a column list, with the first columns of `columns` (as
/// many as its rows have values) named. `None` when it is not such a statement, or a row has
/// more values than the table has columns (the server reports that error).
pub fn with_columns(sql: &str, columns: &[String]) -> Option<String> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Insert(ins)] = stmts.as_mut_slice() else {
        return None;
    };
    if !ins.columns.is_empty() {
        return None;
    }
    let SetExpr::Values(values) = ins.source.as_ref()?.body.as_ref() else {
        return None;
    };
    let width = values.rows.iter().map(|r| r.content.len()).max()?;
    if width > columns.len() {
        return None;
    }
    ins.columns = columns[..width]
        .iter()
        .map(|c| ObjectName(vec![ObjectNamePart::Identifier(Ident::with_quote('"', c.clone()))]))
        .collect();
    Some(stmts[0].to_string())
}

/// The source query of an INSERT ... SELECT into a sharded table.
pub(super) fn insert_select_source(stmt: &Statement, map: &ShardMap) -> Option<String> {
    let Statement::Insert(ins) = stmt else { return None };
    let TableObject::TableName(n) = &ins.table else {
        return None;
    };
    if !matches!(map.table(&last_name(n)), Some(TableRule::Sharded { .. })) {
        return None;
    }
    let source = ins.source.as_ref()?;
    if matches!(source.body.as_ref(), SetExpr::Values(_)) {
        return None;
    }
    Some(source.to_string())
}

/// `sql`, an INSERT ... SELECT, with its source replaced by `rows` as VALUES (text values as
/// string literals, which PostgreSQL reads with the target columns' input functions, as it
/// would the SELECT's output). No rows: a source that yields none (`width` NULLs WHERE false),
/// so the statement still answers as an INSERT of nothing, RETURNING's columns included.
pub fn with_rows(sql: &str, rows: &[Vec<Option<String>>], width: usize) -> Option<String> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Insert(ins)] = stmts.as_mut_slice() else {
        return None;
    };
    let source = ins.source.as_mut()?;
    if rows.is_empty() {
        let nulls = vec!["NULL"; width.max(1)].join(", ");
        let empty = Parser::parse_sql(&PostgreSqlDialect {}, &format!("SELECT {nulls} WHERE false")).ok()?;
        let [Statement::Query(q)] = empty.as_slice() else {
            return None;
        };
        *source = q.clone();
        return Some(stmts[0].to_string());
    }
    let value = |v: &Option<String>| {
        Expr::Value(
            match v {
                Some(s) => Value::SingleQuotedString(s.clone()),
                None => Value::Null,
            }
            .into(),
        )
    };
    let values = sqlparser::ast::Values {
        explicit_row: false,
        value_keyword: false,
        rows: rows
            .iter()
            .map(|r| sqlparser::ast::Parens {
                opening_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
                content: r.iter().map(value).collect(),
                closing_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            })
            .collect(),
    };
    *source.body = SetExpr::Values(values);
    source.order_by = None;
    source.limit_clause = None;
    source.with = None;
    Some(stmts[0].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_column_list_is_written_out_for_the_values_given() {
        let c = cols(&["id", "name", "Score"]);
        assert_eq!(
            with_columns("INSERT INTO users VALUES (1, 'a', 3), (2, 'b', 4)", &c).as_deref(),
            Some(r#"INSERT INTO users ("id", "name", "Score") VALUES (1, 'a', 3), (2, 'b', 4)"#)
        );
        // Fewer values than columns: the leading columns, as PostgreSQL assigns them.
        assert_eq!(
            with_columns("insert into users values ($1, $2) returning *", &c).as_deref(),
            Some(r#"INSERT INTO users ("id", "name") VALUES ($1, $2) RETURNING *"#)
        );
        assert_eq!(with_columns("INSERT INTO users VALUES (1, 2, 3, 4)", &c), None);
        assert_eq!(with_columns("INSERT INTO users (id) VALUES (1)", &c), None);
        assert_eq!(with_columns("SELECT 1", &c), None);
    }

    #[test]
    fn an_insert_select_gets_the_rows_as_values() {
        let sql = "INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, 3) g ORDER BY 1 LIMIT 2 RETURNING id";
        let rows = vec![
            vec![Some("1".into()), Some("it's".into())],
            vec![Some("2".into()), None],
        ];
        assert_eq!(
            with_rows(sql, &rows, 2).as_deref(),
            Some("INSERT INTO users (id, name) VALUES ('1', 'it''s'), ('2', NULL) RETURNING id")
        );
        assert_eq!(
            with_rows(sql, &[], 2).as_deref(),
            Some("INSERT INTO users (id, name) SELECT NULL, NULL WHERE false RETURNING id")
        );
    }

    #[test]
    fn an_insert_without_columns_into_a_sharded_table_waits_for_them() {
        let map = crate::shardmap::parse(
            r#"
version = 1
shards = ["s0", "s1"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 4 }
assignment = { s0 = "0-1", s1 = "2-3" }
[tables.users]
group = "users"
key = "id"
"#,
        )
        .unwrap();
        assert_eq!(
            shape("INSERT INTO public.users VALUES (1, 'a')", &map),
            Shape::InsertNoColumns {
                table: "public.users".into()
            }
        );
        assert_eq!(
            shape("INSERT INTO users (id) SELECT id FROM other WHERE x = 1", &map),
            Shape::InsertSelect {
                select: "SELECT id FROM other WHERE x = 1".into()
            }
        );
        let rewritten = with_columns("INSERT INTO users VALUES (1, 'a')", &cols(&["id", "name"])).unwrap();
        assert!(matches!(shape(&rewritten, &map), Shape::Insert { .. }), "{rewritten}");
    }
}
