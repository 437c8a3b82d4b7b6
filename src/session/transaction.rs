//! Transactions that span shards. A transaction block, or a pipeline's implicit transaction,
//! starts on the shard of its first statement. A statement for another shard sets the held
//! connection aside, idle in the transaction ("parked"), and the transaction joins that shard: a
//! connection of its own, started with the client's BEGIN (same isolation level and access
//! mode) and the savepoints open so far. A statement for a shard already joined takes its
//! connection back. Savepoint commands run on every shard joined.
//!
//! COMMIT commits read-only shards first, then the one shard that wrote directly, or, when
//! several wrote, with two-phase commit and the durable decision record (`multi_write`), which
//! recovery completes after a crash. ROLLBACK, or COMMIT of a failed transaction, rolls back on
//! every shard. An error on any shard fails the whole transaction, as on one database.
//!
//! Isolation: each shard takes its own snapshot when it joins; there is no snapshot across
//! shards, so a transaction can see one shard's commit and not another's of the same
//! distributed transaction. Cost: one backend connection per shard joined, held to the end.

use super::client::SessionError;
use super::multi_write::Part;
use super::state::Op;
use super::{Ensure, Flow, Held, Session};
use crate::analyze::{Facts, SetOp, TxEffect};
use crate::backend::leg::{Leg, simple_on};
use crate::plan::{self, Target};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::rows;
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// Parse, Bind and Execute of an unnamed `BEGIN`, sent in the middle of a pipeline: PostgreSQL
/// turns the pipeline's implicit transaction into a transaction block, keeping what already ran
/// in it, so the pipeline's Sync no longer commits it on its own.
const HIDDEN_BEGIN: &[u8] = b"P\0\0\0\x0d\0BEGIN\0\0\0B\0\0\0\x0c\0\0\0\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0";

/// A signature no settings produce (they are odd, or zero): a connection marked with it gets
/// `RESET ALL` and the session's settings replayed before its next use.
const UNKNOWN_VARS_SIG: u64 = 2;

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
                "INSERT ... SELECT into a sharded table needs connections of its own, which a session pinned to one \
                 connection (temporary tables, LISTEN, session advisory locks, session pooling) cannot take",
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
                let m = "current transaction is aborted, commands ignored until end of transaction block";
                if extended {
                    self.local_error(SqlState::IN_FAILED_SQL_TRANSACTION, m);
                } else {
                    let mut b = bytes::BytesMut::new();
                    msg::error_response(&mut b, Severity::Error, SqlState::IN_FAILED_SQL_TRANSACTION, m);
                    msg::ready_for_query(&mut b, b'E');
                    self.respond_synth(b.freeze());
                }
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

    /// COMMIT or ROLLBACK of a transaction spanning shards. `portal`: the extended protocol's
    /// Bind of it (answered as bound; its Execute gets the command tag).
    pub(super) async fn end_multi(&mut self, f: &Frame, sql: &str, portal: Option<&str>) -> Result<Flow, SessionError> {
        if let Some(flow) = self.wait_quiet(f) {
            return Ok(flow);
        }
        let rollback = super::sharding::end_tag(sql) == "ROLLBACK";
        let outcome = Box::pin(self.finish_multi(rollback)).await;
        self.flush_early();
        match (outcome, portal) {
            (Ok(tag), Some(portal)) => {
                self.local_portal = Some((portal.to_owned(), super::local_portal::LocalPortal::Tag(tag)));
                self.answer_local(&msg::empty(b'2'));
            }
            (Ok(tag), None) => {
                msg::command_complete(&mut self.client.wbuf, tag);
                msg::ready_for_query(&mut self.client.wbuf, b'I');
            }
            (Err((code, m)), Some(_)) => self.local_error(code, &m),
            (Err((code, m)), None) => {
                msg::error_response(&mut self.client.wbuf, Severity::Error, code, &m);
                msg::ready_for_query(&mut self.client.wbuf, b'I');
            }
        }
        Ok(Flow::Continue)
    }

    /// The client's Sync ends a pipeline whose implicit transaction spans shards: it commits (or,
    /// after an error, rolls back) on every shard, then the client gets its ReadyForQuery.
    pub(super) async fn sync_multi(&mut self, f: &Frame) -> Result<Flow, SessionError> {
        if let Some(flow) = self.wait_quiet(f) {
            return Ok(flow);
        }
        let outcome = Box::pin(self.finish_multi(false)).await;
        self.flush_early();
        if let Err((code, m)) = outcome {
            msg::error_response(&mut self.client.wbuf, Severity::Error, code, &m);
        }
        msg::ready_for_query(&mut self.client.wbuf, b'I');
        Ok(Flow::Continue)
    }

    /// Ends the transaction on every shard it joined; the command tag, or why it rolled back.
    async fn finish_multi(&mut self, rollback: bool) -> Result<&'static str, (SqlState, String)> {
        let mut all: Vec<Held> = std::mem::take(&mut self.parked);
        all.extend(self.held.take());
        self.handle.set_backend(None);
        let failed = std::mem::take(&mut self.tx_refused) || all.iter().any(|h| h.tx_status != b'T');
        self.implicit_multi = false;
        self.pending_begin = None;
        self.vars.end_transaction();
        self.tx_begin = None;
        self.tx_read_only = false;
        if std::mem::take(&mut self.ddl_in_tx) {
            self.shared.forget_columns();
        }
        // Anything but plain reads counts as a write: a shard that wrote must not commit before
        // the others know they can.
        let (writers, readers): (Vec<Held>, Vec<Held>) = all.into_iter().partition(|h| !h.only_read);
        let part = |h: Held| Part {
            shard: h.shard,
            leg: Leg {
                co: h.checkout,
                replay: false,
            },
        };
        let mut writers: Vec<Part> = writers.into_iter().map(part).collect();
        let mut readers: Vec<Part> = readers.into_iter().map(part).collect();
        if rollback || failed {
            for p in writers.iter_mut().chain(readers.iter_mut()) {
                p.leg.simple("ROLLBACK").await;
            }
            self.settings_rolled_back(writers.iter_mut().chain(readers.iter_mut()));
            return Ok("ROLLBACK");
        }
        self.vars_before_txn = None;
        let mut reader_failure = None;
        for p in &mut readers {
            match p.leg.simple("COMMIT").await {
                Some(None) => {}
                Some(Some(e)) => {
                    reader_failure.get_or_insert(msg::error_message(e.body()));
                }
                None => {
                    reader_failure.get_or_insert("connection lost".into());
                }
            }
        }
        if let Some(why) = reader_failure {
            for p in &mut writers {
                p.leg.simple("ROLLBACK").await;
            }
            return Err((
                SqlState::TRANSACTION_ROLLBACK,
                format!(
                    "a shard of the transaction failed to commit ({why}); the transaction was rolled back on every shard"
                ),
            ));
        }
        if writers.len() > 1 {
            self.ensure_decision_table(writers[0].shard).await;
        }
        if !writers.is_empty() {
            self.commit_parts(&mut writers)
                .await
                .map_err(|m| (SqlState::TRANSACTION_ROLLBACK, m))?;
        }
        Ok("COMMIT")
    }

    /// A rolled-back transaction undid the SETs made in it, on every connection it used.
    fn settings_rolled_back<'a>(&mut self, parts: impl Iterator<Item = &'a mut Part>) {
        if let Some(before) = self.vars_before_txn.take() {
            self.vars = before;
            for p in parts {
                p.leg.co.conn.vars_sig = UNKNOWN_VARS_SIG;
            }
        }
    }

    /// Creates the decision table on `shard` the first time it coordinates a commit, on a
    /// connection of its own (not inside the transaction being committed).
    pub(super) async fn ensure_decision_table(&self, shard: ShardId) {
        use std::sync::atomic::Ordering;
        let cluster = self.runtime.clusters[shard].clone();
        if cluster.decision_table.load(Ordering::Relaxed) {
            return;
        }
        let Ok(co) = self.checkout_on(Target::Primary, shard).await else {
            // The commit that follows reports the shard's failure.
            return;
        };
        let mut leg = Leg { co, replay: false };
        if leg.simple(super::multi_write::DECISION_TABLE_DDL).await == Some(None) {
            cluster.decision_table.store(true, Ordering::Relaxed);
        }
    }

    /// The client left, or the held connection failed, in a transaction spanning shards: the
    /// parked connections are closed, which rolls their part back on the server.
    pub(super) fn abandon_parked(&mut self) {
        for mut p in self.parked.drain(..) {
            p.checkout.conn.broken = true;
        }
        self.implicit_multi = false;
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
        let savepoint = super::transaction::is_savepoint_command(facts);
        let prepare = sql
            .trim_start()
            .get(..19)
            .is_some_and(|p| p.eq_ignore_ascii_case("prepare transaction"));
        if !single_statement && (facts.tx != TxEffect::None || savepoint) {
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

    /// After a refusal inside a transaction: ROLLBACK (or COMMIT, which then rolls back) ends it;
    /// anything else fails as PostgreSQL fails it.
    pub(super) fn in_refused_transaction(&mut self, facts: &Facts, extended: bool) -> Flow {
        if facts.tx != TxEffect::End {
            let m = "current transaction is aborted, commands ignored until end of transaction block";
            if extended {
                self.local_error(SqlState::IN_FAILED_SQL_TRANSACTION, m);
            } else {
                let mut b = bytes::BytesMut::new();
                msg::error_response(&mut b, Severity::Error, SqlState::IN_FAILED_SQL_TRANSACTION, m);
                msg::ready_for_query(&mut b, b'E');
                self.respond_synth(b.freeze());
            }
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
