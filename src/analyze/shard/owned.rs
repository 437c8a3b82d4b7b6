//! A shard's own rows: while a hash partition moves (`moving` or `fenced` in the map), the shard
//! that does not serve it holds a copy of its rows (the move's target before the switch, the
//! source after it, until the move completes). A statement that runs on several shards must not
//! read or change that copy: one database would have each row once. The text each shard runs
//! names, in place of such a table, `(SELECT * FROM t WHERE <row not in a partition it only
//! copies>) AS t`; an UPDATE's or DELETE's own table keeps its name and gets the condition in its
//! WHERE. The partition is computed by the shard with the map's hash
//! ([`crate::shardmap::hash::partition_sql`]). Statements on one shard chosen by key read only
//! that key's rows, on the shard that serves it, and need none of this.

use std::collections::HashSet;

use sqlparser::ast::{CopySource, Expr, SetExpr, TableAlias, TableFactor, TableWithJoins, VisitMut, VisitorMut};

use super::*;
use crate::shardmap::{Partitioning, ShardId, hash};

/// The partitions of each group that `shard` holds only as a move's copy, by group index.
fn copies_on(map: &ShardMap, shard: ShardId) -> Vec<(usize, Vec<u32>)> {
    map.groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.states.is_empty())
        .filter_map(|(i, g)| {
            let Partitioning::Hash { owner } = &g.partitioning else {
                return None;
            };
            let ps: Vec<u32> = g
                .states
                .keys()
                .copied()
                .filter(|&p| owner.get(p as usize).is_some_and(|&o| o != shard))
                .collect();
            (!ps.is_empty()).then_some((i, ps))
        })
        .collect()
}

/// Whether some shard holds a copy of a moving partition (nothing to do otherwise: the test
/// every multi-shard statement makes, so it only looks at the groups' states).
pub fn any_copies(map: &ShardMap) -> bool {
    map.groups.iter().any(|g| !g.states.is_empty())
}

/// `sql` as each of `shards` runs it, the rows a shard holds only as a move's copy left out;
/// `None` for a shard that reads no table it holds such a copy of (the text runs unchanged).
/// The text is parsed only for the shards that need it. `copy_columns`: the table's columns
/// COPY writes (not generated ones), for a `COPY t TO` without a column list
/// ([`copy_without_columns`]). An error when the text does not parse (it was analyzed before, so
/// this is not expected) or such a COPY comes without its columns.
pub fn own_rows_each(
    sql: &str,
    map: &ShardMap,
    shards: &[ShardId],
    copy_columns: Option<&[String]>,
) -> Result<Vec<Option<String>>, String> {
    let copies: Vec<_> = shards.iter().map(|&s| copies_on(map, s)).collect();
    if copies.iter().all(Vec::is_empty) {
        return Ok(vec![None; shards.len()]);
    }
    // Parsed again per shard rather than cloned: a clone recurses deeper per level than a parse
    // (see `materialize`), and the text passed the parse's depth limit already.
    copies
        .iter()
        .map(|c| {
            if c.is_empty() {
                Ok(None)
            } else {
                let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| e.to_string())?;
                own_rows(parsed, map, c, copy_columns)
            }
        })
        .collect()
}

/// `sql` as shard `shard` runs it ([`own_rows_each`] for one shard).
pub fn own_rows_only(sql: &str, map: &ShardMap, shard: ShardId) -> Result<Option<String>, String> {
    Ok(own_rows_each(sql, map, &[shard], None)?.pop().flatten())
}

/// The table of a `COPY t TO` without a column list, as written, when some shard holds a copy of
/// one of its partitions: COPY then reads `(SELECT <columns> FROM ...)`, and the columns must be
/// those `COPY t` writes.
pub fn copy_without_columns(sql: &str, map: &ShardMap) -> Option<String> {
    if !any_copies(map) {
        return None;
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?.as_slice() {
        [
            Statement::Copy {
                source: CopySource::Table { table_name, columns },
                to: true,
                ..
            },
        ] if columns.is_empty() => {
            let rule = map.table(&last_name(table_name))?;
            let TableRule::Sharded { group, .. } = rule else {
                return None;
            };
            (!map.groups[*group].states.is_empty()).then(|| table_name.to_string())
        }
        _ => None,
    }
}

fn own_rows(
    mut stmts: Vec<Statement>,
    map: &ShardMap,
    copies: &[(usize, Vec<u32>)],
    copy_columns: Option<&[String]>,
) -> Result<Option<String>, String> {
    let mut v = Own {
        map,
        copies,
        ctes: Vec::new(),
        targets: HashSet::new(),
        changed: false,
        error: None,
    };
    for s in &mut stmts {
        if let Statement::Copy {
            source: CopySource::Table { table_name, columns },
            to: true,
            ..
        } = s
            && v.filter(&last_name(table_name)).is_some()
        {
            let cols = if !columns.is_empty() {
                columns.iter().map(ToString::to_string).collect::<Vec<_>>()
            } else if let Some(cs) = copy_columns {
                cs.iter().map(|c| quote(c)).collect()
            } else {
                return Err(format!("COPY {table_name} TO without its columns"));
            };
            let q = parse_query(&format!("SELECT {} FROM {table_name}", cols.join(", ")))?;
            if let Statement::Copy { source, .. } = s {
                *source = CopySource::Query(Box::new(q));
            }
        }
        let _ = s.visit(&mut v);
    }
    if let Some(e) = v.error {
        return Err(e);
    }
    Ok(v.changed
        .then(|| stmts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
}

/// A column name (lower case in the map) as an identifier.
fn quote(name: &str) -> String {
    Ident::with_quote('"', name).to_string()
}

fn parse_query(sql: &str) -> Result<Query, String> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(|e| e.to_string())?
        .pop()
    {
        Some(Statement::Query(q)) => Ok(*q),
        _ => Err(format!("not a query: {sql}")),
    }
}

fn parse_expr(sql: &str) -> Result<Expr, String> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| e.to_string())
}

struct Own<'a> {
    map: &'a ShardMap,
    copies: &'a [(usize, Vec<u32>)],
    /// WITH query names in scope: a relation by one of these names is no table.
    ctes: Vec<String>,
    /// The tables UPDATE and DELETE change, by address: they keep their name (the condition goes
    /// into the statement's WHERE).
    targets: HashSet<*const TableFactor>,
    changed: bool,
    error: Option<String>,
}

impl Own<'_> {
    /// The condition keeping `table`'s own rows, over the key written as `key` (a column
    /// reference), when this shard holds copies of some of its group's partitions.
    fn filter_on(&self, table: &str, key: impl FnOnce(&str) -> String) -> Option<String> {
        let Some(TableRule::Sharded { group, key: column }) = self.map.table(table) else {
            return None;
        };
        let (_, ps) = self.copies.iter().find(|(g, _)| g == group)?;
        let g = &self.map.groups[*group];
        let Partitioning::Hash { owner } = &g.partitioning else {
            return None;
        };
        let list: Vec<String> = ps.iter().map(u32::to_string).collect();
        let part = hash::partition_sql(g.key_type, &key(&quote(column)), owner.len() as u32);
        Some(format!("NOT coalesce({part} IN ({}), false)", list.join(", ")))
    }

    fn filter(&self, table: &str) -> Option<String> {
        self.filter_on(table, str::to_owned)
    }

    /// An UPDATE's or DELETE's own table: kept, the condition added to `selection`.
    fn target(&mut self, t: &TableWithJoins, selection: &mut Option<Expr>) {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = &t.relation
        else {
            return;
        };
        let qualifier = alias.as_ref().map_or_else(|| name.to_string(), |a| a.name.to_string());
        let Some(cond) = self.filter_on(&last_name(name), |k| format!("{qualifier}.{k}")) else {
            return;
        };
        self.targets.insert(&t.relation as *const TableFactor);
        match parse_expr(&cond) {
            Ok(c) => {
                *selection = Some(match selection.take() {
                    Some(e) => Expr::BinaryOp {
                        left: Box::new(Expr::Nested(Box::new(e))),
                        op: BinaryOperator::And,
                        right: Box::new(c),
                    },
                    None => c,
                });
                self.changed = true;
            }
            Err(e) => self.error = Some(e),
        }
    }
}

impl VisitorMut for Own<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        self.ctes.extend(cte::names(q));
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        let n = cte::names(q).count();
        self.ctes.truncate(self.ctes.len() - n);
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &mut Statement) -> ControlFlow<()> {
        match s {
            Statement::Update(u) => self.target(&u.table, &mut u.selection),
            Statement::Delete(d) => {
                let (FromTable::WithFromKeyword(ts) | FromTable::WithoutKeyword(ts)) = &d.from;
                for t in ts {
                    self.target(t, &mut d.selection);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    // After its children: the table put in its place is not visited again.
    fn post_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
        if self.targets.contains(&(t as *const TableFactor)) {
            return ControlFlow::Continue(());
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = t
        else {
            return ControlFlow::Continue(());
        };
        let n = last_name(name);
        if name.0.len() == 1 && self.ctes.contains(&n) {
            return ControlFlow::Continue(());
        }
        let Some(cond) = self.filter(&n) else {
            return ControlFlow::Continue(());
        };
        let alias = alias.take().unwrap_or_else(|| TableAlias {
            explicit: true,
            name: match name.0.last() {
                Some(ObjectNamePart::Identifier(i)) => i.clone(),
                _ => Ident::new(n.clone()),
            },
            columns: Vec::new(),
            at: None,
        });
        let mut q = match parse_query(&format!("SELECT * FROM shardwire_own WHERE {cond}")) {
            Ok(q) => q,
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        };
        if let SetExpr::Select(s) = q.body.as_mut() {
            s.from[0].relation = t.clone();
        }
        *t = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(q),
            alias: Some(alias),
            sample: None,
        };
        self.changed = true;
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// users (int key) in 4 partitions, 0,1 on s0 and 2,3 on s1; partition 2 moving.
    fn map() -> ShardMap {
        crate::shardmap::parse(
            r#"
version = 1
shards = ["s0", "s1"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 4 }
assignment = { s0 = "0-1", s1 = "2-3" }
states = { "2" = "moving" }
[tables.users]
group = "users"
key = "id"
[tables.orders]
group = "users"
key = "user_id"
"#,
        )
        .unwrap()
    }

    fn own(sql: &str, shard: ShardId) -> Option<String> {
        own_rows_only(sql, &map(), shard).unwrap()
    }

    #[test]
    fn the_shard_that_copies_a_partition_reads_around_it() {
        // s1 serves partition 2: nothing to leave out there.
        assert_eq!(own("SELECT count(*) FROM users", 1), None);
        let s = own("SELECT count(*) FROM users", 0).unwrap();
        assert!(
            s.starts_with("SELECT count(*) FROM (SELECT * FROM users WHERE NOT coalesce("),
            "{s}"
        );
        assert!(s.ends_with("% 4 IN (2), false)) AS users"), "{s}");
        // An alias is kept, on the table put in the table's place.
        let s = own("SELECT u.id FROM users AS u JOIN orders o ON o.user_id = u.id", 0).unwrap();
        assert!(s.contains(") AS u JOIN (SELECT * FROM orders WHERE"), "{s}");
        assert!(s.contains("hashint8extended(\"user_id\"::"), "{s}");
        // Subqueries and WITH queries too; a WITH query's own name is not the table.
        let s = own("WITH users AS (SELECT 1 AS id) SELECT * FROM users", 0);
        assert_eq!(s, None);
        let s = own("SELECT * FROM t WHERE a IN (SELECT user_id FROM orders)", 0).unwrap();
        assert!(s.contains("IN (SELECT user_id FROM (SELECT * FROM orders WHERE"), "{s}");
        // Reference and unsharded tables, functions: unchanged.
        assert_eq!(own("SELECT * FROM t, generate_series(1, 2) users", 0), None);
    }

    #[test]
    fn writes_keep_their_table_and_gain_the_condition() {
        let s = own("UPDATE users SET score = score + 1 WHERE score > 3", 0).unwrap();
        assert!(
            s.starts_with("UPDATE users SET score = score + 1 WHERE (score > 3) AND NOT coalesce("),
            "{s}"
        );
        assert!(s.contains("hashint8extended(users.\"id\"::"), "{s}");
        let s = own("DELETE FROM users u", 0).unwrap();
        assert!(s.starts_with("DELETE FROM users u WHERE NOT coalesce("), "{s}");
        assert!(s.contains("hashint8extended(u.\"id\"::"), "{s}");
        // The table read in UPDATE ... FROM is put in a subquery.
        let s = own(
            "UPDATE users SET score = 0 FROM orders WHERE orders.user_id = users.id",
            0,
        )
        .unwrap();
        assert!(s.contains("FROM (SELECT * FROM orders WHERE"), "{s}");
        // INSERT of rows: nothing read.
        assert_eq!(own("INSERT INTO users (id) VALUES (1)", 0), None);
        let s = own("INSERT INTO orders (user_id) SELECT id FROM users", 0).unwrap();
        assert!(
            s.starts_with("INSERT INTO orders (user_id) SELECT id FROM (SELECT * FROM users"),
            "{s}"
        );
    }

    #[test]
    fn copy_of_a_table_becomes_a_copy_of_its_own_rows() {
        let s = own("COPY users (id, name) TO STDOUT (FORMAT csv)", 0).unwrap();
        assert!(
            s.starts_with("COPY (SELECT id, name FROM (SELECT * FROM users WHERE"),
            "{s}"
        );
        assert!(s.ends_with("TO STDOUT (FORMAT csv)"), "{s}");
        assert_eq!(own("COPY users FROM STDIN", 0), None);
        // Without a column list: the columns COPY writes, named; the serving shard copies the
        // table as is.
        let m = map();
        assert_eq!(
            copy_without_columns("COPY users TO STDOUT", &m).as_deref(),
            Some("users")
        );
        assert_eq!(copy_without_columns("COPY users (id) TO STDOUT", &m), None);
        assert!(own_rows_each("COPY users TO STDOUT", &m, &[0], None).is_err());
        let cols = ["id".to_owned(), "Name".to_owned()];
        let each = own_rows_each("COPY users TO STDOUT", &m, &[0, 1], Some(&cols)).unwrap();
        assert!(
            each[0]
                .as_deref()
                .unwrap()
                .starts_with("COPY (SELECT \"id\", \"Name\" FROM (SELECT"),
            "{each:?}"
        );
        assert_eq!(each[1], None);
    }

    #[test]
    fn a_serving_map_changes_nothing() {
        let mut m = map();
        m.groups[0].states.clear();
        assert!(!any_copies(&m));
        assert!(any_copies(&map()));
        assert_eq!(own_rows_only("SELECT * FROM users", &m, 0).unwrap(), None);
    }
}
