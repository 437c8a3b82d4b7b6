//! Matching backend responses to the queue of expected ones (`Op`): what is forwarded to the
//! client, what the proxy swallows (replayed settings, injected Parses, evictions, its own
//! Syncs), skipping to Sync after an error, and the session state a completed statement changes
//! (SET, savepoints, read-your-writes positions, rollbacks).

use bytes::BytesMut;

use super::state::{ExtKind, Op};
use super::{Held, Session};
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

/// An error that says the server is going away (shutdown, crash, terminated connection), not
/// that the statement failed: class 57P (operator intervention) or 08 (connection exception).
pub(super) fn node_going_away(body: &[u8]) -> bool {
    msg::error_field(body, b'C').is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
}

/// An error with which the server ends the connection (FATAL or PANIC), rather than one statement.
pub(super) fn ends_connection(body: &[u8]) -> bool {
    // 'V' is the severity never translated; servers before 9.6 send only 'S'.
    msg::error_field(body, b'V')
        .or_else(|| msg::error_field(body, b'S'))
        .is_some_and(|s| s == "FATAL" || s == "PANIC")
}

impl Session {
    /// One whole backend message (`raw`: type byte, length, body).
    pub(super) fn handle_backend(&mut self, raw: &[u8]) {
        let Some(h) = self.held.as_mut() else { return };
        let out = &mut self.client.wbuf;
        let tag = raw[0];
        let body = &raw[5..];
        tracing::trace!(client = self.handle.pid, tag = %(tag as char), front = ?h.ops.front(), "backend message");
        if matches!(tag, b'N' | b'A' | b'S') {
            let swallowing = matches!(
                h.ops.front(),
                Some(Op::SyncVars | Op::CaptureLsn { .. } | Op::Inject { .. } | Op::HiddenBegin | Op::Hidden)
            );
            if tag == b'A' && body.len() >= 4 {
                // A notification names the sender by the process id the proxy gave that client
                // (as BackendKeyData did), not by the server process it happened to use: drivers
                // compare the two to tell their own NOTIFYs from others'.
                let sender = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let client = if sender == h.checkout.conn.pid {
                    Some(self.handle.pid)
                } else {
                    self.handle.client_of_backend(&h.checkout.node, sender)
                };
                let start = out.len();
                out.extend_from_slice(raw);
                if let Some(pid) = client {
                    out[start + 5..start + 9].copy_from_slice(&pid.to_be_bytes());
                }
            } else if tag != b'S' || !swallowing {
                out.extend_from_slice(raw);
            }
            return;
        }
        flush_synth(h, out);
        if tag == b'G' {
            enter_copy_in(h);
        }
        // A FATAL answer to the client's own statement (its backend terminated, the server shutting
        // down) reaches the client, and the client is closed as the server closes it: PostgreSQL
        // and PgBouncer do the same, and drivers expect the connection gone after a FATAL.
        if tag == b'E' && ends_connection(body) {
            let front = h.ops.front();
            let client_sees = matches!(
                front,
                Some(Op::Query { .. } | Op::Sync | Op::Ext(_) | Op::Inject { .. } | Op::HiddenBegin | Op::Evict { .. })
            );
            if client_sees {
                self.ending = Some(super::Ending::Told);
                // Nothing comes after a FATAL: answers the proxy queued behind it are not sent.
                h.ops.retain(|o| !matches!(o, Op::Synth(_)));
            }
        }
        let Some(op) = h.ops.front_mut() else {
            // Nothing was asked: a FATAL before the server closes, most likely. It concerns the
            // client if the connection held its session state or its open transaction (idle in
            // transaction too long, terminated): then the client is told and closed, as one
            // server does. Otherwise the connection is dropped; the client never gets a message
            // it did not ask for.
            let own_state = self.pinned.is_some()
                || self.runtime.config.server.pool_mode == crate::config::PoolMode::Session
                || (h.in_transaction() && ends_connection(body));
            if tag == b'E' && !own_state {
                self.backend_lost(&msg::error_message(body));
            } else {
                out.extend_from_slice(raw);
                if tag == b'E' && ends_connection(body) {
                    self.ending = Some(super::Ending::Told);
                }
            }
            return;
        };
        let mut done = false;
        let mut error_skip = false;
        let mut pipeline_failed = false;
        match op {
            Op::Query { failed, .. } => {
                *failed |= tag == b'E';
                out.extend_from_slice(raw);
                done = tag == b'Z';
            }
            Op::Sync => {
                out.extend_from_slice(raw);
                done = tag == b'Z';
            }
            Op::Ext(kind) => {
                out.extend_from_slice(raw);
                if tag == b'E' {
                    error_skip = true;
                } else {
                    done = ext_done(kind, tag);
                }
            }
            Op::Inject { .. } => match tag {
                b'1' => done = true,
                b'E' => {
                    out.extend_from_slice(raw);
                    error_skip = true;
                }
                _ => out.extend_from_slice(raw),
            },
            Op::Hidden => done = tag == b'Z',
            Op::HiddenBegin => match tag {
                b'C' => done = true,
                b'E' => {
                    out.extend_from_slice(raw);
                    error_skip = true;
                }
                _ => {}
            },
            Op::Evict { .. } => match tag {
                b'3' => done = true,
                b'E' => {
                    out.extend_from_slice(raw);
                    error_skip = true;
                }
                _ => {}
            },
            Op::SyncVars => match tag {
                b'E' => {
                    let m = format!("could not restore session settings: {}", msg::error_message(body));
                    msg::error_response(out, Severity::Warning, SqlState::WARNING, &m);
                }
                b'Z' => done = true,
                _ => {}
            },
            Op::PipelineSync { failed } => {
                if tag == b'Z' {
                    done = true;
                    pipeline_failed = *failed;
                }
            }
            // Its error, always; anything else would mean a statement of that name existed, and
            // must not leave the op waiting forever.
            Op::Abort => match tag {
                b'E' => error_skip = true,
                _ => done = true,
            },
            Op::CaptureLsn { lsn, .. } => match tag {
                b'D' => *lsn = parse_single_int(body),
                b'Z' => done = true,
                _ => {}
            },
            Op::Synth(_) | Op::CopyEnd => unreachable!("flush_synth emptied the front"),
        }
        // ROLLBACK TO SAVEPOINT completes with the same tag but leaves the transaction open.
        if tag == b'C' && body.starts_with(b"ROLLBACK") && !rolls_back_to_savepoint(h.ops.front()) {
            h.rolled_back = true;
        }
        if tag == b'Z' {
            h.tx_status = body.first().copied().unwrap_or(b'I');
        }
        if error_skip {
            let failed = h.ops.pop_front();
            self.forget(failed);
            self.skip_to_sync();
            if self.held.as_ref().is_some_and(|h| h.ops.is_empty()) {
                // The client's Sync has not come yet: what it sends until then is discarded, as
                // the server discards it (a Bind of the statement whose Parse just failed must
                // not get an error of its own).
                self.ignore_till_sync = true;
            }
        } else if done {
            let op = h.ops.pop_front();
            self.complete(op);
        }
        if tag == b'Z' {
            self.on_ready();
        }
        if pipeline_failed {
            self.ignore_till_sync = true;
        }
        if let Some(h) = self.held.as_mut() {
            if h.ops.is_empty() {
                h.begin_pending = false;
            }
            flush_synth(h, &mut self.client.wbuf);
        }
    }

    /// At the end of a transaction, SETs made inside it stand if it committed and are undone (by
    /// the server, and so here) if it rolled back.
    fn on_ready(&mut self) {
        let Some(h) = self.held.as_mut() else { return };
        if h.tx_status != b'I' {
            return;
        }
        self.tx_begin = None;
        self.tx_read_only = false;
        if std::mem::take(&mut self.ddl_in_tx) {
            self.shared.forget_columns();
        }
        let Some(h) = self.held.as_mut() else { return };
        let rolled_back = std::mem::take(&mut h.rolled_back);
        if let Some(before) = self.vars_before_txn.take()
            && rolled_back
        {
            self.vars = before;
            h.checkout.conn.vars_sig = self.vars.sig();
        }
        self.vars.end_transaction();
    }

    /// After an error in the extended protocol the server skips everything until Sync.
    fn skip_to_sync(&mut self) {
        loop {
            let Some(h) = self.held.as_mut() else { return };
            match h.ops.front() {
                None
                | Some(Op::Sync)
                | Some(Op::Query { .. })
                | Some(Op::SyncVars)
                | Some(Op::CaptureLsn { .. })
                | Some(Op::Hidden) => {
                    return;
                }
                Some(Op::PipelineSync { .. }) => {
                    if let Some(Op::PipelineSync { failed }) = h.ops.front_mut() {
                        *failed = true;
                    }
                    return;
                }
                Some(_) => {
                    let op = h.ops.pop_front();
                    self.forget(op);
                }
            }
        }
    }

    /// A Parse that failed or was skipped did not create its statement.
    fn forget(&mut self, op: Option<Op>) {
        let Some(h) = self.held.as_mut() else { return };
        let conn = &mut h.checkout.conn;
        match op {
            Some(Op::Ext(ExtKind::Parse { forget, client_name })) => {
                match forget {
                    Some(hash) => conn.prepared.remove(hash),
                    None => {
                        conn.unnamed = None;
                        self.unnamed = None;
                    }
                }
                if let Some(name) = client_name {
                    self.stmts.remove(&name);
                }
            }
            Some(Op::Inject { forget: Some(hash) }) => conn.prepared.remove(hash),
            Some(Op::Evict { hash }) => conn.prepared.restore(hash),
            Some(Op::Inject { forget: None }) => conn.unnamed = None,
            _ => {}
        }
    }

    fn complete(&mut self, op: Option<Op>) {
        let set_ops = match op {
            Some(Op::Query { set_ops, failed: false }) => set_ops,
            Some(Op::Ext(ExtKind::Execute { set_ops })) => set_ops,
            Some(Op::CaptureLsn { lsn, shard }) => {
                if let Some(lsn) = lsn {
                    self.record_position(shard, lsn);
                }
                return;
            }
            _ => return,
        };
        if set_ops.is_empty() {
            return;
        }
        let in_txn = self.held.as_ref().is_some_and(|h| h.tx_status != b'I');
        if in_txn && self.vars_before_txn.is_none() {
            self.vars_before_txn = Some(self.vars.clone());
        }
        for op in &set_ops {
            self.vars.apply(op);
        }
        if let Some(h) = self.held.as_mut() {
            h.checkout.conn.vars_sig = self.vars.sig();
        }
    }
}

/// Whether the statement being answered is (or holds) a ROLLBACK TO SAVEPOINT.
fn rolls_back_to_savepoint(op: Option<&Op>) -> bool {
    let set_ops = match op {
        Some(Op::Query { set_ops, .. }) | Some(Op::Ext(ExtKind::Execute { set_ops })) => set_ops,
        _ => return false,
    };
    set_ops
        .iter()
        .any(|o| matches!(o, crate::analyze::SetOp::RollbackTo { .. }))
}

/// Answers the proxy queued at the front of what the backend owes go out: nothing precedes them.
pub(super) fn flush_synth(h: &mut Held, out: &mut BytesMut) {
    while let Some(Op::Synth(_) | Op::CopyEnd) = h.ops.front() {
        if let Some(Op::Synth(b)) = h.ops.pop_front() {
            out.extend_from_slice(&b);
        }
    }
}

/// The server entered COPY FROM STDIN. Syncs the client sent before ending the copy (a client may
/// pipeline Bind, Execute, Sync) are ignored by the server, so nothing will answer them.
fn enter_copy_in(h: &mut Held) {
    let end = h.ops.iter().position(|o| matches!(o, Op::CopyEnd));
    let limit = end.unwrap_or(h.ops.len());
    let before = h.ops.len();
    let mut i = 0;
    h.ops.retain(|o| {
        let keep = i >= limit || !matches!(o, Op::Sync);
        i += 1;
        keep
    });
    if h.ops.len() != before {
        h.needs_sync = true;
    }
    match end {
        Some(_) => {
            if let Some(pos) = h.ops.iter().position(|o| matches!(o, Op::CopyEnd)) {
                h.ops.remove(pos);
            }
        }
        None => h.copy_in = true,
    }
}

/// Whether `tag` is the last message answering an extended-protocol message of this kind.
fn ext_done(kind: &ExtKind, tag: u8) -> bool {
    match kind {
        ExtKind::Parse { .. } => tag == b'1',
        ExtKind::Bind => tag == b'2',
        ExtKind::Describe => matches!(tag, b'T' | b'n'),
        ExtKind::Execute { .. } => matches!(tag, b'C' | b'I' | b's'),
        ExtKind::Close => tag == b'3',
    }
}

/// The one text value of a one-column DataRow, as an integer.
fn parse_single_int(body: &[u8]) -> Option<u64> {
    if body.len() < 6 || body[..2] != [0, 1] {
        return None;
    }
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    let v = body.get(6..6 + usize::try_from(len).ok()?)?;
    std::str::from_utf8(v).ok()?.parse().ok()
}
