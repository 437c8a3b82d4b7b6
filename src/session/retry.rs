//! Reads tried again when their replica fails before answering.
//!
//! A read sent to a replica outside a transaction is kept (the client's messages that asked it: a
//! simple Query, or an extended-protocol batch up to its Sync) until its answer is let through to
//! the client: at ReadyForQuery, an error, any message but those below, or past `MAX_HELD`. Until
//! then the answer is held back in the client's send buffer (not sent, not copied): the
//! acknowledgements (ParseComplete, BindComplete, parameter and row descriptions), and the rows and
//! command tags too. A server stopped mid-statement sends what it has buffered, then its FATAL,
//! in one write: PostgreSQL looks for the shutdown before each row it fetches and after each
//! message it reads, so rows and even the command tag can come before the FATAL. If the replica's
//! connection dies, or the server says it is going away, before the answer was let through, the
//! replica leaves the rotation at once, what was held back is dropped, and the messages are
//! handled again as if just received: routed anew (another replica, else the primary as
//! configured), prepared again on the new connection. The client sees one answer, late, instead
//! of an error.
//!
//! A batch with a Flush is not kept: its client waits for those acknowledgements.
//!
//! Nothing is tried again once any answer reached the client, inside a transaction, for a batch
//! the proxy answered with an error of its own, or for one whose messages were not all seen from
//! its start (a pipeline in flight behind another): replaying then could repeat or lose a part.

use std::collections::VecDeque;

use super::state::{ExtKind, Op};
use super::{Held, Session};
use crate::backend::Role;
use crate::config::PoolMode;
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;

/// A batch with more messages or bytes than this is not kept: it is answered or fails as sent.
const MAX_FRAMES: usize = 64;
const MAX_BYTES: usize = 1 << 20;
/// An answer held back beyond this is sent, and the read is not tried again.
const MAX_HELD: usize = 64 * 1024;

/// The read in flight that may be tried again, if any.
#[derive(Default)]
pub(super) struct Retry {
    /// The client's messages, in order; empty: nothing can be tried again.
    frames: Vec<Frame>,
    bytes: usize,
    /// The batch's Sync is among them: later messages belong to another batch.
    complete: bool,
    /// Where, in the client's send buffer, what the batch's first backend message brought begins
    /// (acknowledgements, the proxy's own answers queued with them, notices of the settings
    /// replay): nothing from there on is sent while the read may still be tried again; cut off if
    /// it is. Kept in step as the buffer's front is written.
    hold_from: Option<usize>,
    /// `ClientConn::flushes` when the hold began.
    hold_flushes: u64,
    /// The batch's connection was checked to be a replica's.
    routed: bool,
}

impl Retry {
    pub(super) fn is_armed(&self) -> bool {
        !self.frames.is_empty()
    }

    fn forget_frames(&mut self) {
        if !self.frames.is_empty() {
            self.frames.clear();
            self.bytes = 0;
        }
    }

    /// How much of the client's send buffer (`len` bytes) may be sent now.
    pub(super) fn sendable(&self, len: usize) -> usize {
        self.hold_from.map_or(len, |at| at.min(len))
    }

    /// `n` bytes from the front of the client's send buffer were sent.
    pub(super) fn sent(&mut self, n: usize) {
        if let Some(at) = &mut self.hold_from {
            *at = at.saturating_sub(n);
        }
    }

    /// `false`: over the bounds, the batch is not kept.
    fn push(&mut self, f: Frame) -> bool {
        self.bytes += f.raw().len();
        if self.frames.len() >= MAX_FRAMES || self.bytes > MAX_BYTES {
            return false;
        }
        self.complete = f.tag() == b'S';
        self.frames.push(f);
        true
    }
}

/// Messages of a read's answer that a second try sends again the same way, held back while the
/// read may be tried again: ParseComplete, BindComplete, ParameterDescription, NoData,
/// RowDescription, and the rows and their ends (DataRow, CommandComplete, EmptyQueryResponse,
/// PortalSuspended): a server stopping may send its FATAL after any of them. ReadyForQuery, an
/// error or anything else lets the answer through.
fn held_back(tag: u8) -> bool {
    matches!(tag, b'1' | b'2' | b't' | b'n' | b'T' | b'D' | b'C' | b'I' | b's')
}

/// Whether the responses still owed on `h` could all be asked again elsewhere: only reads on a
/// replica, outside a transaction, with nothing the proxy sent on its own that a replay would not
/// send again the same way.
pub(super) fn replayable(h: &Held) -> bool {
    h.checkout.node.role() == Role::Replica
        && !h.in_transaction()
        && h.ops.iter().all(|o| {
            matches!(
                o,
                Op::Query { .. }
                    | Op::Sync
                    | Op::Synth(_)
                    | Op::SyncVars
                    | Op::Inject { .. }
                    | Op::Evict { .. }
                    | Op::Ext(ExtKind::Parse { .. } | ExtKind::Bind | ExtKind::Describe | ExtKind::Execute { .. })
            )
        })
}

/// A backend message that reaches the client (the answer has begun), as opposed to one the proxy
/// swallows: the replay of session parameters, the ParseComplete of a Parse it added, the
/// CloseComplete of a statement it evicted.
pub(super) fn reaches_client(front: Option<&Op>, tag: u8) -> bool {
    match front {
        Some(Op::SyncVars) => false,
        Some(Op::Inject { .. }) => tag != b'1',
        Some(Op::Evict { .. }) => tag != b'3',
        _ => true,
    }
}

impl Session {
    /// Nothing of the read in flight can be tried again (its answer began, or it cannot be
    /// replayed as a whole): what was held back goes to the client now, ahead of anything else.
    pub(super) fn drop_retry(&mut self) {
        self.retry.hold_from = None;
        self.retry.forget_frames();
    }

    /// A simple Query read on a replica with nothing else in flight.
    pub(super) fn arm_query(&mut self, query: Frame) {
        self.drop_retry();
        self.retry.complete = true;
        self.retry.bytes = query.raw().len();
        self.retry.frames.push(query);
    }

    /// Before a client message is handled: kept for a second try if it belongs to a batch being
    /// kept. A batch is kept from its first message when it starts with no backend held, outside
    /// any transaction, in transaction pooling; a Close, a Flush or any message but Parse, Bind,
    /// Describe, Execute and Sync ends the keeping. Inline: runs for every message.
    #[inline]
    pub(super) fn keep_for_retry(&mut self, f: &Frame) {
        let tag = f.tag();
        let keep = if self.between_batches {
            self.start_batch(tag)
        } else if self.retry.is_armed() && !self.retry.complete {
            if matches!(tag, b'P' | b'B' | b'D' | b'E' | b'S') {
                true
            } else {
                self.drop_retry();
                false
            }
        } else {
            false
        };
        if keep && !self.retry.push(f.clone()) {
            self.drop_retry();
        }
    }

    /// The first message of a batch: whether the batch is kept.
    fn start_batch(&mut self, tag: u8) -> bool {
        self.drop_retry();
        if self.retrying || !matches!(tag, b'P' | b'B' | b'D' | b'E') {
            return false;
        }
        self.retry.complete = false;
        self.retry.routed = false;
        self.held.is_none()
            && self.pinned.is_none()
            && !self.ignore_till_sync
            && self.runtime.config.server.pool_mode == PoolMode::Transaction
            && !self.in_transaction()
    }

    /// After a client message was handled: a batch that stalled (it moves to another
    /// connection; a replay could not follow) or went to the primary (nothing there is tried
    /// again) is not kept; and where batches begin. Inline: runs for every message.
    #[inline]
    pub(super) fn handled(&mut self, tag: u8, stalled: bool) {
        if stalled {
            if self.retry.is_armed() {
                self.drop_retry();
            }
            return;
        }
        if self.retry.is_armed()
            && !self.retry.routed
            && let Some(h) = self.held.as_ref()
        {
            self.retry.routed = true;
            if h.checkout.node.role() != Role::Replica {
                self.drop_retry();
            }
        }
        self.between_batches = matches!(tag, b'S' | b'Q' | b'F');
        if tag == b'S' {
            self.retrying = false;
        }
    }

    /// One whole backend message.
    #[inline]
    pub(super) fn on_backend(&mut self, raw: &[u8]) {
        if self.retry.is_armed() && self.watch_backend(raw) {
            return;
        }
        self.handle_backend(raw);
    }

    /// A backend message while the read in flight may be tried again: a going-away error before
    /// its answer was let through sends the read to another node (`true`: the message was dealt
    /// with); the answer is held back until then.
    #[inline(never)]
    fn watch_backend(&mut self, raw: &[u8]) -> bool {
        let Some(h) = self.held.as_ref() else { return false };
        let tag = raw[0];
        let body = &raw[5..];
        // A FATAL naming a server going away, not an ERROR of class 08 a query raised itself (a
        // dblink to a host that is down): that one is the answer, and the replica is fine.
        if tag == b'E'
            && super::responses::node_going_away(body)
            && super::responses::ends_connection(body)
            && replayable(h)
        {
            self.backend_lost(&msg::error_message(body));
            return true;
        }
        // Everything from the first backend message on belongs to the kept batch (the proxy's
        // own answers queued with it, notices of the settings replay): held until it is answered.
        if self.retry.hold_from.is_none() {
            self.retry.hold_from = Some(self.client.wbuf.len());
            self.retry.hold_flushes = self.client.flushes;
        }
        if !reaches_client(h.ops.front(), tag) {
            return false;
        }
        let held = self
            .retry
            .hold_from
            .map_or(0, |at| self.client.wbuf.len().saturating_sub(at));
        // Below the relay's high-water mark, or the backend would stop being read while the
        // client waits for what is held.
        if !held_back(tag) || held > MAX_HELD {
            self.drop_retry();
        }
        false
    }

    /// The held replica failed with the kept read unanswered: the read is handled again from its
    /// first message. `false` if there is nothing to try again.
    pub(super) fn try_again(&mut self, h: &Held, why: &str) -> bool {
        if !self.retry.is_armed() || !replayable(h) {
            self.drop_retry();
            return false;
        }
        if let Some(at) = self.retry.hold_from.take() {
            if self.client.flushes != self.retry.hold_flushes || at > self.client.wbuf.len() {
                // Sent after all (a path that writes the whole buffer ran meanwhile).
                self.drop_retry();
                return false;
            }
            // The client never saw these: the second try sends them again.
            self.client.wbuf.truncate(at);
        }
        crate::health::mark_down(&h.checkout.node, why);
        let frames = std::mem::take(&mut self.retry.frames);
        self.retry.bytes = 0;
        // The statements the batch's Parses created are created again by the replay (a name
        // already taken before the batch would have failed it, and nothing is replayed then).
        for f in &frames {
            if f.tag() == b'P'
                && let Ok(p) = msg::parse_parse(f.body())
                && !p.name.is_empty()
            {
                self.stmts.remove(p.name);
            }
        }
        let mut replay: VecDeque<Frame> = frames.into();
        replay.append(&mut self.replay);
        self.replay = replay;
        self.retrying = true;
        self.ignore_till_sync = false;
        tracing::info!(client = self.handle.pid, node = %h.checkout.node.config.name, why, "read tried again on another node");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut b = bytes::BytesMut::new();
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body);
        crate::protocol::pg::codec::decode_frame(&mut b, 1 << 22)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_batch_is_kept_up_to_its_sync_and_bounded() {
        let mut r = Retry::default();
        assert!(r.push(frame(b'B', b"\0\0\0\0\0\0\0")));
        assert!(r.push(frame(b'E', b"\0\0\0\0\0")));
        assert!(r.is_armed() && !r.complete);
        assert!(r.push(frame(b'S', b"")));
        assert!(r.complete);
        assert_eq!(r.frames.len(), 3);
        let mut big = Retry::default();
        let kept = (0..=MAX_FRAMES).filter(|_| big.push(frame(b'D', b"S\0"))).count();
        assert_eq!(kept, MAX_FRAMES, "a batch over the bound is not kept");
        let mut huge = Retry::default();
        assert!(!huge.push(frame(b'P', &vec![b'x'; MAX_BYTES + 1])));
    }

    #[test]
    fn only_swallowed_answers_leave_the_read_unanswered() {
        assert!(!reaches_client(Some(&Op::SyncVars), b'C'));
        assert!(!reaches_client(Some(&Op::Inject { forget: None }), b'1'));
        assert!(reaches_client(Some(&Op::Inject { forget: None }), b'E'));
        assert!(!reaches_client(Some(&Op::Evict { hash: 1 }), b'3'));
        assert!(reaches_client(Some(&Op::Ext(ExtKind::Bind)), b'2'));
        assert!(reaches_client(Some(&Op::Sync), b'Z'));
        assert!(reaches_client(None, b'E'));
        assert!(held_back(b'1') && held_back(b'T') && held_back(b'n'));
        // A server stopped mid-read sends its FATAL after rows, and even after the command tag.
        assert!(held_back(b'D') && held_back(b'C') && held_back(b's'));
        assert!(!held_back(b'Z') && !held_back(b'E') && !held_back(b'N') && !held_back(b'G'));
    }
}
