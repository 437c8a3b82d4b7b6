//! Answers the proxy gives itself in the client's protocol stream: local messages kept in order
//! with the backend's, and errors it raises (which, in a pipeline, must fail the backend's part
//! too, as a server error would).

use bytes::BytesMut;

use super::Session;
use super::client::SessionError;
use super::local_portal::LocalPortal;
use super::state::Op;
use super::state::Stmt;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// An answer the proxy gives itself, in order with whatever the backend still owes.
    pub(super) fn respond_local(&mut self, bytes: bytes::Bytes) {
        match self.held.as_mut() {
            Some(h) => h.ops.push_back(Op::Synth(bytes)),
            None => {
                self.flush_early();
                self.client.wbuf.extend_from_slice(&bytes);
            }
        }
    }

    /// Local answers held back for the next write go out now, ahead of what follows.
    pub(super) fn flush_early(&mut self) {
        if !self.early.is_empty() {
            let e = self.early.split();
            self.client.wbuf.extend_from_slice(&e);
        }
    }

    /// An error the proxy raises in the extended protocol: reported in order, then everything up
    /// to Sync is skipped, as the server does.
    pub(super) fn local_error(&mut self, code: SqlState, message: &str) {
        let mut b = BytesMut::new();
        msg::error_response(&mut b, Severity::Error, code, message);
        self.extended_error(b.freeze());
    }

    /// A server's error (its ErrorResponse as sent) for a statement the proxy ran on the client's
    /// behalf, reported as the statement's own: in the extended protocol as [`Session::local_error`];
    /// in the simple one with its ReadyForQuery, and inside a transaction block the transaction
    /// fails.
    pub(super) fn fail_with_frame(&mut self, error: &[u8], extended: bool) {
        let in_tx = self.in_transaction();
        if in_tx {
            self.tx_refused = true;
        }
        if extended {
            self.extended_error(bytes::Bytes::copy_from_slice(error));
            return;
        }
        let mut b = BytesMut::from(error);
        msg::ready_for_query(&mut b, self.local_tx_status());
        self.respond_synth(b.freeze());
    }

    fn extended_error(&mut self, error: bytes::Bytes) {
        // A batch the proxy answered in part cannot be replayed whole.
        self.drop_retry();
        self.respond_local(error);
        self.ignore_till_sync = true;
        // The backend has run part of this pipeline (or holds the transaction block): the error
        // must fail it there too, or its Sync would commit what ran before the error.
        if let Some(h) = self.held.as_mut()
            && (h.needs_sync || h.in_transaction())
            && !h.copy_in
        {
            h.wbuf.extend_from_slice(ABORT_PIPELINE);
            h.ops.push_back(Op::Abort);
            h.needs_sync = true;
        }
    }

    /// Describe of a statement while a BEGIN waits for its shard: answered on the default shard
    /// without starting the transaction there.
    pub(super) async fn describe_aside(&mut self, stmt: &Stmt) -> Result<(), SessionError> {
        let co = match self
            .checkout_on(crate::plan::Target::Primary, self.default_shard())
            .await
        {
            Ok(c) => c,
            Err((code, m)) => {
                self.local_error(code, &m);
                return Ok(());
            }
        };
        self.flush_early();
        let mut leg = crate::backend::leg::Leg::new(co);
        let mut out = bytes::BytesMut::new();
        self.write_prelude(&mut leg, &mut out);
        msg::parse_bytes(&mut out, "", &self.wire(&stmt.query), &stmt.param_types);
        msg::describe_or_close(&mut out, b'D', b'S', "");
        crate::protocol::pg::rows::sync(&mut out);
        let answer = async {
            leg.send(&out).await?;
            leg.skip_replay().await?;
            let mut frames = Vec::new();
            loop {
                let f = leg.frame().await?;
                match f.tag() {
                    b'Z' => return Ok::<_, std::io::Error>(frames),
                    b't' | b'T' | b'n' | b'E' => frames.push(f),
                    _ => {}
                }
            }
        }
        .await;
        match answer {
            Ok(frames) => {
                for f in frames {
                    if f.tag() == b'E' {
                        self.ignore_till_sync = true;
                    }
                    self.client.wbuf.extend_from_slice(f.raw());
                }
            }
            Err(e) => {
                leg.mark_broken();
                self.local_error(
                    SqlState::CONNECTION_FAILURE,
                    &format!("describing the statement failed: {e}"),
                );
            }
        }
        Ok(())
    }

    /// A local answer in an extended-protocol batch: queued behind what the held backend owes,
    /// or kept for the next write when none is held.
    pub(super) fn answer_local(&mut self, b: &[u8]) {
        match self.held.as_mut() {
            Some(h) => h
                .ops
                .push_back(super::state::Op::Synth(bytes::Bytes::copy_from_slice(b))),
            None => self.early.extend_from_slice(b),
        }
    }

    /// Describe, Execute or Close of the portal the proxy answers itself; `false` if `name` is
    /// another portal.
    pub(super) fn on_local_portal(&mut self, kind: u8, name: &str) -> bool {
        let Some((p, local)) = &mut self.local_portal else {
            return false;
        };
        if p != name {
            return false;
        }
        let mut b = bytes::BytesMut::new();
        match (kind, local) {
            (b'D', LocalPortal::Tag(_)) => b.extend_from_slice(&msg::empty(b'n')),
            (b'D', LocalPortal::Ids { column, format, .. }) => super::ids::describe(&mut b, column, *format),
            (b'D', LocalPortal::Signal { column, format, .. }) => super::signal::describe(&mut b, column, *format),
            (b'E', LocalPortal::Signal { value, format, .. }) => match value.take() {
                Some(v) => super::signal::write_row(&mut b, v, *format),
                None => msg::command_complete(&mut b, "SELECT 0"),
            },
            (b'E', LocalPortal::Tag(tag)) => msg::command_complete(&mut b, tag),
            // A portal runs once: executing it again gives no rows, never the same IDs twice.
            (b'E', LocalPortal::Ids { ids, format, .. }) => {
                super::ids::write_rows(&mut b, &std::mem::take(ids), *format)
            }
            _ => {
                b.extend_from_slice(&msg::empty(b'3'));
                self.local_portal = None;
            }
        }
        self.answer_local(&b);
        true
    }

    /// An answer in order with whatever the held backend still owes (or at once without one).
    pub(super) fn respond_synth(&mut self, b: bytes::Bytes) {
        match self.held.as_mut() {
            // Queued answers go out when the backend answers what precedes them; with nothing
            // owed, nothing would come to carry them.
            Some(h) if !h.ops.is_empty() => h.ops.push_back(super::state::Op::Synth(b)),
            Some(_) => self.client.wbuf.extend_from_slice(&b),
            None => {
                self.flush_early();
                self.client.wbuf.extend_from_slice(&b);
            }
        }
    }
}

/// The SQLSTATE of a text the session cannot read: bad bytes (22021, as the server reports them), or
/// an encoding shardwire cannot convert (0A000).
pub(super) fn text_error_code(message: &str) -> SqlState {
    if message.starts_with("invalid byte sequence") {
        SqlState::CHARACTER_NOT_IN_REPERTOIRE
    } else {
        SqlState::FEATURE_NOT_SUPPORTED
    }
}

/// Bind of the unnamed portal to statement "sw_abort", a name no backend statement can have (the
/// proxy names them `sw_` and 16 hex digits; clients' names never reach a backend): an error on
/// any server.
const ABORT_PIPELINE: &[u8] = b"B\0\0\0\x14\0sw_abort\0\0\0\0\0\0\0";

#[cfg(test)]
mod tests {
    #[test]
    fn the_abort_message_is_one_well_formed_bind() {
        let mut b = bytes::BytesMut::from(super::ABORT_PIPELINE);
        let f = crate::protocol::pg::codec::decode_frame(&mut b, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(b.is_empty());
        assert_eq!(f.tag(), b'B');
        let bind = crate::protocol::pg::messages::parse_bind(f.body()).unwrap();
        assert_eq!((bind.portal, bind.statement), ("", "sw_abort"));
        assert_eq!(bind.rest, &[0, 0, 0, 0, 0, 0]);
    }
}
