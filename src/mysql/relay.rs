//! The single-shard path: a command goes to the held connection and the server's response
//! frames go to the client as they arrive, untouched (no row is decoded); the frames are only
//! read far enough to know where the response ends and what status it leaves.

use super::ClientError;
use super::session::Session;
use crate::protocol::mysql::response::{Kind, Response};
use crate::protocol::mysql::{StatusFlags, code, err, put_frame};

/// Bytes queued for the client before they are sent while a response still streams.
const FLUSH_AT: usize = 256 * 1024;

/// How a relayed command went.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    /// The server answered with an error (part of a multi-statement may have run).
    pub failed: bool,
    /// The server connection failed.
    pub lost: bool,
    /// Some of the response reached the client (a retry is no longer possible).
    pub sent: bool,
    /// The last status flags.
    pub status: StatusFlags,
    /// Last insert id of the last OK.
    pub last_insert_id: u64,
    /// A prepare's server statement id, parameters and columns.
    pub prepared: Option<(u32, u16, u16)>,
}

impl Session {
    /// Relays `command` on the held connection; a connection lost before anything reached the
    /// client is reported by the caller (which may retry elsewhere), later ones here.
    pub async fn relay(&mut self, command: &[u8], kind: Kind) -> Result<Outcome, ClientError> {
        self.relay_as(command, kind, None).await
    }

    /// As [`Session::relay`]; a prepare response's statement id is replaced by `client_id`.
    pub async fn relay_as(
        &mut self,
        command: &[u8],
        kind: Kind,
        client_id: Option<u32>,
    ) -> Result<Outcome, ClientError> {
        let mut out = Outcome::default();
        let Some(h) = self.held.as_mut() else {
            self.error(code::SERVER_LOST, "HY000", "no server connection");
            out.failed = true;
            return Ok(out);
        };
        if let Err(e) = h.conn.write_packet(0, command).await {
            tracing::debug!(error = %e, "server connection failed");
            self.lost();
            out.lost = true;
            out.failed = true;
            return Ok(out);
        }
        let prev_in_tx = h.in_tx;
        let mut r = Response::new(kind);
        let mut last_seq = 0u8;
        let mut first = true;
        while let Some(h) = self.held.as_mut() {
            let frame = h.conn.frame().await;
            let (seq, mut payload) = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "server connection failed mid-response");
                    self.lost();
                    out.lost = true;
                    out.failed = true;
                    if out.sent {
                        // An ERR may stand in for the next row or result.
                        let msg = format!("Lost connection to the server during the query: {e}");
                        put_frame(
                            &mut self.client.wbuf,
                            last_seq.wrapping_add(1),
                            &err(code::SERVER_LOST, "HY000", &msg),
                        );
                    }
                    return Ok(out);
                }
            };
            let done = match r.feed(&payload) {
                Ok(d) => d,
                Err(e) => {
                    self.lost();
                    out.lost = true;
                    out.failed = true;
                    let msg = e.to_string();
                    put_frame(&mut self.client.wbuf, seq, &err(code::SERVER_LOST, "HY000", &msg));
                    out.sent = true;
                    return Ok(out);
                }
            };
            if first
                && let Some(id) = client_id
                && payload.first() == Some(&0)
                && payload.len() >= 5
            {
                payload[1..5].copy_from_slice(&id.to_le_bytes());
            }
            first = false;
            put_frame(&mut self.client.wbuf, seq, &payload);
            out.sent = true;
            last_seq = seq;
            if done {
                break;
            }
            if self.client.wbuf.len() >= FLUSH_AT
                && let Err(e) = self.client.flush().await
            {
                // The rest of the response is unread: the connection cannot serve anyone else.
                if let Some(h) = self.held.as_mut() {
                    h.conn.broken = true;
                }
                return Err(e);
            }
        }
        out.failed = r.failed;
        out.status = r.status;
        if !r.status_seen && prev_in_tx {
            // An ERR carries no status: the transaction is as it was (a statement's error leaves
            // it open; one that ended it shows in the next status, and holding on is harmless).
            out.status |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        out.last_insert_id = r.last_insert_id;
        out.prepared = r.prepared;
        Ok(out)
    }
}
