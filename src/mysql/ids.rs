//! `LAST_INSERT_ID()` as one server would answer it, and generated IDs.
//!
//! MySQL keeps the last generated id per connection, and a pooled session does not keep its
//! connection: the session keeps it instead, from the OK packets of its own statements (an
//! AUTO_INCREMENT value) or from the IDs shardwire generated. `SELECT LAST_INSERT_ID()` is
//! answered from it, and other statements that call `LAST_INSERT_ID()` get the value written in
//! (so `WHERE id = LAST_INSERT_ID()` also routes by it). An INSERT into a table with an
//! `id_column` that leaves the column out gets generated IDs; its OK packet carries the first.

use std::ops::ControlFlow;

use bytes::BytesMut;
use sqlparser::ast::{Expr, FunctionArguments, SelectItem, SetExpr, Statement, Value, VisitMut};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::{Parser, ParserOptions};

use super::ClientError;
use super::session::Session;
use crate::protocol::mysql::{ColumnDef, ColumnType, UNSIGNED_FLAG, column_def, eof, ok, text_row};
use crate::shardmap::ShardId;

fn parse(sql: &str) -> Option<Vec<Statement>> {
    Parser::new(&MySqlDialect {})
        .with_options(ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()
}

fn is_last_insert_id(e: &Expr) -> bool {
    matches!(e, Expr::Function(f)
    if f.name.to_string().eq_ignore_ascii_case("last_insert_id")
        && match &f.args {
            FunctionArguments::None => true,
            FunctionArguments::List(l) => l.args.is_empty(),
            FunctionArguments::Subquery(_) => false,
        })
}

/// `SELECT LAST_INSERT_ID() [AS name]` alone: the column name the client sees.
pub(super) fn lone_call(sql: &str) -> Option<String> {
    let stmts = parse(sql)?;
    let [Statement::Query(q)] = &stmts[..] else { return None };
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    if !s.from.is_empty() || s.selection.is_some() {
        return None;
    }
    match &s.projection[..] {
        [SelectItem::UnnamedExpr(e)] if is_last_insert_id(e) => Some(e.to_string()),
        [SelectItem::ExprWithAlias { expr, alias }] if is_last_insert_id(expr) => Some(alias.value.clone()),
        _ => None,
    }
}

/// The text with every `LAST_INSERT_ID()` replaced by `value`; `None` when it has none.
pub(super) fn substitute(sql: &str, value: u64) -> Option<String> {
    let mut stmts = parse(sql)?;
    let mut found = false;
    for s in &mut stmts {
        let _ = s.visit(&mut Replace {
            value,
            found: &mut found,
        });
    }
    found.then(|| stmts.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))
}

struct Replace<'a> {
    value: u64,
    found: &'a mut bool,
}

impl sqlparser::ast::VisitorMut for Replace<'_> {
    type Break = ();
    fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        if is_last_insert_id(e) {
            *e = Expr::Value(Value::Number(self.value.to_string(), false).into());
            *self.found = true;
        }
        ControlFlow::Continue(())
    }
}

fn last_id_column(name: &str) -> BytesMut {
    column_def(&ColumnDef {
        name: name.as_bytes(),
        charset: 63,
        length: 21,
        kind: ColumnType::MYSQL_TYPE_LONGLONG,
        // NOT NULL, UNSIGNED, BINARY.
        flags: 0x01 | UNSIGNED_FLAG | 0x80,
        decimals: 0,
    })
}

impl Session {
    /// Answers `SELECT LAST_INSERT_ID()` with the session's value.
    pub fn answer_last_insert_id(&mut self, column: &str) {
        let mut seq = self.client.reply_seq;
        let mut count = BytesMut::new();
        crate::protocol::mysql::put_lenenc_int(&mut count, 1);
        self.client.put(&mut seq, &count);
        self.client.put(&mut seq, &last_id_column(column));
        let status = self.status();
        self.client.put(&mut seq, &eof(0, status));
        let v = self.last_insert_id.to_string();
        self.client.put(&mut seq, &text_row([Some(v.as_bytes())]));
        self.client.put(&mut seq, &eof(0, status));
    }

    /// The prepare response of `SELECT LAST_INSERT_ID()`: no parameters, one BIGINT UNSIGNED.
    pub fn prepare_last_id(&mut self, id: u32, column: &str) {
        let mut seq = self.client.reply_seq;
        let mut p = BytesMut::with_capacity(12);
        p.extend_from_slice(&[0]);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0]);
        self.client.put(&mut seq, &p);
        self.client.put(&mut seq, &last_id_column(column));
        let status = self.status();
        self.client.put(&mut seq, &eof(0, status));
    }

    /// Its execute: one binary row.
    pub fn execute_last_id(&mut self, column: &str) {
        let mut seq = self.client.reply_seq;
        self.client.put(&mut seq, &[1]);
        self.client.put(&mut seq, &last_id_column(column));
        let status = self.status();
        self.client.put(&mut seq, &eof(0, status));
        // Binary row: header, NULL bitmap (offset 2: one byte for one column), the value.
        let mut row = vec![0u8, 0];
        row.extend_from_slice(&self.last_insert_id.to_le_bytes());
        self.client.put(&mut seq, &row);
        self.client.put(&mut seq, &eof(0, status));
    }

    /// Runs a statement the proxy rewrote (generated IDs written in) on `shard` and answers
    /// with its own OK: the rows affected and `last_id` as the last insert id.
    pub async fn run_rewritten(&mut self, shard: ShardId, sql: &str, last_id: u64) -> Result<(), ClientError> {
        if !self.reach(shard, true).await || !self.send_begin().await {
            return Ok(());
        }
        let Some(h) = self.held.as_mut() else { return Ok(()) };
        let was_in_tx = h.in_tx;
        match h.conn.query(sql).await {
            Ok(r) => {
                self.last_insert_id = last_id;
                let mut seq = self.client.reply_seq;
                let status = r.status;
                let p = ok(r.affected, last_id, status, r.warnings, "");
                self.client.put(&mut seq, &p);
                self.after(status, true);
            }
            Err(e) => {
                let lost = h.conn.broken;
                if lost {
                    self.lost();
                }
                self.backend_error(&e);
                if !lost {
                    let keep = if was_in_tx {
                        crate::protocol::mysql::StatusFlags::SERVER_STATUS_IN_TRANS
                    } else {
                        crate::protocol::mysql::StatusFlags::empty()
                    };
                    self.after(keep, false);
                }
            }
        }
        Ok(())
    }

    /// IDs for `rows` rows, or the refusal to report.
    pub fn generate_ids(&self, rows: usize) -> Result<Vec<u64>, String> {
        match &self.shared.ids {
            None => Err(
                "the shard map gives this table an id_column, but shardwire has no [ids] section with a worker id; configure one or give the column's values"
                    .into(),
            ),
            Some(g) => g.next_n(rows).map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_insert_id_calls() {
        assert_eq!(
            lone_call("SELECT LAST_INSERT_ID()").as_deref(),
            Some("LAST_INSERT_ID()")
        );
        assert_eq!(lone_call("select last_insert_id() as id").as_deref(), Some("id"));
        assert_eq!(lone_call("SELECT LAST_INSERT_ID(), 1"), None);
        assert_eq!(lone_call("SELECT LAST_INSERT_ID(5)"), None);
        let s = substitute("SELECT v FROM t WHERE id = LAST_INSERT_ID() AND n = 'it\\'s'", 42).unwrap();
        assert_eq!(s, "SELECT v FROM t WHERE id = 42 AND n = 'it\\'s'");
        assert_eq!(substitute("SELECT 1", 42), None);
    }
}
