//! The tables a statement names, against the shard map: relations inside WITH queries, subqueries
//! and joins included, the names of WITH queries in scope and set-returning functions left out.

use super::*;

/// Every table name the statement mentions, by rule. A set-returning function in FROM
/// (`generate_series(1, 10) g`) is not a table: it runs wherever the statement runs.
pub(super) fn tables(stmt: &impl Visit, map: &ShardMap) -> (Vec<(String, TableRule)>, bool) {
    struct V<'a> {
        map: &'a ShardMap,
        named: Vec<(String, TableRule)>,
        unsharded: bool,
        function: bool,
        /// WITH query names in scope: a relation by one of these names is no table.
        ctes: Vec<String>,
    }
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.ctes.extend(cte::names(q));
            // `TABLE t` names its table without a relation node.
            if let SetExpr::Table(t) = q.body.as_ref()
                && let Some(name) = &t.table_name
            {
                let n = name.to_lowercase();
                if t.schema_name.is_some() || !self.ctes.contains(&n) {
                    match self.map.table(&n) {
                        Some(rule) => self.named.push((n, rule.clone())),
                        None => self.unsharded = true,
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            let n = cte::names(q).count();
            self.ctes.truncate(self.ctes.len() - n);
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            // Its name is visited next, as a relation.
            self.function = matches!(t, TableFactor::Table { args: Some(_), .. });
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            if std::mem::take(&mut self.function) {
                return ControlFlow::Continue(());
            }
            let n = last_name(r);
            if r.0.len() == 1 && self.ctes.contains(&n) {
                return ControlFlow::Continue(());
            }
            match self.map.table(&n) {
                Some(rule) => self.named.push((n, rule.clone())),
                None => self.unsharded = true,
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V {
        map,
        named: Vec::new(),
        unsharded: false,
        function: false,
        ctes: Vec::new(),
    };
    let _ = stmt.visit(&mut v);
    (v.named, v.unsharded)
}
