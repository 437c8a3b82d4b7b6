//! A statement on several shards inside a transaction borrows the transaction's connections:
//! those it holds on the statement's shards, and new ones that join it (BEGIN as the client
//! sent it, the open savepoints, the session's settings), handed back afterwards. A leg that
//! comes back broken (the statement failed or stopped early) fails the whole transaction.

use super::{Held, Session};
use crate::analyze::Facts;
use crate::backend::leg::{Leg, simple_on};
use crate::plan::{self, Target};
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

impl Session {
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
        let pending = self.pending_begin.take();
        let join = self.join_text(pending.as_deref().or(self.tx_begin.as_deref()));
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
                Some(facts) if self.tx_read_only && !self.implicit_multi => {
                    plan::route(facts, &self.route_context(shard))
                }
                _ => Target::Primary,
            };
            let mut co = match self.checkout_on(target, shard).await {
                Ok(co) => co,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            if co.conn.vars_sig != self.vars.sig() {
                // On its own: in one query string with the BEGIN, a ROLLBACK would undo it.
                let replay = self.vars.replay_sql(co.conn.vars_sig);
                if simple_on(&mut co.conn, &replay).await != Some(None) {
                    co.conn.broken = true;
                    failure = Some((
                        SqlState::CONNECTION_FAILURE,
                        "could not restore the session's settings".into(),
                    ));
                    continue;
                }
                co.conn.vars_sig = self.vars.sig();
            }
            co.conn.unnamed = None;
            match simple_on(&mut co.conn, &join).await {
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
                only_read: !w && !wrote_now,
                // When the legs joined is not kept: now is later, so never taken for before a fence.
                joined: self.shared.runtime.load().config.map.clone(),
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
}
