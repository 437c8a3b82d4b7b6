//! INSERT ... SELECT into a sharded table. The rows do not exist before the SELECT runs, so
//! they cannot be routed by key in advance: the SELECT runs first, as its own plan says (on one
//! shard, or, needing no table, on the shard in use), inside the client's transaction when there
//! is one; its rows come back as text and go into the INSERT as VALUES, which is then planned
//! and run like any INSERT (split by key, atomic across shards). A SELECT over several shards,
//! parameters outside the SELECT, and clients not in UTF8 are refused.

use bytes::BytesMut;

use super::Session;
use crate::backend::leg::Leg;
use crate::plan::Target;
use crate::plan::shard::{Params, ShardPlan};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows::{self, BindParts};
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
        let map = self.runtime.config.map.clone();
        let shape = self.shared.shapes.get(select, &map);
        let shard = match self.plan_checked(&shape, &map, &Params::default()) {
            ShardPlan::One(s) => match &self.held {
                Some(h) if matches!(*shape, crate::analyze::shard::Shape::Neutral) => h.shard,
                _ => s,
            },
            ShardPlan::Refuse(m) => return Err(refuse(&m)),
            other => {
                return Err(refuse(&format!(
                    "INSERT ... SELECT into a sharded table reads rows of several shards ({}); select them and insert them \
                     with VALUES, or give the SELECT a condition on its shard key",
                    other.kind()
                )));
            }
        };
        let in_tx = self.in_transaction();
        let (mut legs, wrote) = if in_tx {
            self.tx_legs(&[shard], None)
                .await
                .map_err(|(c, m)| SelectFailure::Proxy(c, m))?
        } else {
            let co = self
                .checkout_on(Target::Primary, shard)
                .await
                .map_err(|(c, m)| SelectFailure::Proxy(c, m))?;
            (vec![Leg::new(co)], Vec::new())
        };
        let leg = &mut legs[0];
        let mut out = BytesMut::new();
        self.write_prelude(leg, &mut out);
        match bind {
            None => msg::query_bytes(&mut out, select.as_bytes()),
            Some((types, b)) => {
                msg::parse_bytes(&mut out, "", select.as_bytes(), types);
                rows::bind_with(&mut out, b, None, &[0]);
                msg::describe_or_close(&mut out, b'D', b'P', "");
                rows::execute_all(&mut out);
                rows::sync(&mut out);
            }
        }
        let got = read_rows(leg, &out).await;
        if got.is_err() {
            // Inside a transaction the failed SELECT fails it (see `give_back`).
            leg.mark_broken();
        }
        if in_tx {
            self.give_back(legs, &[shard], wrote, false);
        }
        let (width, rows) = got?;
        crate::analyze::shard::with_rows(sql, &rows, width)
            .map(|text| (text, rows.is_empty()))
            .ok_or_else(|| refuse("internal error: the INSERT could not be given the SELECT's rows"))
    }
}

/// Runs a simple Query (after the replay `out` holds) and reads every row as text.
async fn read_rows(leg: &mut Leg, out: &[u8]) -> Result<(usize, Vec<Vec<Option<String>>>), SelectFailure> {
    let io =
        |e: std::io::Error| SelectFailure::Proxy(SqlState::CONNECTION_FAILURE, format!("shard connection failed: {e}"));
    leg.send(out).await.map_err(io)?;
    if let Some(e) = leg.skip_replay().await.map_err(io)? {
        return Err(SelectFailure::Server(e));
    }
    let mut width = 0;
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut error = None;
    loop {
        let f = leg.frame().await.map_err(io)?;
        match f.tag() {
            b'T' => width = rows::parse_row_description(f.body()).map_or(0, |d| d.len()),
            b'D' if error.is_none() => {
                bytes += f.body().len();
                if bytes > MAX_ROWS_BYTES {
                    return Err(SelectFailure::Proxy(
                        SqlState::PROGRAM_LIMIT_EXCEEDED,
                        "INSERT ... SELECT into a sharded table brings its rows through shardwire, and these exceed 64 MiB; \
                         insert them in batches or with COPY FROM STDIN"
                            .into(),
                    ));
                }
                let cells =
                    rows::parse_data_row(&f.raw().slice(5..)).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                rows.push(
                    cells
                        .into_iter()
                        .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                );
            }
            b'E' => error = error.or(Some(f)),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(SelectFailure::Server(e)),
        None => Ok((width, rows)),
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
