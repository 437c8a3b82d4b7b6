//! Transaction control statements inside a transaction that spans shards. A savepoint command
//! must reach every shard joined, or a later ROLLBACK TO would return the shards to different
//! points; what cannot be done across shards (AND CHAIN, PREPARE TRANSACTION, control mixed with
//! other statements in one query string) is refused before any shard runs it. After a refusal
//! inside any transaction, only its end is accepted, as PostgreSQL accepts after an error.

use super::client::SessionError;
use super::{Flow, Session};
use crate::analyze::{Facts, SetOp, TxEffect};
use crate::backend::leg::simple_on;
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// A savepoint command (SAVEPOINT, RELEASE, ROLLBACK TO) in a transaction spanning shards:
    /// run on every parked shard now; the caller then sends it to the held one, whose answer is
    /// the client's. `Some` when the message was stalled or failed here.
    pub(super) async fn savepoint_everywhere(&mut self, f: &Frame, sql: &str, extended: bool) -> Option<Flow> {
        if let Some(flow) = self.wait_quiet(f) {
            return Some(flow);
        }
        let mut failure = None;
        for p in &mut self.parked {
            match simple_on(&mut p.checkout.conn, sql).await {
                Some(None) => {}
                Some(Some(e)) => {
                    failure.get_or_insert(msg::error_message(e.body()));
                }
                None => {
                    failure.get_or_insert("connection lost".into());
                }
            }
        }
        let why = failure?;
        self.fail_statement(
            SqlState::TRANSACTION_ROLLBACK,
            extended,
            &format!("the savepoint command failed on a shard of the transaction: {why}; the transaction is aborted"),
        );
        Some(Flow::Continue)
    }

    /// Transaction control in a transaction spanning shards: COMMIT and ROLLBACK end it on every
    /// shard, savepoint commands run on every shard, and what cannot be done across shards is
    /// refused. `None`: the statement goes on to be routed. `portal`: a Bind's.
    pub(super) async fn multi_tx_control(
        &mut self,
        f: &Frame,
        sql: &str,
        facts: &Facts,
        single_statement: bool,
        portal: Option<&str>,
    ) -> Result<Option<Flow>, SessionError> {
        let extended = portal.is_some();
        let savepoint = is_savepoint_command(facts);
        let prepare = sql
            .trim_start()
            .get(..19)
            .is_some_and(|p| p.eq_ignore_ascii_case("prepare transaction"));
        if !single_statement && (facts.tx != TxEffect::None || savepoint) {
            if !extended {
                // Each statement on its own: a COMMIT in the string must end every shard's part.
                return Ok(Some(self.start_script(f, sql)));
            }
            self.refuse(
                extended,
                "transaction control in a query string with several statements, in a transaction spanning shards: send \
                 COMMIT, ROLLBACK and savepoint commands on their own",
            );
            return Ok(Some(Flow::Continue));
        }
        if prepare {
            self.refuse(
                extended,
                "PREPARE TRANSACTION in a transaction spanning shards: shardwire commits it across shards with its own \
                 two-phase commit; send COMMIT",
            );
            return Ok(Some(Flow::Continue));
        }
        let upper = sql.to_ascii_uppercase();
        if facts.tx == TxEffect::End && upper.contains("AND CHAIN") && !upper.contains("AND NO CHAIN") {
            self.refuse(
                extended,
                "COMMIT AND CHAIN / ROLLBACK AND CHAIN in a transaction spanning shards is not supported; send COMMIT, then BEGIN",
            );
            return Ok(Some(Flow::Continue));
        }
        if facts.tx == TxEffect::End {
            return Ok(Some(Box::pin(self.end_multi(f, sql, portal)).await?));
        }
        if savepoint && !self.tx_refused {
            return Ok(Box::pin(self.savepoint_everywhere(f, sql, extended)).await);
        }
        Ok(None)
    }

    /// PostgreSQL's answer to a statement in a failed transaction (25P02), in order.
    pub(super) fn answer_aborted(&mut self, extended: bool) {
        let m = "current transaction is aborted, commands ignored until end of transaction block";
        if extended {
            self.local_error(SqlState::IN_FAILED_SQL_TRANSACTION, m);
        } else {
            let mut b = bytes::BytesMut::new();
            msg::error_response(&mut b, Severity::Error, SqlState::IN_FAILED_SQL_TRANSACTION, m);
            msg::ready_for_query(&mut b, b'E');
            self.respond_synth(b.freeze());
        }
    }

    /// After a refusal inside a transaction: ROLLBACK (or COMMIT, which then rolls back) ends it;
    /// anything else fails as PostgreSQL fails it.
    pub(super) fn in_refused_transaction(&mut self, facts: &Facts, extended: bool) -> Flow {
        if facts.tx != TxEffect::End {
            self.answer_aborted(extended);
            return Flow::Continue;
        }
        self.tx_refused = false;
        self.pending_begin = None;
        match self.held.as_mut() {
            Some(h) => {
                msg::query(&mut h.wbuf, "ROLLBACK");
                h.checkout.conn.unnamed = None;
                h.ops.push_back(super::state::Op::Query {
                    set_ops: Vec::new(),
                    failed: false,
                });
                if extended {
                    // The client's Execute still expects its own answers: the ROLLBACK above
                    // answers as a simple query, so its completion is all the client sees.
                    self.ignore_till_sync = true;
                }
            }
            None => {
                msg::command_complete(&mut self.client.wbuf, "ROLLBACK");
                if !extended {
                    msg::ready_for_query(&mut self.client.wbuf, b'I');
                }
            }
        }
        Flow::Continue
    }
}

/// Whether a statement is a savepoint command.
pub(super) fn is_savepoint_command(facts: &Facts) -> bool {
    facts.set_ops.iter().any(|o| {
        matches!(
            o,
            SetOp::Savepoint { .. } | SetOp::RollbackTo { .. } | SetOp::Release { .. }
        )
    })
}
