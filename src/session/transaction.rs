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
use crate::analyze::{Facts, SetOp};
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
    pub(super) fn clear_for_statement(&mut self, f: &Frame) -> Option<Flow> {
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
                self.fail_statement(
                    SqlState::IN_FAILED_SQL_TRANSACTION,
                    extended,
                    "current transaction is aborted, commands ignored until end of transaction block",
                );
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
        let mut begin = match &self.tx_begin {
            Some(b) if !self.implicit_multi => b.trim().trim_end_matches(';').to_owned(),
            _ => "BEGIN".to_owned(),
        };
        for name in self.vars.savepoint_names() {
            begin.push_str("; SAVEPOINT ");
            begin.push_str(&super::state::quote_ident(name));
        }
        self.pending_begin = Some(begin);
        let target = if self.tx_read_only {
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
                self.local_portal = Some((portal.to_owned(), super::ids::LocalPortal::Tag(tag)));
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
        let (writers, readers): (Vec<Held>, Vec<Held>) = all.into_iter().partition(|h| h.wrote);
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

    /// The transaction's connections on `shards`, in that order, for a statement on several
    /// shards inside it (call when quiet): those it holds, and new ones that join it. With each,
    /// whether the transaction wrote there. `read`: the statement's facts when it only reads (a
    /// READ ONLY transaction may then join on a replica).
    pub(super) async fn tx_legs(
        &mut self,
        shards: &[ShardId],
        read: Option<&Facts>,
    ) -> Result<(Vec<Leg>, Vec<bool>), (SqlState, String)> {
        let mut mine: Vec<Held> = std::mem::take(&mut self.parked);
        if let Some(h) = self.held.take() {
            self.lent_from = Some(h.shard);
            mine.insert(0, h);
        }
        self.handle.set_backend(None);
        let begin = match self.pending_begin.take().or_else(|| self.tx_begin.clone()) {
            Some(b) if !self.implicit_multi => b.trim().trim_end_matches(';').to_owned(),
            _ => "BEGIN".to_owned(),
        };
        let mut legs = Vec::with_capacity(shards.len());
        let mut wrote = Vec::with_capacity(shards.len());
        let mut failure = None;
        for &shard in shards {
            if let Some(i) = mine.iter().position(|h| h.shard == shard) {
                let h = mine.swap_remove(i);
                wrote.push(h.wrote);
                legs.push(Leg {
                    co: h.checkout,
                    replay: false,
                });
                continue;
            }
            if failure.is_some() {
                continue;
            }
            let target = match read {
                Some(facts) if self.tx_read_only => plan::route(facts, &self.route_context(shard)),
                _ => Target::Primary,
            };
            let mut co = match self.checkout_on(target, shard).await {
                Ok(co) => co,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            let mut sql = String::new();
            if co.conn.vars_sig != self.vars.sig() {
                sql = self.vars.replay_sql(co.conn.vars_sig);
                co.conn.vars_sig = self.vars.sig();
            }
            co.conn.unnamed = None;
            sql.push_str(&begin);
            for name in self.vars.savepoint_names() {
                sql.push_str("; SAVEPOINT ");
                sql.push_str(&super::state::quote_ident(name));
            }
            match simple_on(&mut co.conn, &sql).await {
                Some(None) => {
                    self.shared.stats.record_plan("shard-joined");
                    wrote.push(false);
                    legs.push(Leg { co, replay: false });
                }
                Some(Some(e)) => failure = Some((SqlState::CONNECTION_FAILURE, msg::error_message(e.body()))),
                None => failure = Some((SqlState::CONNECTION_FAILURE, "connection lost".into())),
            }
        }
        // Shards the statement does not touch stay in the transaction.
        for h in mine {
            self.parked.push(h);
        }
        if let Some((code, m)) = failure {
            for mut leg in legs {
                leg.mark_broken();
            }
            self.lent_from = None;
            self.drop_transaction();
            return Err((
                code,
                format!("the transaction could not join every shard of the statement: {m}"),
            ));
        }
        Ok((legs, wrote))
    }

    /// The legs of [`Session::tx_legs`] after the statement: back into the transaction (the
    /// shard held before held again), marked as written when `wrote_now`. A leg left broken
    /// (the statement failed or was cut short) fails the whole transaction.
    pub(super) fn give_back(&mut self, legs: Vec<Leg>, shards: &[ShardId], wrote: Vec<bool>, wrote_now: bool) {
        let mut broken = false;
        let held_shard = self.lent_from.take();
        for ((leg, w), &shard) in legs.into_iter().zip(wrote).zip(shards) {
            broken |= leg.co.conn.broken;
            let h = Held {
                checkout: leg.co,
                shard,
                ops: Default::default(),
                wbuf: Default::default(),
                tx_status: b'T',
                begin_pending: false,
                wrote: w || wrote_now,
                needs_sync: false,
                copy_in: false,
                rolled_back: false,
            };
            if self.held.is_none() && held_shard.is_none_or(|s| s == shard) {
                self.handle.set_backend(Some((
                    h.checkout.node.clone(),
                    h.checkout.conn.pid,
                    h.checkout.conn.secret,
                )));
                self.held = Some(h);
            } else {
                self.parked.push(h);
            }
        }
        if self.held.is_none()
            && let Some(h) = self.parked.pop()
        {
            self.held = Some(h);
        }
        if broken {
            self.drop_transaction();
        }
    }

    /// A statement on several shards failed inside the transaction: its parts are gone (their
    /// connections closed, which rolls them back) and, as on one database, only ROLLBACK is
    /// accepted until the transaction ends.
    fn drop_transaction(&mut self) {
        if let Some(mut h) = self.held.take() {
            h.checkout.conn.broken = true;
        }
        self.handle.set_backend(None);
        // A pipeline's implicit transaction just ends (the client's messages are skipped up to
        // its Sync); a transaction block waits for the client's ROLLBACK.
        let block = !self.implicit_multi;
        self.abandon_parked();
        self.pending_begin = None;
        self.tx_refused = block;
    }

    /// The client left, or the held connection failed, in a transaction spanning shards: the
    /// parked connections are closed, which rolls their part back on the server.
    pub(super) fn abandon_parked(&mut self) {
        for mut p in self.parked.drain(..) {
            p.checkout.conn.broken = true;
        }
        self.implicit_multi = false;
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
