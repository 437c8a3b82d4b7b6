//! INSERT ... SELECT into a sharded table. The rows do not exist before the SELECT runs, so
//! they cannot be routed by key in advance: the SELECT runs first, as its own plan says (on one
//! shard, or, needing no table, on the shard in use), inside the client's transaction when there
//! is one; its rows come back as text and go into the INSERT as VALUES, which is then planned
//! and run like any INSERT (split by key, atomic across shards). The SELECT may read several
//! shards (merged as a read of its own). Parameters outside the SELECT, and clients not in UTF8,
//! are refused.

use super::Session;
use super::multi::Source;
use crate::protocol::pg::Frame;
use crate::protocol::pg::rows::BindParts;
use crate::protocol::pg::sqlstate::SqlState;
use sqlparser::ast::{Expr, Value};

/// The most row text an INSERT ... SELECT brings through shardwire.
const MAX_ROWS_BYTES: usize = 64 << 20;

/// Why the SELECT gave no rows to insert.
pub(super) enum SelectFailure {
    /// Refused or failed in the proxy.
    Proxy(SqlState, String),
    /// The server's error, as it sent it.
    Server(Frame),
}

impl Session {
    /// The INSERT `sql` with the rows of its source `select` as VALUES, and whether there were
    /// none (the statement then inserts nothing and may run on any shard). `bind`: the client's
    /// parameter types and Bind (extended protocol), with which the SELECT runs. Call with the
    /// held connection quiet (or none held).
    pub(super) async fn insert_select(
        &mut self,
        sql: &str,
        select: &str,
        bind: Option<(&[u8], &BindParts)>,
        facts: &crate::analyze::Facts,
    ) -> Result<(String, bool), SelectFailure> {
        let refuse = |m: &str| SelectFailure::Proxy(SqlState::FEATURE_NOT_SUPPORTED, m.to_owned());
        if !self.client_is_utf8() {
            return Err(refuse(
                "INSERT ... SELECT into a sharded table needs client_encoding UTF8 (the rows pass through shardwire as text)",
            ));
        }
        if bind.is_some() && placeholders(select) != placeholders(sql) {
            return Err(refuse(
                "INSERT ... SELECT into a sharded table with parameters outside its SELECT: the SELECT runs first, \
                 on its own; use parameters in the SELECT only",
            ));
        }
        let source = match bind {
            None => Source::Simple,
            Some((param_types, bind)) => Source::Extended { param_types, bind },
        };
        let (width, rows) = match self.select_rows(select, source, facts, MAX_ROWS_BYTES, true).await? {
            Ok((fields, rows)) => (fields.len(), rows),
            Err(why) => return Err(refuse(&why)),
        };
        crate::analyze::shard::with_rows(sql, &rows, width)
            .map(|text| (text, rows.is_empty()))
            .ok_or_else(|| refuse("internal error: the INSERT could not be given the SELECT's rows"))
    }
}

/// The `$n` parameters a text uses.
fn placeholders(sql: &str) -> std::collections::BTreeSet<String> {
    use sqlparser::ast::{Visit, Visitor};
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    struct Seen(std::collections::BTreeSet<String>);
    impl Visitor for Seen {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &v.value
            {
                self.0.insert(p.clone());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut seen = Seen(Default::default());
    if let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        let _ = stmts.visit(&mut seen);
    }
    seen.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_outside_the_select_are_found() {
        let select = "SELECT g, $1 FROM generate_series(1, $2) g";
        assert_eq!(
            super::placeholders(&format!("INSERT INTO users (id, name) {select}")),
            super::placeholders(select)
        );
        assert_ne!(
            super::placeholders(&format!(
                "INSERT INTO users (id, name) {select} ON CONFLICT (id) DO UPDATE SET name = $3"
            )),
            super::placeholders(select)
        );
    }
}
