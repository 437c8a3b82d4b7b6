//! Holding a backend: the route for a statement, the node for the route (replica choice,
//! fallbacks), the checkout, and replaying the client's session parameters on it.

use super::client::SessionError;
use super::state::Op;
use super::{Ensure, Flow, Held, Session};
use crate::analyze::Facts;
use crate::backend::{Checkout, Role};
use crate::config::{PoolMode, WhenNoReplica};
use crate::plan::{self, RouteContext, Target};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

impl Session {
    /// Makes sure a backend suitable for `facts` is held. `Some(flow)` when the message cannot go
    /// on now: it must wait for the held backend (stall), or an error was already reported.
    pub(super) async fn hold_for(
        &mut self,
        facts: &Facts,
        extended: bool,
        f: &Frame,
        shard: ShardId,
    ) -> Result<Option<Flow>, SessionError> {
        Ok(match self.ensure_backend(facts, extended, shard).await? {
            Ensure::Ready => None,
            Ensure::Stall => Some(Flow::Stall(f.clone())),
            Ensure::Failed => Some(Flow::Continue),
        })
    }

    /// Holds a backend suitable for `facts`, checking one out if none is held.
    async fn ensure_backend(&mut self, facts: &Facts, extended: bool, shard: ShardId) -> Result<Ensure, SessionError> {
        let session_mode = self.runtime.config.server.pool_mode == PoolMode::Session;
        if let Some(h) = self.held.as_mut()
            && h.checkout.node.role() == Role::Fenced
        {
            // A failover replaced the node this connection is on: nothing more goes there.
            h.checkout.conn.broken = true;
            if h.in_transaction() || self.pinned.is_some() || session_mode {
                let m = format!(
                    "{} was replaced by a failover and is fenced; this session's transaction or session state was there; reconnect",
                    h.checkout.node.config.name
                );
                self.end_with(SqlState::CONNECTION_FAILURE, m);
                return Ok(Ensure::Failed);
            }
            if !h.is_free() {
                return Ok(Ensure::Stall);
            }
            self.held = None;
            self.handle.set_backend(None);
        }
        if let Some(h) = &self.held {
            if h.shard != shard {
                if self.pinned.is_some() {
                    let m = self.cross_shard_message(shard);
                    self.refuse(extended, &m);
                    return Ok(Ensure::Failed);
                }
                if h.in_transaction() || (h.needs_sync && h.wrote) {
                    return Box::pin(self.join_shard(facts, extended, shard)).await;
                }
                let h = self.held.as_mut().expect("checked above");
                if h.needs_sync && !h.copy_in {
                    // A pipeline that only read so far: its part here ends with a Sync of our
                    // own (it changed nothing to commit), and the rest goes to the other shard.
                    crate::protocol::pg::rows::sync(&mut h.wbuf);
                    h.ops.push_back(Op::PipelineSync { failed: false });
                    h.needs_sync = false;
                }
                return Ok(Ensure::Stall);
            }
            let suitable = h.checkout.node.role() == Role::Primary
                || h.in_transaction()
                || self.pinned.is_some()
                || matches!(plan::route(facts, &self.route_context(shard)), Target::Replica { .. });
            if !suitable && h.needs_sync && !h.copy_in {
                // A read on a replica, then a write, in one pipeline: end the pipeline's part on
                // the replica with a Sync of our own (it only read), then move to the primary.
                let h = self.held.as_mut().expect("checked above");
                crate::protocol::pg::rows::sync(&mut h.wbuf);
                h.ops.push_back(Op::PipelineSync { failed: false });
                h.needs_sync = false;
            }
            return Ok(if suitable { Ensure::Ready } else { Ensure::Stall });
        }
        // A statement planned under one map runs under it: the shard ids it was planned with
        // index that map's clusters (a map swapped since may list the shards in another order).
        let now = self.shared.runtime.load_full();
        if std::sync::Arc::ptr_eq(&now.config.map, &self.runtime.config.map) {
            self.runtime = now;
        }
        // Session pooling keeps one connection for the whole session: it must be able to write.
        // A transaction block's first statement (its BEGIN waited for it) runs where the rest
        // can follow: the primary, unless the BEGIN said READ ONLY.
        let target = if session_mode || (self.pending_begin.is_some() && !self.tx_read_only) {
            Target::Primary
        } else {
            plan::route(facts, &self.route_context(shard))
        };
        match self.checkout(target, shard).await {
            Ok(()) => Ok(Ensure::Ready),
            Err((code, message)) => {
                if extended {
                    self.local_error(code, &message);
                } else {
                    msg::error_response(&mut self.client.wbuf, Severity::Error, code, &message);
                    msg::ready_for_query(&mut self.client.wbuf, b'I');
                }
                Ok(Ensure::Failed)
            }
        }
    }

    /// What routing needs to know of the session, for a statement on `shard`.
    pub(super) fn route_context(&self, shard: ShardId) -> RouteContext {
        RouteContext {
            pinned: self.pinned.is_some(),
            ryw_lsn: self.ryw_position(shard),
        }
    }

    pub(super) async fn checkout(&mut self, target: Target, shard: ShardId) -> Result<(), (SqlState, String)> {
        let checkout = self.checkout_on(target, shard).await?;
        self.handle
            .set_backend(Some((checkout.node.clone(), checkout.conn.pid, checkout.conn.secret)));
        let (ops, wbuf) = self.spare.take().unwrap_or_default();
        let mut held = Held {
            checkout,
            shard,
            ops,
            wbuf,
            tx_status: b'I',
            begin_pending: false,
            wrote: false,
            needs_sync: false,
            copy_in: false,
            rolled_back: false,
            only_read: true,
            joined: self.shared.runtime.load().config.map.clone(),
        };
        if held.checkout.conn.vars_sig != self.vars.sig() {
            msg::query(&mut held.wbuf, &self.vars.replay_sql(held.checkout.conn.vars_sig));
            held.checkout.conn.vars_sig = self.vars.sig();
            held.checkout.conn.unnamed = None;
            held.ops.push_back(Op::SyncVars);
        }
        if let Some(begin) = self.pending_begin.take() {
            // The transaction's BEGIN was answered by the proxy; it runs now, on the shard the
            // first statement chose.
            msg::query_bytes(&mut held.wbuf, &self.wire(&begin));
            held.checkout.conn.unnamed = None;
            held.ops.push_back(Op::SyncVars);
            held.begin_pending = true;
        }
        if !self.early.is_empty() {
            held.ops.push_back(Op::Synth(self.early.split().freeze()));
        }
        self.held = Some(held);
        Ok(())
    }

    /// Checks out a connection of `shard` for `target` (replica choice and fallbacks included).
    pub(super) async fn checkout_on(&self, target: Target, shard: ShardId) -> Result<Checkout, (SqlState, String)> {
        let runtime = self.runtime.clone();
        let cluster = &runtime.clusters[shard];
        let routing = &runtime.config.routing;
        let primary_fallback = routing.when_no_replica == WhenNoReplica::Primary;
        let node = match target {
            Target::Primary => cluster.writer(),
            Target::Replica { min_lsn } => match cluster.pick_replica(routing.balance, min_lsn) {
                Some(r) => r,
                // Read-your-writes with no replica caught up: the primary has the write.
                None if min_lsn.is_some() || primary_fallback => cluster.writer(),
                None => {
                    return Err((
                        SqlState::UNABLE_TO_CONNECT,
                        format!(
                            "no replica of shard {} is within the lag bound ({:?}, {} bytes) and routing.when_no_replica is \"refuse\"; \
                             retry later or add /* shardwire: primary */ to read from the primary",
                            cluster.name, routing.max_lag, routing.max_lag_bytes
                        ),
                    ));
                }
            },
        };
        // A just-released connection needs no future at all; bb8's checkout future is boxed: it is
        // over a kilobyte, and unboxed it would be part of, and copied along with, every message
        // handler's future on the way here.
        let got = match node.checkout_now() {
            Some(c) => Ok(c),
            None => Box::pin(node.checkout()).await,
        };
        let checkout = match got {
            Ok(c) => c,
            Err(e) if node.role() == Role::Replica => {
                crate::health::mark_down(&node, &e.to_string());
                if !primary_fallback {
                    return Err((
                        SqlState::CONNECTION_FAILURE,
                        format!("replica {} unavailable: {e}", node.config.name),
                    ));
                }
                Box::pin(cluster.writer().checkout()).await.map_err(checkout_error)?
            }
            Err(e) => return Err(checkout_error(e)),
        };
        cluster.learn_server_params(&checkout.conn.params);
        Ok(checkout)
    }
}

fn checkout_error(e: crate::backend::CheckoutError) -> (SqlState, String) {
    match e {
        crate::backend::CheckoutError::Connect(m) => (SqlState::CONNECTION_FAILURE, m),
        t @ crate::backend::CheckoutError::Timeout { .. } => (SqlState::TOO_MANY_CONNECTIONS, t.to_string()),
    }
}
