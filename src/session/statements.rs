//! The statements a client sends, as the session knows them: their facts (cached analysis, the
//! last text's kept at hand), the client's prepared statements by name, the bookkeeping after one
//! is sent (pinning, transaction start, writes, counters), and the functions shardwire answers
//! itself instead of a server (`shardwire.next_id()`, signals to the pids it gave out).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Session;
use super::state::Stmt;
use crate::analyze::{Facts, Need, ProxyCall, TxEffect};
use crate::backend::Role;
use crate::protocol::pg::rows::BindParts;
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// A simple Query calling a function shardwire answers: answered. `false`: the server
    /// answers it (a signal to a pid of the server's own, from pg_stat_activity say).
    pub(super) fn answer_proxy_call(&mut self, call: &ProxyCall) -> bool {
        match self.signal_target(call, None) {
            Some((terminate, target)) => self.answer_signal_query(terminate, &target),
            None if matches!(call, ProxyCall::Signal { .. }) => return false,
            None => self.answer_ids_query(call),
        }
        true
    }

    /// A Bind of such a statement: bound to a portal the proxy answers. `false`: the statement
    /// is prepared and bound on the server.
    pub(super) fn bind_proxy_call(&mut self, portal: &str, call: &ProxyCall, parts: &BindParts) -> bool {
        match self.signal_target(call, Some(parts)) {
            Some((terminate, target)) => self.bind_signal(portal, terminate, &target, parts),
            None if matches!(call, ProxyCall::Signal { .. }) => return false,
            None => self.bind_ids(portal, call, parts),
        }
        // The signal was sent, the IDs taken, at Bind: a batch holding it is not replayed.
        self.drop_retry();
        true
    }

    pub(super) fn facts_of(&mut self, sql: &str) -> Arc<Facts> {
        self.facts_keyed(sql, None)
    }

    /// The facts of `sql`; `key` is its literal-free cache key when the caller already has one.
    pub(super) fn facts_keyed(&mut self, sql: &str, key: Option<&str>) -> Arc<Facts> {
        if let Some((text, facts)) = &self.last_facts
            && text == sql
        {
            return facts.clone();
        }
        let functions = &self.runtime.config.routing.primary_functions;
        let limits = &self.runtime.config.server.limits;
        let facts = match key {
            Some(k) => self.shared.cache.get_keyed(k.to_owned(), sql, functions, limits),
            None => self.shared.cache.get(sql, functions, limits),
        };
        if sql.len() > 4096 {
            // Idle sessions should not keep a large text alive.
            return facts;
        }
        match &mut self.last_facts {
            Some((text, f)) if text.capacity() >= sql.len() => {
                text.clear();
                text.push_str(sql);
                *f = facts.clone();
            }
            other => *other = Some((sql.to_owned(), facts.clone())),
        }
        facts
    }

    pub(super) fn lookup_statement(&mut self, name: &str) -> Option<Arc<Stmt>> {
        let found = if name.is_empty() {
            self.unnamed.clone()
        } else {
            self.stmts.get(name).cloned()
        };
        if found.is_none() {
            let m = if name.is_empty() {
                "unnamed prepared statement does not exist".to_string()
            } else {
                format!("prepared statement \"{name}\" does not exist")
            };
            self.local_error(SqlState::INVALID_SQL_STATEMENT_NAME, &m);
        }
        found
    }

    /// Bookkeeping for a statement sent: pinning, transaction start, writes, counters.
    pub(super) fn note_statement(&mut self, facts: &Facts) {
        if let Some(reason) = facts.pins_session
            && self.pinned.is_none()
        {
            tracing::debug!(client = self.handle.pid, reason, "session pinned to its backend");
            self.pinned = Some(reason);
            if reason == "LISTEN" {
                self.handle.listening();
            }
        }
        let Some(held) = self.held.as_mut() else { return };
        held.begin_pending |= matches!(facts.tx, TxEffect::Begin { .. });
        if facts.need != Need::Read && facts.tx == TxEffect::None {
            held.only_read = false;
        }
        let node = &held.checkout.node;
        if node.role() == Role::Primary
            && facts.need == Need::Primary
            && facts.tx == TxEffect::None
            && facts.set_ops.is_empty()
        {
            held.wrote = true;
        }
        node.stats.statements.fetch_add(1, Ordering::Relaxed);
    }
}
