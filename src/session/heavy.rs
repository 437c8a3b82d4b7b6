//! Statements that are long or too complex to analyze in line with other clients' traffic.
//!
//! Analysis of a long text (a multi-megabyte INSERT, a 100,000-value IN list) takes
//! milliseconds to seconds; on the runtime's threads it would hold up every other client on
//! them. Such texts are analyzed on tokio's blocking threads instead, a few at a time, and the
//! results land in the shared caches where the session's own lookups find them. Texts over the
//! configured limits (`analyze::limits`) are refused before they are parsed: 54000 when too
//! long, 54001 when too deep, the session stays usable and, inside a transaction, the
//! transaction fails as it would on the server.

use std::sync::Arc;

use super::state::Op;
use super::{Flow, Session};
use crate::analyze::{Facts, TooComplex};
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

/// Texts longer than this are analyzed off the runtime's threads.
pub(super) const INLINE_LEN: usize = 16 * 1024;

impl Session {
    /// The facts of a long text, analyzed on a blocking thread; with a shard map its shapes are
    /// computed there too, so the routing that follows finds them cached.
    pub(super) async fn facts_off_runtime(&mut self, sql: &str) -> Arc<Facts> {
        if self.held.is_none() {
            self.runtime = self.shared.runtime.load_full();
        }
        let shared = self.shared.clone();
        let runtime = self.runtime.clone();
        let text = sql.to_owned();
        let work = move || {
            let c = &runtime.config;
            let facts = shared.cache.get(&text, &c.routing.primary_functions, &c.server.limits);
            if facts.too_complex.is_none() && !c.map.tables.is_empty() {
                shared.shapes.get(&text, &c.map);
                if let Some(lf) = crate::analyze::fingerprint::parameterize(&text) {
                    shared.shapes.get(&lf.text, &c.map);
                }
            }
            facts
        };
        let slots = self.shared.clone();
        // The semaphore is never closed; without a permit the work would still run.
        let permit = slots.analysis_slots.acquire().await.ok();
        let done = tokio::task::spawn_blocking(work).await;
        drop(permit);
        match done {
            Ok(facts) => facts,
            // The blocking pool is shutting down: analyze here rather than fail the statement.
            Err(_) => self.facts_keyed(sql, None),
        }
    }

    /// Answers a statement over the limits instead of running it.
    pub(super) fn refuse_too_complex(&mut self, e: &TooComplex, extended: bool) -> Flow {
        self.shared.stats.record_plan("refused");
        let code = match e {
            TooComplex::Long { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            TooComplex::Deep { .. } => SqlState::STATEMENT_TOO_COMPLEX,
        };
        self.fail_unread(code, &e.to_string(), extended)
    }

    /// Fails a statement shardwire could not read (over the limits, text not in the client's
    /// encoding) as the server would have failed it: in a transaction, the transaction fails.
    pub(super) fn fail_unread(&mut self, code: SqlState, message: &str, extended: bool) -> Flow {
        let message = message.to_owned();
        let held_tx = self.held.as_ref().is_some_and(|h| h.in_transaction());
        if self.sharded() && (held_tx || self.pending_begin.is_some()) {
            // The sharded transaction rules fail the transaction: only ROLLBACK ends it.
            self.tx_refused = true;
        }
        if extended {
            self.local_error(code, &message);
            return Flow::Continue;
        }
        if held_tx && !self.tx_refused {
            // The server raises the same error, so its transaction fails as it would have.
            let h = self.held.as_mut().expect("held_tx");
            msg::query(&mut h.wbuf, &raise_statement(code, &message));
            h.checkout.conn.unnamed = None;
            h.ops.push_back(Op::Query {
                set_ops: Vec::new(),
                failed: false,
            });
            return Flow::Continue;
        }
        let mut b = bytes::BytesMut::new();
        msg::error_response(&mut b, Severity::Error, code, &message);
        msg::ready_for_query(&mut b, self.local_tx_status());
        self.respond_synth(b.freeze());
        Flow::Continue
    }
}

/// A statement that fails on the server with `code` and `message`.
fn raise_statement(code: SqlState, message: &str) -> String {
    format!(
        "DO $shardwire$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'; END$shardwire$",
        code.code(),
        message.replace('\'', "''").replace('$', "")
    )
}
