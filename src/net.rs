//! Client and backend sockets for the data path, driven by readiness.
//!
//! tokio's `TcpStream` forgets that a socket is readable only when a read returns EAGAIN, so a
//! relay that reads once per wake-up pays one extra `recv` per message. On TCP a short read means
//! the receive queue was empty at that moment; `Socket` then clears the readiness itself
//! (`AsyncFd` does so only if no new event arrived since, so nothing is missed). That halves the
//! `recv` calls per transaction.

use std::io::{self, Write};
use std::os::fd::AsRawFd;

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

    /// Waits until readable, then reads what is there into `buf` (at least `chunk` bytes of room).
    /// `Ok(0)` is end of stream. Cancel-safe: nothing is read unless the future completes.
    pub async fn read_some(&self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            buf.reserve(chunk);
            let room = buf.capacity() - buf.len();
            match guard.try_io(|fd| recv_into(fd.get_ref().as_raw_fd(), buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until writable and writes as much of `data` as the socket takes.
    pub async fn write_some(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().write(data)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
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
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Ok(mut guard)) = self.fd.poll_read_ready(&mut cx) else {
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
