//! Client and backend sockets for the data path, driven by readiness.
//!
//! tokio's `TcpStream` forgets that a socket is readable only when a read returns EAGAIN, so a
//! relay that reads once per wake-up pays one extra `recv` per message. On TCP a short read means
//! the receive queue was empty at that moment; `Socket` then clears the readiness itself
//! (`AsyncFd` does so only if no new event arrived since, so nothing is missed). That halves the
//! `recv` calls per transaction.
//!
//! The relay polls its sockets directly (`poll_read`, `poll_write`) instead of building a future
//! per wait: the runtime then keeps one waker slot per direction and socket, with no waiter list
//! to join and leave on every transaction. [`Stream`] is a client connection, plain or TLS
//! ([`tls`]).

pub mod accept;
pub mod tls;

use std::future::poll_fn;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::unix::AsyncFd;

/// A non-blocking TCP socket registered with the runtime.
pub struct Socket {
    fd: AsyncFd<std::net::TcpStream>,
}

impl Socket {
    /// Takes over a tokio stream (it is deregistered and registered again here).
    pub fn from_tokio(s: tokio::net::TcpStream) -> io::Result<Socket> {
        let std = s.into_std()?;
        std.set_nonblocking(true)?;
        // SAFETY: the std stream owns its descriptor and `Socket` never hands it out, so it stays
        // open and the same for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register(std) }?;
        Ok(Socket { fd })
    }

    /// Reads what is there into `buf` (after making at least `chunk` bytes of room), or registers
    /// the task to be woken when something arrives. `Ready(Ok(0))` is end of stream.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut, chunk: usize) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            buf.reserve(chunk);
            let room = buf.capacity() - buf.len();
            match guard.try_io(|fd| recv_into(fd.get_ref().as_raw_fd(), buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // try_io cleared the readiness: the next poll registers the waker.
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes as much of `data` as the socket takes, or registers the task to be woken when it
    /// can take more.
    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until readable, then reads what is there into `buf` (at least `chunk` bytes of room).
    /// `Ok(0)` is end of stream. Cancel-safe: nothing is read unless the future completes.
    pub async fn read_some(&self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf, chunk)).await
    }

    /// Waits until writable and writes as much of `data` as the socket takes.
    pub async fn write_some(&self, data: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_write(cx, data)).await
    }

    /// Writes as much of `data` as the socket takes now; `Ok(0)` when it takes nothing.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self.fd.get_ref().write(data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.write_some(data).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// Whether anything arrived (data, or the peer closing) since the socket was last read dry.
    /// No system call unless the runtime has seen an event on it.
    pub fn has_input(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(mut guard)) = self.fd.poll_read_ready(&mut cx) else {
            return false;
        };
        let mut probe = [0u8; 1];
        // SAFETY: MSG_PEEK into a valid one-byte buffer on an open socket.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), probe.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            guard.clear_ready();
            return false;
        }
        true
    }
}

/// A client connection: plain TCP, or TLS after an accepted SSLRequest.
pub enum Stream {
    /// Unencrypted.
    Plain(Socket),
    /// TLS over the socket (boxed: the TLS state is large and most clients do not use it).
    Tls(Box<tls::TlsSocket>),
}

impl Stream {
    /// As [`Socket::poll_read`], with plaintext for a TLS stream.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut BytesMut, chunk: usize) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_read(cx, buf, chunk),
            Stream::Tls(t) => t.poll_read(cx, buf, chunk),
        }
    }

    /// As [`Socket::poll_write`]. A TLS stream first sends what it still holds encrypted, and
    /// takes `data` (possibly empty) only then.
    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_write(cx, data),
            Stream::Tls(t) => t.poll_write(cx, data),
        }
    }

    /// Whether bytes taken by a write are still waiting to go out (TLS records the socket did not
    /// take yet).
    pub fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.wants_write(),
        }
    }

    /// Writes what the socket takes now without waiting; `Ok(0)` when it takes nothing.
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write(data),
            Stream::Tls(t) => match t.poll_write(&mut Context::from_waker(std::task::Waker::noop()), data) {
                Poll::Ready(r) => r,
                Poll::Pending => Ok(0),
            },
        }
    }

    /// Reads what is there, waiting until something is. `Ok(0)` is end of stream.
    pub async fn read_some(&self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf, chunk)).await
    }

    /// Writes all of `data` and waits until it has left (for TLS, the records too).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() || self.wants_write() {
            let n = poll_fn(|cx| self.poll_write(cx, data)).await?;
            if n == 0 && !data.is_empty() {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends a TLS session cleanly (close_notify); nothing for plain TCP.
    pub async fn close(&self) {
        if let Stream::Tls(t) = self {
            t.close().await;
        }
    }

    /// Whether the client talks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TLS version and cipher suite in use, for SHOW CLIENTS; none for a plain connection.
    pub fn tls_description(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => Some(t.description()),
        }
    }
}

/// One `recv` into the spare capacity of `buf`.
fn recv_into(fd: std::os::fd::RawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `recv` writes at most `spare.len()` bytes into memory `buf` owns; exactly the `n`
    // bytes it reports are marked initialised below.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
