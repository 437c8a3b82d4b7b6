//! INSERT without a column list into a sharded table: the values go to the table's columns in
//! their order, which only the shard's catalog knows. Once the session has read them, the
//! statement gets its column list written out and is planned like any INSERT (the key's place
//! among the values is then known, and an ID column left out is filled).

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
        let rewritten = with_columns("INSERT INTO users VALUES (1, 'a')", &cols(&["id", "name"])).unwrap();
        assert!(matches!(shape(&rewritten, &map), Shape::Insert { .. }), "{rewritten}");
    }
}
