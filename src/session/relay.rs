//! The relay loop: one task per client, reading and writing the client and the held backend at
//! once (a pipelining client or a large COPY never deadlocks against a full socket), handing
//! each backend message to `responses`, and giving the backend back to its pool when the
//! transaction is over.

use std::future::Future;
use std::task::Poll;

use bytes::{Buf, BytesMut};

use super::client::SessionError;
use super::state::Op;
use super::{Ending, Flow, Session};
use crate::config::PoolMode;
use crate::protocol::pg::codec::frame_len;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::sqlstate::SqlState;

/// Stop reading one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Buffers that grew past this for a large result are replaced when empty, so idle clients stay small.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Backend messages are trusted to be well-formed, but not unboundedly large.
const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// Room made in a read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

enum Event {
    ClientRead(usize),
    ClientWrote(usize),
    BackendRead(std::io::Result<usize>),
    BackendWrote(std::io::Result<usize>),
}

impl Session {
    /// Serves the client until it leaves. The held backend, if any, goes back to its pool only
    /// when nothing is left on it; otherwise it is closed.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.relay().await;
        self.abandon_parked();
        if let Some(mut h) = self.held.take()
            && (!h.is_free() || self.pinned.is_some())
        {
            h.checkout.conn.broken = true;
            // After the server's FATAL there is nothing left running to cancel.
            if !self.told() && h.ops.iter().any(|o| !matches!(o, Op::Synth(_))) {
                // A statement is still running for a client that is gone: closing the connection
                // alone would leave it running (holding its locks) until it next writes.
                let node = h.checkout.node.clone();
                let (pid, secret) = (h.checkout.conn.pid, h.checkout.conn.secret);
                tokio::spawn(async move {
                    if let Err(e) = crate::backend::conn::send_cancel(&node.config, pid, secret).await {
                        tracing::warn!(node = %node.config.name, error = %e, "could not cancel a left client's statement");
                    }
                });
            }
        }
        if let Err(e) = &result
            && let Some((code, m)) = e.fatal_message()
        {
            self.client.fatal(code, &m).await;
        }
        self.shared.clients.remove(self.handle.pid);
        match result {
            Err(SessionError::Gone) => Ok(()),
            other => other,
        }
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        loop {
            if self.ended_and_said() {
                let _ = self.client.flush().await;
                return Err(SessionError::Gone);
            }
            if let Some(Ending::Tell(..)) = self.ending
                && let Some(Ending::Tell(code, m)) = self.ending.take()
            {
                return Err(SessionError::Fatal(code, m));
            }
            if let Flow::Terminate = self.drain_client().await? {
                let _ = self.client.flush().await;
                return Ok(());
            }
            // Write at once what the last step produced; the socket is almost always writable, so
            // a trip through `wait` would only cost a wake-up.
            if self.held.as_ref().is_some_and(|h| !h.wbuf.is_empty()) {
                self.write_backend();
            }
            if !self.client.wbuf.is_empty() {
                self.write_client()?;
            }
            // Messages left behind when the backend's send buffer passed the high-water mark
            // bring no socket event of their own: with the buffer drained, handle them first.
            if self.ended_and_said() {
                // Nothing more will come from the client to wake the loop: close now.
                continue;
            }
            if !self.client_frames_waiting() {
                self.step().await?;
            }
            self.drain_backend();
            self.maybe_release();
        }
    }

    /// The session has ended (a FATAL error) and the client has been given everything owed
    /// before it.
    fn ended_and_said(&self) -> bool {
        self.told()
            && self
                .held
                .as_ref()
                .is_none_or(|h| !h.ops.iter().any(|o| matches!(o, Op::Synth(_))))
    }

    /// The client has been given the FATAL error its session ends with.
    pub(super) fn told(&self) -> bool {
        matches!(self.ending, Some(Ending::Told))
    }

    /// The session ends with this FATAL error, unless it is already ending.
    pub(super) fn end_with(&mut self, code: SqlState, message: String) {
        self.ending.get_or_insert(Ending::Tell(code, message));
    }

    fn client_frames_waiting(&self) -> bool {
        if self.told() {
            // Nothing more is read from a session that has ended: wait for what it is still owed.
            return false;
        }
        if self.stalled.is_some() {
            // A stalled message is handled again as soon as what it waits for is there: no
            // backend held (it was released, or the message stalled to start over), or, to move
            // a transaction, the held one quiet.
            return self.held.as_ref().is_none_or(|h| self.switch_wait && h.quiet());
        }
        if self.script.is_some() {
            // The next statement of a query string starts once the one before has answered.
            return self.held.as_ref().is_none_or(|h| h.quiet());
        }
        if !self.replay.is_empty() {
            return self.held.as_ref().is_none_or(|h| h.wbuf.len() <= HIGH_WATER);
        }
        self.held.as_ref().is_none_or(|h| h.wbuf.len() <= HIGH_WATER) && self.client.has_frame()
    }

    /// Handles every whole client message buffered, unless one is stalled or the backend is
    /// backed up.
    async fn drain_client(&mut self) -> Result<Flow, SessionError> {
        loop {
            // A session that has ended reads nothing more.
            if self.told() || self.held.as_ref().is_some_and(|h| h.wbuf.len() > HIGH_WATER) {
                return Ok(Flow::Continue);
            }
            let frame = match self.stalled.take() {
                // Waiting for the held connection to be released, or, to move the transaction
                // to another shard, to be quiet.
                Some(f) if self.held.as_ref().is_some_and(|h| !(self.switch_wait && h.quiet())) => {
                    self.stalled = Some(f);
                    return Ok(Flow::Continue);
                }
                Some(f) => {
                    self.switch_wait = false;
                    f
                }
                // Boxed, as every rare path: its future would otherwise be part of this loop's.
                None if self.script.is_some() => match Box::pin(self.script_next()).await? {
                    super::script::Next::Frame(f) => f,
                    super::script::Next::Wait => return Ok(Flow::Continue),
                    super::script::Next::Ended => continue,
                },
                None => match self.replay.pop_front() {
                    Some(f) => f,
                    None => match self.client.try_frame()? {
                        Some(f) => f,
                        None => return Ok(Flow::Continue),
                    },
                },
            };
            // Here rather than in `on_client`: a future around every message's would cost a copy.
            let tag = frame.tag();
            self.keep_for_retry(&frame);
            let flow = self.on_client(frame).await?;
            self.handled(tag, matches!(flow, Flow::Stall(_)));
            match flow {
                Flow::Continue => {}
                Flow::Stall(f) => {
                    self.stalled = Some(f);
                    return Ok(Flow::Continue);
                }
                Flow::Terminate => return Ok(Flow::Terminate),
            }
        }
    }

    /// Waits for the first socket that can make progress and does that read or write.
    ///
    /// The sockets are polled in place, in priority order (writes first, so output never piles
    /// up behind input): no future is built per wait and no waiter list joined and left.
    async fn step(&mut self) -> Result<(), SessionError> {
        if self.handle.kill.is_cancelled() {
            return Err(Session::terminated_error());
        }
        let shutting_down = self.held.is_none() && self.stalled.is_none();
        let nothing_owed = self.held.as_ref().is_none_or(|h| h.ops.is_empty());
        let want_client_read = self.stalled.is_none() && self.held.as_ref().is_none_or(|h| h.wbuf.len() <= HIGH_WATER);
        let want_backend_read = self.client.wbuf.len() <= HIGH_WATER;
        let sendable = self.client_sendable();
        let want_client_write = sendable > 0 || self.client.sock.wants_write();
        let client = &mut self.client;
        let mut backend = self.held.as_mut().map(|h| {
            let conn: &mut crate::backend::BackendConn = &mut h.checkout.conn;
            (&conn.stream, &mut conn.rbuf, &h.wbuf)
        });
        let shutdown = &mut self.shutdown;
        let handle = &self.handle;
        let event = std::future::poll_fn(|cx| {
            if want_client_write && let Poll::Ready(r) = client.sock.poll_write(cx, &client.wbuf[..sendable]) {
                return Poll::Ready(r.map(Event::ClientWrote).map_err(SessionError::from));
            }
            if let Some((stream, rbuf, wbuf)) = backend.as_mut() {
                if !wbuf.is_empty()
                    && let Poll::Ready(r) = stream.poll_write(cx, wbuf)
                {
                    return Poll::Ready(Ok(Event::BackendWrote(r)));
                }
                if want_backend_read && let Poll::Ready(r) = stream.poll_read(cx, rbuf, READ_CHUNK) {
                    return Poll::Ready(Ok(Event::BackendRead(r)));
                }
            }
            if want_client_read && let Poll::Ready(r) = client.sock.poll_read(cx, &mut client.rbuf, READ_CHUNK) {
                return Poll::Ready(r.map(Event::ClientRead).map_err(SessionError::from));
            }
            // Waited for only while nothing is owed (idle, or idle in a transaction whose locks
            // must go at once); a statement running when the client is terminated is cancelled
            // by the terminating session, and its answer wakes the loop, which sees the flag.
            if nothing_owed {
                handle.kill_waker.register(cx.waker());
                if handle.kill.is_cancelled() {
                    return Poll::Ready(Err(Session::terminated_error()));
                }
            }
            if shutting_down && shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(SessionError::Fatal(
                    SqlState::ADMIN_SHUTDOWN,
                    "shardwire is shutting down".into(),
                )));
            }
            if !(want_client_write || want_client_read || backend.is_some() || shutting_down) {
                return Poll::Ready(Err(SessionError::Fatal(
                    SqlState::SYSTEM_ERROR,
                    "internal error: session stalled with nothing to wait for".into(),
                )));
            }
            Poll::Pending
        })
        .await?;
        match event {
            Event::ClientRead(0) => return Err(SessionError::Gone),
            Event::ClientRead(_) => {}
            Event::ClientWrote(n) => self.client_written(n),
            Event::BackendRead(Ok(0)) => self.backend_lost("the server closed the connection"),
            Event::BackendRead(Ok(_)) => {}
            Event::BackendRead(Err(e)) | Event::BackendWrote(Err(e)) => self.backend_lost(&e.to_string()),
            Event::BackendWrote(Ok(n)) => self.backend_written(n),
        }
        Ok(())
    }

    fn write_client(&mut self) -> Result<(), SessionError> {
        let sendable = self.client_sendable();
        if sendable == 0 {
            return Ok(());
        }
        let n = self.client.sock.try_write(&self.client.wbuf[..sendable])?;
        self.client_written(n);
        Ok(())
    }

    fn client_written(&mut self, n: usize) {
        self.retry.sent(n);
        self.script_sent(n);
        let _ = self.client.wbuf.split_to(n);
        if self.client.wbuf.is_empty() && self.client.wbuf.capacity() > KEEP_CAPACITY {
            self.client.wbuf = BytesMut::new();
        }
    }

    fn write_backend(&mut self) {
        let Some(h) = self.held.as_mut() else { return };
        match h.checkout.conn.stream.try_write(&h.wbuf) {
            Ok(n) => self.backend_written(n),
            Err(e) => self.backend_lost(&e.to_string()),
        }
    }

    fn backend_written(&mut self, n: usize) {
        let Some(h) = self.held.as_mut() else { return };
        let _ = h.wbuf.split_to(n);
        if h.wbuf.is_empty() && h.wbuf.capacity() > KEEP_CAPACITY {
            h.wbuf = BytesMut::new();
        }
    }

    /// The backend connection died: the client gets a connection error for what was in flight
    /// and the session goes on; its next statement gets a fresh connection.
    pub(super) fn backend_lost(&mut self, why: &str) {
        let Some(mut h) = self.held.take() else { return };
        h.checkout.conn.broken = true;
        self.handle.set_backend(None);
        if self.try_again(&h, why) {
            // A read whose answer has not begun: the replica left the rotation now (not at the
            // next check) and the read is handled again, on another node.
            return;
        }
        let node = h.checkout.node.config.name.clone();
        tracing::warn!(client = self.handle.pid, %node, why, "backend connection lost");
        // The transaction is lost on this shard: its parts on the others go too.
        let spanning = self.multi_tx();
        self.abandon_parked();
        let session_state = self
            .pinned
            .or((self.runtime.config.server.pool_mode == PoolMode::Session).then_some("session pooling"));
        if let Some(reason) = session_state {
            // As PostgreSQL and PgBouncer do: the client's session was that connection.
            let m =
                format!("lost the connection to {node} that held this session's state ({reason}): {why}; reconnect");
            self.end_with(SqlState::CONNECTION_FAILURE, m);
            return;
        }
        let owed_ready = h.ops.iter().any(|o| matches!(o, Op::Query { .. } | Op::Sync));
        let owed_any = h.ops.iter().any(|o| !matches!(o, Op::SyncVars | Op::CaptureLsn { .. }));
        if owed_any {
            let m = format!("lost the connection to {node}: {why}; the transaction, if any, was rolled back");
            msg::error_response(&mut self.client.wbuf, Severity::Error, SqlState::CONNECTION_FAILURE, &m);
        }
        if h.in_transaction() || spanning {
            // The transaction is gone on the server. The client still thinks it is open: what it
            // sends next must not run on its own, outside any transaction (and commit there),
            // so the transaction stays failed until the client ends it, as after an error.
            self.tx_refused = true;
            self.pending_begin = None;
        }
        if owed_ready {
            let status = self.local_tx_status();
            msg::ready_for_query(&mut self.client.wbuf, status);
        } else if owed_any {
            self.ignore_till_sync = true;
        }
    }

    /// Handles every whole message the backend sent. They are read in place (no message is split
    /// off the buffer), then the buffer advances past them at once.
    fn drain_backend(&mut self) {
        let Some(h) = self.held.as_mut() else { return };
        let mut rbuf = std::mem::take(&mut h.checkout.conn.rbuf);
        let mut pos = 0;
        let mut missing = 0;
        let failed = loop {
            match frame_len(&rbuf[pos..], MAX_BACKEND_MESSAGE) {
                Ok(Some(n)) if rbuf.len() - pos >= n => {
                    self.on_backend(&rbuf[pos..pos + n]);
                    pos += n;
                    if self.held.is_none() {
                        return;
                    }
                }
                Ok(Some(n)) => {
                    missing = n - (rbuf.len() - pos);
                    break None;
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        rbuf.advance(pos);
        // Room for the rest of a large message, so it arrives in few reads.
        rbuf.reserve(missing);
        if let Some(h) = self.held.as_mut() {
            h.checkout.conn.rbuf = rbuf;
        }
        if let Some(e) = failed {
            self.backend_lost(&format!("invalid message from server: {e}"));
        }
    }

    /// Gives the backend back once the transaction is over and nothing is owed (transaction
    /// pooling), after capturing the commit position for read-your-writes.
    fn maybe_release(&mut self) {
        let Some(h) = self.held.as_mut() else { return };
        if !h.is_free()
            || self.pinned.is_some()
            || !self.parked.is_empty()
            || self.runtime.config.server.pool_mode == PoolMode::Session
        {
            return;
        }
        // Without replicas every read is on the primary already: no position to wait for.
        if h.wrote && self.user.read_your_writes && !self.runtime.clusters[h.shard].replicas.is_empty() {
            h.wrote = false;
            msg::query(&mut h.wbuf, super::ryw::POSITION_SQL);
            h.checkout.conn.unnamed = None;
            h.ops.push_back(Op::CaptureLsn {
                lsn: None,
                shard: h.shard,
            });
            return;
        }
        if let Some(h) = self.held.take()
            && h.wbuf.capacity() <= KEEP_CAPACITY
        {
            self.spare = Some((h.ops, h.wbuf));
        }
        self.handle.set_backend(None);
        if self.client.wbuf.is_empty() && self.client.wbuf.capacity() > KEEP_CAPACITY {
            self.client.wbuf = BytesMut::new();
        }
        if self.client.rbuf.is_empty() && self.client.rbuf.capacity() > KEEP_CAPACITY {
            self.client.rbuf = BytesMut::new();
        }
    }
}
