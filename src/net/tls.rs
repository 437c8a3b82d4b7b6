//! TLS for client connections: rustls driven by hand over the readiness-driven [`Socket`].
//!
//! tokio-rustls would need the socket as an `AsyncRead + AsyncWrite` owned by one future, while
//! the relay reads and writes the client at once through `&self` polls; rustls's own
//! non-blocking API (`read_tls` / `process_new_packets` / `write_tls`) fits that loop directly,
//! so the crypto and the protocol stay rustls's and only the plumbing is ours.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use rustls::ServerConnection;

use super::Socket;

/// A server-side TLS session over a client socket.
pub struct TlsSocket {
    sock: Socket,
    // std Mutex: the relay's read and write polls both need the TLS state; neither holds it across
    // an await, so it is never contended within a session.
    conn: Mutex<ServerConnection>,
}

impl TlsSocket {
    /// Runs the TLS handshake as the server on `sock` (after the client's SSLRequest was answered
    /// with 'S').
    pub async fn accept(sock: Socket, config: Arc<rustls::ServerConfig>) -> io::Result<TlsSocket> {
        Self::accept_after(sock, config, &[]).await
    }

    /// As [`TlsSocket::accept`], with the first bytes of the handshake already read from the
    /// socket (a MySQL client starts TLS right after its SSLRequest, unanswered, so they may
    /// arrive in the same read).
    pub async fn accept_after(sock: Socket, config: Arc<rustls::ServerConfig>, early: &[u8]) -> io::Result<TlsSocket> {
        let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut rest = early;
        while !rest.is_empty() {
            if conn.read_tls(&mut rest)? == 0 {
                break;
            }
            conn.process_new_packets().map_err(io::Error::other)?;
        }
        let t = TlsSocket {
            sock,
            conn: Mutex::new(conn),
        };
        std::future::poll_fn(|cx| t.poll_handshake(cx)).await?;
        Ok(t)
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poll_handshake(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut c = self.lock();
        loop {
            ready!(self.poll_flush(cx, &mut c))?;
            if !c.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_read_tls(cx, &mut c))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Reads decrypted bytes into `buf`; `Ready(Ok(0))` when the client has closed.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut, chunk: usize) -> Poll<io::Result<usize>> {
        let mut c = self.lock();
        loop {
            let state = c.process_new_packets().map_err(io::Error::other)?;
            let available = state.plaintext_bytes_to_read().min(chunk.max(1));
            if available > 0 {
                let start = buf.len();
                buf.resize(start + available, 0);
                let n = c.reader().read(&mut buf[start..])?;
                buf.truncate(start + n);
                return Poll::Ready(Ok(n));
            }
            if state.peer_has_closed() {
                return Poll::Ready(Ok(0));
            }
            if ready!(self.poll_read_tls(cx, &mut c))? == 0 {
                // Closed without close_notify: to the relay it is the same end of stream.
                return Poll::Ready(Ok(0));
            }
        }
    }

    /// Sends the records still pending, then encrypts as much of `data` as the TLS buffer takes
    /// and sends what the socket takes now. Returns how much of `data` was taken.
    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut c = self.lock();
        ready!(self.poll_flush(cx, &mut c))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = c.writer().write(data)?;
        while c.wants_write() {
            match c.write_tls(&mut self.sock.fd.get_ref()) {
                Ok(_) => {}
                // The rest goes out on the next poll, once the socket is writable again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Protocol version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub fn description(&self) -> String {
        let c = self.lock();
        let version = c.protocol_version().map_or_else(|| "?".into(), |v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite()));
        format!("{version} {suite}")
    }

    /// Tells the client the session ends (close_notify) and sends what is pending, so a client
    /// reading on sees the end of the stream rather than a truncated one.
    pub async fn close(&self) {
        self.lock().send_close_notify();
        let _ = std::future::poll_fn(|cx| {
            let mut c = self.lock();
            self.poll_flush(cx, &mut c)
        })
        .await;
    }

    /// Whether encrypted records are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        self.lock().wants_write()
    }

    fn poll_flush(&self, cx: &mut Context<'_>, c: &mut ServerConnection) -> Poll<io::Result<()>> {
        while c.wants_write() {
            let mut guard = ready!(self.sock.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| c.write_tls(&mut fd.get_ref())) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext from the socket into the TLS state; `Ready(Ok(0))` at end of stream.
    fn poll_read_tls(&self, cx: &mut Context<'_>, c: &mut ServerConnection) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.sock.fd.poll_read_ready(cx))?;
            match guard.try_io(|fd| c.read_tls(&mut fd.get_ref())) {
                Ok(Ok(n)) => {
                    if n > 0
                        && let Err(e) = c.process_new_packets()
                    {
                        // Tell the client why (a TLS alert) before giving up on it.
                        let _ = c.write_tls(&mut self.sock.fd.get_ref());
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
