//! DDL on a sharded map: which statements change tables (and so run on every shard), and the one
//! time they may not: while a partition of the table's group is being moved, the copy on the
//! target was made from the table as it was, and a changed table would no longer match it.

use sqlparser::ast::Statement;

use crate::shardmap::{ShardMap, TableRule};

/// Statements that create, change or drop schema objects (TRUNCATE too: it empties every shard).
pub(super) fn is_ddl(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateTable(_)
            | Statement::AlterTable(_)
            | Statement::Drop { .. }
            | Statement::CreateIndex(_)
            | Statement::Truncate(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateView(_)
            | Statement::CreateSequence { .. }
            | Statement::CreateExtension(_)
            | Statement::AlterIndex { .. }
            | Statement::Comment { .. }
            // Types, functions, triggers and policies live in each shard's database; tables
            // use them there. (Roles are the server's, not the database's: not broadcast.)
            | Statement::CreateType { .. }
            | Statement::AlterType { .. }
            | Statement::CreateDomain { .. }
            | Statement::DropDomain { .. }
            | Statement::CreateFunction { .. }
            | Statement::DropFunction { .. }
            | Statement::CreateProcedure { .. }
            | Statement::DropProcedure { .. }
            | Statement::CreateTrigger { .. }
            | Statement::DropTrigger { .. }
            | Statement::CreatePolicy { .. }
            | Statement::AlterPolicy { .. }
            | Statement::DropPolicy { .. }
            | Statement::DropExtension { .. }
            | Statement::AlterSchema { .. }
    )
}

/// The refusal for DDL on a table (named in `stmt`; `named` are the tables its visit found)
/// whose group has a partition being moved (`moving` or `fenced` in the map), if one has.
pub(super) fn during_move(stmt: &Statement, named: &[(String, TableRule)], map: &ShardMap) -> Option<String> {
    // DROP and TRUNCATE name their tables outside any relation the visit sees.
    let targets: Vec<String> = match stmt {
        Statement::Drop { names, .. } => names.iter().map(super::last_name).collect(),
        Statement::Truncate(t) => t.table_names.iter().map(|t| super::last_name(&t.name)).collect(),
        _ => Vec::new(),
    };
    // A DROP ... CASCADE of a schema, type or other object takes the tables depending on it
    // along, naming none of them: refused while any partition moves.
    if let Statement::Drop { cascade: true, .. } = stmt
        && let Some(g) = map.groups.iter().find(|g| !g.states.is_empty())
        && let Some((partition, state)) = g.states.iter().next()
    {
        return Some(format!(
            "DROP ... CASCADE is refused while partition {partition} of group {group} is {state}: it may drop \
             or change tables a move (`shardwire rebalance`) is copying; run it once the move is done",
            group = g.name
        ));
    }
    let tables = named
        .iter()
        .map(|(n, r)| (n.as_str(), r))
        .chain(targets.iter().filter_map(|n| Some((n.as_str(), map.table(n)?))));
    for (table, rule) in tables {
        let TableRule::Sharded { group, .. } = rule else {
            continue;
        };
        let Some(g) = map.groups.get(*group) else {
            continue;
        };
        // `states` holds only partitions that do not simply serve.
        let Some((partition, state)) = g.states.iter().next() else {
            continue;
        };
        return Some(format!(
            "DDL on {table} is refused while partition {partition} of group {group} is {state}: a \
             move (`shardwire rebalance`) is copying the group's tables, and its copy must match them; \
             run it once the move is done (SHOW MAP shows partition states), or stop the move with \
             `shardwire rebalance move --group {group} --partition {partition} --to SHARD --abort`",
            group = g.name
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::analyze::shard::{Shape, shape};

    fn map(states: &str) -> crate::shardmap::ShardMap {
        crate::shardmap::parse(&format!(
            r#"
            version = 1
            shards = ["s0", "s1"]
            default_shard = "s0"
            [groups.customers]
            key_type = "bigint"
            partitioning = {{ kind = "hash", partitions = 8 }}
            assignment = {{ s0 = "0-3", s1 = "4-7" }}
            {states}
            [tables.customers]
            group = "customers"
            key = "id"
            [tables.orders]
            group = "customers"
            key = "customer_id"
            [tables.countries]
            reference = true
            "#
        ))
        .unwrap()
    }

    #[test]
    fn ddl_on_a_group_being_moved_is_refused_naming_the_move() {
        let serving = map("");
        let moving = map(r#"states = { "5" = "moving" }"#);
        let fenced = map(r#"states = { "2" = "fenced" }"#);
        for sql in [
            "ALTER TABLE orders ADD COLUMN note text",
            "CREATE INDEX ON customers (name)",
            "DROP TABLE orders",
            "TRUNCATE customers",
        ] {
            assert_eq!(shape(sql, &serving), Shape::Broadcast, "{sql}");
            for (m, words) in [
                (&moving, "partition 5 of group customers is moving"),
                (&fenced, "is fenced"),
            ] {
                match shape(sql, m) {
                    Shape::Refuse(why) => {
                        assert!(why.contains(words) && why.contains("--abort"), "{sql}: {why}")
                    }
                    other => panic!("{sql}: {other:?}"),
                }
            }
        }
        // A cascading DROP names no table of the group but may take them along.
        assert!(matches!(shape("DROP SCHEMA app CASCADE", &moving), Shape::Refuse(_)));
        assert!(matches!(shape("DROP TYPE mood CASCADE", &fenced), Shape::Refuse(_)));
        assert_eq!(shape("DROP SCHEMA app CASCADE", &serving), Shape::Broadcast);
        assert_eq!(shape("DROP SCHEMA app", &moving), Shape::Broadcast);
        // Other tables' DDL, and the group's reads and writes, go on.
        assert_eq!(
            shape("ALTER TABLE countries ADD COLUMN c int", &moving),
            Shape::Broadcast
        );
        assert_eq!(shape("CREATE TABLE misc (a int)", &moving), Shape::Broadcast);
        assert!(matches!(
            shape("SELECT * FROM orders WHERE customer_id = 1", &moving),
            Shape::Group { .. }
        ));
    }
}
