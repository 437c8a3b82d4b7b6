//! Transactions that span shards. A transaction block, or a pipeline's implicit transaction,
//! starts on the shard of its first statement. A statement for another shard sets the held
//! connection aside, idle in the transaction ("parked"), and the transaction joins that shard: a
//! connection of its own, started with the client's BEGIN (same isolation level and access
//! mode) and the savepoints open so far. A statement for a shard already joined takes its
//! connection back. Savepoint commands run on every shard joined (`tx_control`); COMMIT and
//! ROLLBACK end the transaction on every shard (`tx_end`).
//!
//! Isolation: each shard takes its own snapshot when it joins; there is no snapshot across
//! shards, so a transaction can see one shard's commit and not another's of the same
//! distributed transaction. Cost: one backend connection per shard joined, held to the end.

use super::client::SessionError;
use super::state::Op;
use super::{Ensure, Flow, Session};
use crate::analyze::Facts;
use crate::plan::{self, Target};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows;
use crate::shardmap::ShardId;

/// Parse, Bind and Execute of an unnamed `BEGIN`, sent in the middle of a pipeline: PostgreSQL
/// turns the pipeline's implicit transaction into a transaction block, keeping what already ran
/// in it, so the pipeline's Sync no longer commits it on its own.
const HIDDEN_BEGIN: &[u8] = b"P\0\0\0\x0d\0BEGIN\0\0\0B\0\0\0\x0c\0\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0";

impl Session {
    /// The open transaction spans shards.
    pub(super) fn multi_tx(&self) -> bool {
        !self.parked.is_empty() || self.implicit_multi
    }

    /// Stalls `f` until the held connection is quiet, ending the pipeline part on it with a Sync
    /// of the proxy's own (inside a transaction block a Sync commits nothing). `None`: quiet.
    pub(super) fn wait_quiet(&mut self, f: &Frame) -> Option<Flow> {
        let h = self.held.as_mut()?;
        super::responses::flush_synth(h, &mut self.client.wbuf);
        if h.quiet() {
            return None;
        }
        if h.needs_sync && !h.copy_in {
            rows::sync(&mut h.wbuf);
            h.ops.push_back(Op::PipelineSync { failed: false });
            h.needs_sync = false;
        }
        self.switch_wait = true;
        Some(Flow::Stall(f.clone()))
    }

    /// What a shard joining the transaction runs: the client's BEGIN (`begin`, or a plain one for
    /// a pipeline's transaction) and the savepoints open so far.
    pub(super) fn join_text(&self, begin: Option<&str>) -> String {
        let mut sql = match begin {
            Some(b) if !self.implicit_multi => b.trim().trim_end_matches(';').to_owned(),
            _ => "BEGIN".to_owned(),
        };
        for name in self.vars.savepoint_names() {
            // After a newline: the client's BEGIN may end in a `--` comment.
            sql.push_str("\n; SAVEPOINT ");
            sql.push_str(&super::state::quote_ident(name));
        }
        sql
    }

    /// The held connection is in the middle of a pipeline outside a transaction block: a BEGIN
    /// of the proxy's own makes the pipeline's implicit transaction a block that the client's
    /// Sync commits on every shard it then touches.
    pub(super) fn pipeline_becomes_transaction(&mut self) {
        let Some(h) = self.held.as_mut() else { return };
        h.wbuf.extend_from_slice(HIDDEN_BEGIN);
        h.checkout.conn.unnamed = None;
        h.ops.push_back(Op::HiddenBegin);
        self.implicit_multi = true;
    }

    /// Makes way for a statement that needs connections of its own (the SELECT of an
    /// INSERT ... SELECT): inside a transaction once the held connection is quiet; outside one
    /// once it is released, or, in a pipeline that wrote, the pipeline made a transaction.
    /// `None`: go on now.
    pub(super) fn clear_for_statement(&mut self, f: &Frame, extended: bool) -> Option<Flow> {
        if self.pinned.is_some() || self.runtime.config.server.pool_mode == crate::config::PoolMode::Session {
            // The held connection is never released: the statement would wait for ever.
            self.refuse(
                extended,
                "this statement reads rows of its own first (an INSERT ... SELECT into a sharded table, or a query whose \
                 subqueries, WITH queries or tables run first), on connections a session pinned to one connection \
                 (temporary tables, LISTEN, session advisory locks, session pooling) cannot take",
            );
            return Some(Flow::Continue);
        }
        if self.in_transaction() {
            return self.wait_quiet(f);
        }
        let h = self.held.as_mut()?;
        if h.needs_sync && h.wrote && !h.copy_in {
            self.pipeline_becomes_transaction();
            return self.wait_quiet(f);
        }
        if h.needs_sync && !h.copy_in {
            rows::sync(&mut h.wbuf);
            h.ops.push_back(Op::PipelineSync { failed: false });
            h.needs_sync = false;
        }
        Some(Flow::Stall(f.clone()))
    }

    /// The transaction (or a pipeline that wrote) needs `shard`, and another is held: the held
    /// connection is parked and `shard`'s taken back, or the transaction joins `shard`.
    pub(super) async fn join_shard(
        &mut self,
        facts: &Facts,
        extended: bool,
        shard: ShardId,
    ) -> Result<Ensure, SessionError> {
        let h = self.held.as_mut().expect("called with a held backend");
        super::responses::flush_synth(h, &mut self.client.wbuf);
        if !h.quiet() {
            if h.needs_sync && !h.copy_in && !h.in_transaction() {
                // A pipeline that wrote here and goes on elsewhere: it must commit everywhere or
                // nowhere, so it becomes one transaction block, committed at the client's Sync.
                self.pipeline_becomes_transaction();
            }
            let h = self.held.as_mut().expect("still held");
            if h.needs_sync && !h.copy_in {
                rows::sync(&mut h.wbuf);
                h.ops.push_back(Op::PipelineSync { failed: false });
                h.needs_sync = false;
            }
            self.switch_wait = true;
            return Ok(Ensure::Stall);
        }
        match h.tx_status {
            b'E' => {
                // The server already holds the transaction failed: the answer is its own, and
                // ROLLBACK TO a savepoint (which goes there) recovers it, as on one database.
                self.answer_aborted(extended);
                return Ok(Ensure::Failed);
            }
            // The transaction ended here (its pipeline failed and rolled back): the connection
            // goes back to the pool and the statement starts afresh.
            b'I' if !h.begin_pending => return Ok(Ensure::Stall),
            _ => {}
        }
        let h = self.held.take().expect("checked above");
        self.parked.push(h);
        if let Some(i) = self.parked.iter().position(|p| p.shard == shard) {
            let mut h = self.parked.swap_remove(i);
            if h.checkout.conn.vars_sig != self.vars.sig() {
                // A SET ran on another shard since this one was parked.
                msg::query(&mut h.wbuf, &self.vars.replay_sql(h.checkout.conn.vars_sig));
                h.checkout.conn.vars_sig = self.vars.sig();
                h.checkout.conn.unnamed = None;
                h.ops.push_back(Op::SyncVars);
            }
            self.handle.set_backend(Some((
                h.checkout.node.clone(),
                h.checkout.conn.pid,
                h.checkout.conn.secret,
            )));
            self.held = Some(h);
            return Ok(Ensure::Ready);
        }
        self.pending_begin = Some(self.join_text(self.tx_begin.as_deref()));
        let target = if self.tx_read_only && !self.implicit_multi {
            plan::route(facts, &self.route_context(shard))
        } else {
            Target::Primary
        };
        self.shared.stats.record_plan("shard-joined");
        match self.checkout(target, shard).await {
            Ok(()) => Ok(Ensure::Ready),
            Err((code, m)) => {
                // The transaction stays where it was, failed.
                self.pending_begin = None;
                self.held = self.parked.pop();
                let m = format!(
                    "the transaction could not join shard {}: {m}",
                    self.runtime.config.map.shards[shard]
                );
                self.fail_statement(code, extended, &m);
                Ok(Ensure::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hidden_begin_is_parse_bind_execute_of_begin() {
        let mut b = bytes::BytesMut::from(super::HIDDEN_BEGIN);
        let mut tags = Vec::new();
        while let Some(f) = crate::protocol::pg::codec::decode_frame(&mut b, 1 << 20).unwrap() {
            tags.push(f.tag());
            match f.tag() {
                b'P' => {
                    let p = crate::protocol::pg::messages::parse_parse(f.body()).unwrap();
                    assert_eq!((p.name, p.query), ("", &b"BEGIN"[..]));
                }
                b'B' => {
                    let bind = crate::protocol::pg::messages::parse_bind(f.body()).unwrap();
                    assert_eq!((bind.portal, bind.statement), ("", ""));
                }
                b'E' => assert_eq!(crate::protocol::pg::messages::parse_execute(f.body()).unwrap(), ""),
                _ => {}
            }
        }
        assert!(b.is_empty());
        assert_eq!(tags, b"PBE");
    }
}
