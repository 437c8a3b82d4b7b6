//! The client socket with its read and write buffers, and the session's error type.

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::protocol::pg::codec::decode_frame;
use crate::protocol::pg::messages::{Severity, error_response};
use crate::protocol::pg::sqlstate::SqlState;
use crate::protocol::pg::{Frame, ProtocolError};

/// Why a session ends early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error on the client side.
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent something that is not valid protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// The client closed the connection.
    #[error("client disconnected")]
    Gone,
    /// Refuse the client with a FATAL error and close (bad login, unknown database, ...).
    #[error("{1}")]
    Fatal(SqlState, String),
}

impl SessionError {
    /// The FATAL message the client gets before the connection closes, if any can be sent.
    pub fn fatal_message(&self) -> Option<(SqlState, String)> {
        match self {
            SessionError::Protocol(e) => Some((SqlState::PROTOCOL_VIOLATION, e.to_string())),
            SessionError::Fatal(code, m) => Some((*code, m.clone())),
            SessionError::Io(_) | SessionError::Gone => None,
        }
    }
}

/// A client connection after the startup packet: login, the admin console and the session relay
/// all use it.
pub struct ClientConn {
    /// The socket, plain or TLS (readiness-driven: see [`crate::net`]).
    pub sock: crate::net::Stream,
    /// Received and not yet handled.
    pub rbuf: BytesMut,
    /// To be sent.
    pub wbuf: BytesMut,
    /// Largest message accepted.
    pub max_message: usize,
    /// How many times [`ClientConn::flush`] sent the buffer: bytes held back in it (a replica
    /// read that may be tried again) are known not to have left while this stays the same.
    pub flushes: u64,
}

impl ClientConn {
    /// Wraps a socket, keeping bytes already read past the startup packet.
    pub fn new(stream: TcpStream, rbuf: BytesMut, max_message: usize) -> std::io::Result<ClientConn> {
        Ok(ClientConn {
            sock: crate::net::Stream::Plain(crate::net::Socket::from_tokio(stream)?),
            rbuf,
            wbuf: BytesMut::with_capacity(8192),
            max_message,
            flushes: 0,
        })
    }

    /// Runs the TLS handshake (the client's SSLRequest was answered 'S') and goes on encrypted.
    pub async fn into_tls(self, config: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<ClientConn> {
        let crate::net::Stream::Plain(sock) = self.sock else {
            return Err(std::io::Error::other("the connection is encrypted already"));
        };
        let tls = crate::net::tls::TlsSocket::accept(sock, config).await?;
        Ok(ClientConn {
            sock: crate::net::Stream::Tls(Box::new(tls)),
            ..self
        })
    }

    /// The next whole message in the read buffer, without reading.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        decode_frame(&mut self.rbuf, self.max_message)
    }

    /// A whole message (or a malformed header, which [`ClientConn::try_frame`] reports) waits in
    /// the read buffer.
    pub fn has_frame(&self) -> bool {
        match crate::protocol::pg::codec::frame_len(&self.rbuf, self.max_message) {
            Ok(Some(len)) => self.rbuf.len() >= len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Reads until a whole message is here. EOF is [`SessionError::Gone`].
    pub async fn read_frame(&mut self) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            if self.sock.read_some(&mut self.rbuf, 8192).await? == 0 {
                return Err(SessionError::Gone);
            }
        }
    }

    /// Sends everything buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.flushes += 1;
            self.sock.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends a FATAL error (best effort) and flushes.
    pub async fn fatal(&mut self, code: SqlState, message: &str) {
        error_response(&mut self.wbuf, Severity::Fatal, code, message);
        let _ = self.flush().await;
    }
}
