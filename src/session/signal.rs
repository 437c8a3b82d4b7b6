//! `pg_terminate_backend(pid)` and `pg_cancel_backend(pid)` for the process ids shardwire gives its
//! clients at login (BackendKeyData, SHOW CLIENTS). Under transaction pooling a client has no
//! server process of its own, so the server cannot act on that id: the proxy does, as the server
//! would for one of its own processes (terminate: the client is closed with 57P01, its running
//! statement cancelled; cancel: its running statement is cancelled). Any other pid (one read from
//! `pg_stat_activity`, say) is the server's, and the call goes to the server unchanged.

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::analyze::{Count, ProxyCall};
use crate::app::clients::ClientHandle;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::{self, BindParts};
use crate::protocol::pg::sqlstate::SqlState;

/// PostgreSQL's message to a terminated session.
const TERMINATED: &str = "terminating connection due to administrator command";

/// What a signal call did.
pub(super) enum Signalled {
    /// Sent: the call answers this (`true`).
    Done(bool),
    /// Not allowed, or the call cancelled itself: the error to report.
    Failed(SqlState, String),
    /// The session terminated itself: it ends with a FATAL error.
    Itself,
}

/// The result column's name, as the server names it.
pub(super) fn column(terminate: bool) -> &'static str {
    if terminate {
        "pg_terminate_backend"
    } else {
        "pg_cancel_backend"
    }
}

/// RowDescription of the one boolean column.
pub(super) fn describe(out: &mut BytesMut, column: &'static str, format: i16) {
    rows::one_column(out, column, oid::BOOL, 1, format);
}

/// The one row and CommandComplete.
pub(super) fn write_row(out: &mut BytesMut, value: bool, format: i16) {
    let cell = match (format, value) {
        (1, v) => Bytes::from(vec![u8::from(v)]),
        (_, true) => Bytes::from_static(b"t"),
        (_, false) => Bytes::from_static(b"f"),
    };
    rows::data_row(out, &[Some(cell)], 1);
    msg::command_complete(out, "SELECT 1");
}

/// The pid a call names: as written, or its Bind parameter (text, or binary int2/int4/int8).
fn pid_of(pid: &Count, bind: Option<&BindParts>) -> Option<i32> {
    match pid {
        Count::Lit(n) => i32::try_from(*n).ok(),
        Count::Param(i) => {
            let bind = bind?;
            let raw = bind.values.get(*i).cloned().flatten()?;
            if bind.param_format(*i) == 0 {
                return std::str::from_utf8(&raw).ok()?.trim().parse().ok();
            }
            match raw.len() {
                2 => Some(i16::from_be_bytes([raw[0], raw[1]]).into()),
                4 => Some(i32::from_be_bytes(raw[..4].try_into().ok()?)),
                8 => i32::try_from(i64::from_be_bytes(raw[..8].try_into().ok()?)).ok(),
                _ => None,
            }
        }
    }
}

impl Session {
    /// The client a signal call names, when its pid is one shardwire gave out; `None` for any
    /// other call or pid (the server's to answer).
    pub(super) fn signal_target(
        &self,
        call: &ProxyCall,
        bind: Option<&BindParts>,
    ) -> Option<(bool, std::sync::Arc<ClientHandle>)> {
        let ProxyCall::Signal { terminate, pid } = call else {
            return None;
        };
        let target = self.shared.clients.get(pid_of(pid, bind)?)?;
        Some((*terminate, target))
    }

    /// Sends the signal, with the server's rule: a client may signal sessions of its own user.
    pub(super) fn signal(&mut self, terminate: bool, target: &ClientHandle) -> Signalled {
        if target.pid == self.handle.pid {
            if terminate {
                return Signalled::Itself;
            }
            // The running statement is this call: as on the server, it is what gets cancelled.
            return Signalled::Failed(
                SqlState::QUERY_CANCELED,
                "canceling statement due to user request".into(),
            );
        }
        if target.user != self.user.name {
            let what = if terminate { "terminate" } else { "cancel" };
            return Signalled::Failed(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to {what} process {}: it belongs to user \"{}\"",
                    target.pid, target.user
                ),
            );
        }
        if terminate {
            target.terminate();
        }
        // Cancelling its running statement also wakes a terminated session that waits for one.
        let (shared, pid, secret) = (self.shared.clone(), target.pid, target.secret);
        tokio::spawn(async move { shared.clients.cancel(pid, secret).await });
        Signalled::Done(true)
    }

    /// A simple Query that is a signal call for one of shardwire's clients, answered here.
    pub(super) fn answer_signal_query(&mut self, terminate: bool, target: &ClientHandle) {
        let mut b = BytesMut::new();
        match self.signal(terminate, target) {
            Signalled::Itself => return self.end_terminated(),
            Signalled::Done(v) => {
                describe(&mut b, column(terminate), 0);
                write_row(&mut b, v, 0);
            }
            Signalled::Failed(code, m) => {
                // As a server error: inside a transaction block, the transaction fails.
                msg::error_response(&mut b, Severity::Error, code, &m);
                return self.fail_with_frame(&b, false);
            }
        }
        msg::ready_for_query(&mut b, self.local_tx_status());
        self.respond_synth(b.freeze());
    }

    /// Bind of a prepared signal call for one of shardwire's clients: signalled now, answered at
    /// Execute.
    pub(super) fn bind_signal(&mut self, portal: &str, terminate: bool, target: &ClientHandle, parts: &BindParts) {
        match self.signal(terminate, target) {
            Signalled::Itself => self.end_terminated(),
            Signalled::Done(v) => {
                self.local_portal = Some((
                    portal.to_owned(),
                    super::local_portal::LocalPortal::Signal {
                        column: column(terminate),
                        value: Some(v),
                        format: rows::format_at(&parts.result_formats, 0),
                    },
                ));
                self.answer_local(&msg::empty(b'2'));
            }
            Signalled::Failed(code, m) => self.local_error(code, &m),
        }
    }

    /// The session terminated itself: the client gets the server's FATAL error, then the
    /// connection closes once what it was owed before has been written.
    pub(super) fn end_terminated(&mut self) {
        let mut b = BytesMut::new();
        msg::error_response(&mut b, Severity::Fatal, SqlState::ADMIN_SHUTDOWN, TERMINATED);
        self.respond_synth(b.freeze());
        self.ending = Some(super::Ending::Told);
        // Local answers queued behind nothing the backend owes would wait for a later backend
        // message (the client's Sync) that is never read now: they go out at once.
        if let Some(h) = self.held.as_mut()
            && h.ops.iter().all(|o| matches!(o, super::state::Op::Synth(_)))
        {
            for op in h.ops.drain(..) {
                if let super::state::Op::Synth(bytes) = op {
                    self.client.wbuf.extend_from_slice(&bytes);
                }
            }
        }
    }

    /// The FATAL error of a session another client terminated.
    pub(super) fn terminated_error() -> super::client::SessionError {
        super::client::SessionError::Fatal(SqlState::ADMIN_SHUTDOWN, TERMINATED.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(format: i16, value: &[u8]) -> BindParts {
        BindParts {
            param_formats: vec![format],
            values: vec![Some(Bytes::copy_from_slice(value))],
            result_formats: vec![],
        }
    }

    #[test]
    fn pids_are_read_as_written_and_from_parameters_in_every_format() {
        assert_eq!(pid_of(&Count::Lit(42), None), Some(42));
        assert_eq!(pid_of(&Count::Lit(1 << 40), None), None);
        assert_eq!(pid_of(&Count::Param(0), Some(&bind(0, b" 77 "))), Some(77));
        assert_eq!(pid_of(&Count::Param(0), Some(&bind(1, &7i16.to_be_bytes()))), Some(7));
        assert_eq!(pid_of(&Count::Param(0), Some(&bind(1, &99i32.to_be_bytes()))), Some(99));
        assert_eq!(
            pid_of(&Count::Param(0), Some(&bind(1, &123i64.to_be_bytes()))),
            Some(123)
        );
        assert_eq!(
            pid_of(&Count::Param(0), Some(&bind(1, &(1i64 << 40).to_be_bytes()))),
            None
        );
        assert_eq!(pid_of(&Count::Param(1), Some(&bind(0, b"5"))), None);
        assert_eq!(pid_of(&Count::Param(0), None), None);
    }

    #[test]
    fn rows_are_the_servers_booleans() {
        let mut b = BytesMut::new();
        write_row(&mut b, true, 0);
        assert_eq!(&b[..11], b"D\0\0\0\x0b\0\x01\0\0\0\x01");
        assert_eq!(b[11], b't');
        let mut b = BytesMut::new();
        write_row(&mut b, true, 1);
        assert_eq!(b[11], 1);
    }
}
