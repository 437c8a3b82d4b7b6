//! The end of a transaction that spans shards. COMMIT commits read-only shards first, then the
//! one shard that wrote directly, or, when several wrote, with two-phase commit and the durable
//! decision record (`multi_write`), which recovery completes after a crash. ROLLBACK, or COMMIT
//! of a failed transaction, rolls back on every shard. An error on any shard fails the whole
//! transaction, as on one database.

use super::client::SessionError;
use super::multi_write::Part;
use super::{Flow, Held, Session};
use crate::backend::leg::Leg;
use crate::plan::Target;
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// A signature no settings produce (they are odd, or zero): a connection marked with it gets
/// `RESET ALL` and the session's settings replayed before its next use.
const UNKNOWN_VARS_SIG: u64 = 2;

impl Session {
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
    pub(super) async fn finish_multi(&mut self, rollback: bool) -> Result<&'static str, (SqlState, String)> {
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
}
