//! A query string whose statements need different shards (`BEGIN; UPDATE a ...; UPDATE b ...;
//! COMMIT`, as `psql -c` and drivers' batch execution send it), run as one server runs it: the
//! statements one after another, each routed as if sent alone and started only once the one
//! before has answered; the string's own implicit transaction around those outside a block
//! (a BEGIN of the proxy's own, committed at the end on every shard it joined, with two-phase
//! commit when several wrote, or rolled back after an error); the rest skipped after an error;
//! one ReadyForQuery at the end. The statements' own ReadyForQuery messages are taken out of the
//! client's output, which is held back from the socket until it has been looked at. A string
//! refused only because reads of it are refused as written runs so too when their parts can run
//! first (`materialize`), each in its turn.

use std::collections::VecDeque;

use super::client::SessionError;
use super::{Flow, Session};
use crate::analyze::TxEffect;
use crate::plan::shard::{Params, ShardPlan};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};

/// A query string being run statement by statement.
pub(super) struct Script {
    /// Statements not yet started.
    rest: VecDeque<String>,
    /// The string's implicit transaction is open (a BEGIN of the proxy's own).
    implicit: bool,
    /// A statement failed: the rest are skipped.
    failed: bool,
    /// The client's output up to here has been looked at: whole messages, its ReadyForQuery
    /// messages removed. Nothing past it is sent.
    scanned: usize,
}

/// What the script gives the session's message loop next.
pub(super) enum Next {
    /// Handle this statement, as if the client had sent it.
    Frame(Frame),
    /// The statement before is still answering.
    Wait,
    /// The string is done and answered.
    Ended,
}

impl Session {
    /// A query string refused because statements of it are refused as written, every one of
    /// which has parts that, run first, make it answerable: it runs statement by statement
    /// (`script`), each refused one then with its parts run first, in the string's transaction
    /// (a statement that still fails rolls back the ones before, as on one server).
    pub(super) fn script_with_parts_first(&mut self, sql: &str) -> bool {
        // One statement (a `;` inside a literal) would come back here as the same string.
        let Some(script) = crate::analyze::script::split(sql).filter(|s| s.statements.len() > 1) else {
            return false;
        };
        let map = self.runtime.config.map.clone();
        let mut any = false;
        for stmt in &script.statements {
            let shape = self.shared.shapes.get(stmt, &map);
            if let ShardPlan::Refuse(_) = crate::plan::shard::plan(&shape, &map, &Params::default()) {
                let facts = self.facts_of(stmt);
                if self.may_materialize(stmt, &facts).is_none() {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    /// Starts running the query string `sql` (already known to hold several statements) one
    /// statement at a time, once what the held connection owes has been answered.
    pub(super) fn start_script(&mut self, f: &Frame, sql: &str) -> Flow {
        if self.pinned.is_some() {
            self.refuse(
                false,
                "a query string whose statements need different shards, in a session pinned to one connection \
                 (temporary tables, LISTEN, session advisory locks): send the statements one at a time",
            );
            return Flow::Continue;
        }
        let Some(script) = crate::analyze::script::split(sql) else {
            self.refuse(
                false,
                "a query string whose statements need different shards and that cannot be cut into its statements: \
                 send the statements one at a time",
            );
            return Flow::Continue;
        };
        if script.copy_in {
            self.refuse(
                false,
                "COPY FROM STDIN in a query string whose statements need different shards: send the COPY on its own",
            );
            return Flow::Continue;
        }
        if let Some(h) = self.held.as_ref()
            && !h.quiet()
        {
            // Earlier answers must reach the client as they are, before any is taken apart.
            self.switch_wait = true;
            return Flow::Stall(f.clone());
        }
        self.shared.stats.record_plan("statements");
        self.script = Some(Box::new(Script {
            rest: script.statements.into(),
            implicit: false,
            failed: false,
            scanned: self.client.wbuf.len(),
        }));
        Flow::Continue
    }

    /// The next step of the script under way.
    pub(super) async fn script_next(&mut self) -> Result<Next, SessionError> {
        if self.held.as_ref().is_some_and(|h| !h.quiet()) {
            return Ok(Next::Wait);
        }
        self.script_scan();
        loop {
            let Some(s) = self.script.as_mut() else {
                return Ok(Next::Ended);
            };
            if s.failed {
                break;
            }
            let Some(text) = s.rest.pop_front() else { break };
            let facts = self.facts_of(&text);
            let in_tx = self.in_transaction();
            let s = self.script.as_mut().expect("checked above");
            match facts.tx {
                TxEffect::Begin { .. } if s.implicit => {
                    // As on the server, BEGIN turns the string's implicit transaction into a block.
                    s.implicit = false;
                    msg::command_complete(&mut self.client.wbuf, "BEGIN");
                    self.script_scan();
                    continue;
                }
                TxEffect::End => s.implicit = false,
                TxEffect::None if !in_tx => {
                    s.implicit = true;
                    self.pending_begin = Some("BEGIN".into());
                    self.tx_begin = Some("BEGIN".into());
                    self.tx_read_only = false;
                }
                _ => {}
            }
            let mut raw = bytes::BytesMut::new();
            msg::query_bytes(&mut raw, &self.wire(&text));
            return Ok(Next::Frame(Frame::from_raw(raw.freeze())));
        }
        let s = self.script.take().expect("checked above");
        let status = if s.implicit {
            let outcome = Box::pin(self.finish_multi(s.failed)).await;
            self.flush_early();
            if let Err((code, m)) = outcome {
                msg::error_response(&mut self.client.wbuf, Severity::Error, code, &m);
            }
            b'I'
        } else {
            self.script_status()
        };
        msg::ready_for_query(&mut self.client.wbuf, status);
        Ok(Next::Ended)
    }

    /// The transaction status after the string, as the server would report it.
    fn script_status(&self) -> u8 {
        if self.tx_refused || self.held.as_ref().is_some_and(|h| h.tx_status == b'E') {
            b'E'
        } else {
            self.local_tx_status()
        }
    }

    /// Looks at the client's output written since the last look (see [`scan`]).
    pub(super) fn script_scan(&mut self) {
        if let Some(s) = self.script.as_mut() {
            scan(&mut self.client.wbuf, s);
        }
    }

    /// How much of the client's output may be sent: while a script runs, what has been looked at.
    pub(super) fn client_sendable(&mut self) -> usize {
        let len = self.retry.sendable(self.client.wbuf.len());
        match &self.script {
            Some(_) => {
                self.script_scan();
                self.script.as_ref().map_or(len, |s| len.min(s.scanned))
            }
            None => len,
        }
    }

    /// `n` bytes from the front of the client's send buffer were sent.
    pub(super) fn script_sent(&mut self, n: usize) {
        if let Some(s) = self.script.as_mut() {
            s.scanned = s.scanned.saturating_sub(n);
        }
    }

    /// Sends the client's whole output now (a long result streamed mid-statement).
    pub(super) async fn flush_client(&mut self) -> Result<(), SessionError> {
        flush(&mut self.client, self.script.as_deref_mut()).await
    }
}

/// Looks at the client's output `out` written since the script's last look: ReadyForQuery
/// messages are taken out, an error marks the script failed.
fn scan(out: &mut bytes::BytesMut, s: &mut Script) {
    s.scanned = s.scanned.min(out.len());
    while out.len() - s.scanned >= 5 {
        let at = s.scanned;
        let len = u32::from_be_bytes([out[at + 1], out[at + 2], out[at + 3], out[at + 4]]) as usize;
        let end = at + 1 + len;
        if end > out.len() {
            break;
        }
        match out[at] {
            b'Z' => {
                let tail = out.split_off(end);
                out.truncate(at);
                out.unsplit(tail);
            }
            tag => {
                s.failed |= tag == b'E';
                s.scanned = end;
            }
        }
    }
}

/// Sends the client's whole output, after the script under way (if any) has looked at it.
pub(super) async fn flush(
    client: &mut super::client::ClientConn,
    script: Option<&mut Script>,
) -> Result<(), SessionError> {
    match script {
        Some(s) => {
            scan(&mut client.wbuf, s);
            client.flush().await.map_err(|_| SessionError::Gone)?;
            s.scanned = 0;
        }
        None => client.flush().await.map_err(|_| SessionError::Gone)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Script, scan};
    use crate::protocol::pg::messages as msg;

    #[test]
    fn ready_for_query_is_taken_out_and_errors_are_noticed() {
        let mut out = bytes::BytesMut::new();
        msg::command_complete(&mut out, "BEGIN");
        msg::ready_for_query(&mut out, b'T');
        let before = out.len();
        msg::command_complete(&mut out, "UPDATE 1");
        msg::ready_for_query(&mut out, b'T');
        let mut s = Script {
            rest: Default::default(),
            implicit: false,
            failed: false,
            scanned: before,
        };
        scan(&mut out, &mut s);
        let mut want = bytes::BytesMut::new();
        msg::command_complete(&mut want, "BEGIN");
        msg::ready_for_query(&mut want, b'T');
        msg::command_complete(&mut want, "UPDATE 1");
        assert_eq!(out, want, "only what came after the start is looked at");
        assert_eq!(s.scanned, out.len());
        assert!(!s.failed);
        msg::error_response(
            &mut out,
            msg::Severity::Error,
            crate::protocol::pg::sqlstate::SqlState::SYNTAX_ERROR,
            "x",
        );
        msg::ready_for_query(&mut out, b'E');
        // A message not yet whole is left for the next look.
        out.extend_from_slice(b"C\0\0");
        scan(&mut out, &mut s);
        assert!(s.failed);
        assert_eq!(&out[s.scanned..], b"C\0\0");
        assert!(!out[..s.scanned].ends_with(b"Z\0\0\0\x05E"));
    }
}
