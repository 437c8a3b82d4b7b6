//! The MySQL front end: MySQL clients (the mariadb client, PyMySQL, mysql_async, sysbench) in
//! front of MySQL or MariaDB shards, on the same analysis, planning, merging and shard map as
//! the PostgreSQL front end ([`crate::session`]).
//!
//! Owned here: the listener and login ([`login`]), the per-client session ([`session`]: pooling
//! per transaction with the session's settings replayed, read/write split, transactions), the
//! single-shard relay that forwards a server's response frames untouched ([`relay`]), merged
//! scatter reads ([`scatter`]) and prepared statements kept per client and prepared again on
//! whichever server connection runs them ([`prepared`]).

mod broadcast;
mod ids;
mod login;
mod prepared;
mod query;
mod relay;
mod scatter;
mod session;
mod statements;
mod sync;
pub mod xa;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::app::Shared;
use crate::net::{Socket, Stream};
use crate::protocol::mysql::{MAX_FRAME, code, err, put_packet, take_frame};

/// Why a client's session ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; it was told so.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Terminated by an administrator (`pg_terminate_backend` of its id).
    #[error("connection killed")]
    Killed,
}

/// A client's socket with its read and write buffers.
pub struct ClientConn {
    stream: Stream,
    rbuf: BytesMut,
    /// Bytes waiting to be sent.
    pub wbuf: BytesMut,
    /// The sequence id the answer to the last packet starts with (1, unless it took several
    /// frames).
    pub reply_seq: u8,
    max_packet: usize,
}

impl ClientConn {
    fn new(stream: Stream, max_packet: usize) -> ClientConn {
        ClientConn {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            reply_seq: 1,
            max_packet,
        }
    }

    /// The next packet (continuation frames joined): its first sequence id and payload; `None`
    /// when the client closed the connection between packets.
    pub async fn packet(&mut self) -> Result<Option<(u8, BytesMut)>, ClientError> {
        let mut joined: Option<(u8, BytesMut)> = None;
        loop {
            let Some((seq, frame)) = self.frame().await? else {
                return match joined {
                    None => Ok(None),
                    Some(_) => Err(ClientError::Protocol("connection closed inside a packet".into())),
                };
            };
            let more = frame.len() == MAX_FRAME;
            self.reply_seq = seq.wrapping_add(1);
            let (first, mut data) = match joined.take() {
                None => (seq, frame),
                Some((first, mut data)) => {
                    data.extend_from_slice(&frame);
                    (first, data)
                }
            };
            if data.len() > self.max_packet {
                self.refuse(
                    code::PACKET_TOO_LARGE,
                    "08S01",
                    &format!(
                        "Got a packet bigger than 'max_allowed_packet' bytes ({})",
                        self.max_packet
                    ),
                )
                .await;
                return Err(ClientError::Protocol("packet over the size limit".into()));
            }
            if !more {
                data.truncate(data.len());
                return Ok(Some((first, std::mem::take(&mut data))));
            }
            joined = Some((first, data));
        }
    }

    async fn frame(&mut self) -> Result<Option<(u8, BytesMut)>, ClientError> {
        loop {
            if let Some(f) = take_frame(&mut self.rbuf) {
                return Ok(Some(f));
            }
            if let Some(len) = crate::protocol::mysql::frame_len(&self.rbuf)
                && len > self.max_packet + 4
            {
                self.refuse(
                    code::PACKET_TOO_LARGE,
                    "08S01",
                    "Got a packet bigger than 'max_allowed_packet' bytes",
                )
                .await;
                return Err(ClientError::Protocol("packet over the size limit".into()));
            }
            if self.stream.read_some(&mut self.rbuf, 16 * 1024).await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Protocol("connection closed inside a packet".into()))
                };
            }
        }
    }

    /// Queues a packet.
    pub fn put(&mut self, seq: &mut u8, payload: &[u8]) {
        put_packet(&mut self.wbuf, seq, payload);
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends an ERR packet (sequence id 1, as the answer to a command) and flushes, ignoring a
    /// client that is already gone.
    pub async fn refuse(&mut self, code: u16, state: &str, message: &str) {
        let mut seq = self.reply_seq;
        self.put(&mut seq, &err(code, state, message));
        let _ = self.flush().await;
    }
}

/// Accepts MySQL clients until `shutdown`; then sessions end after their current command, and
/// those still open after `server.shutdown_timeout` are cut off.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    tokio::spawn(xa::recover(
        shared.clone(),
        std::time::Duration::from_secs(10),
        shutdown.clone(),
    ));
    let ids = Arc::new(std::sync::atomic::AtomicU32::new(1));
    let grace_of = shared.clone();
    crate::net::accept::serve(
        listener,
        shutdown.clone(),
        move || grace_of.runtime.load().config.server.shutdown_timeout,
        move |stream, addr| {
            let shared = shared.clone();
            let soft = shutdown.clone();
            let id = ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if let Err(e) = handle(stream, id, shared, soft).await {
                    tracing::debug!(%addr, error = %e, "MySQL client session ended with an error");
                }
            }
        },
    )
    .await;
}

/// One MySQL client: its login, then its session until it ends or shutdown.
async fn handle(
    stream: TcpStream,
    id: u32,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let max = shared.runtime.load().config.server.max_message_size;
    let addr = stream.peer_addr()?;
    let client = ClientConn::new(Stream::Plain(Socket::from_tokio(stream)?), max);
    let Ok(r) = tokio::time::timeout(login::LOGIN_TIMEOUT, login::login(client, id, &shared)).await else {
        return Ok(());
    };
    let (client, login) = r?;
    let Some(login) = login else {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.stream.close()).await;
        return Ok(());
    };
    let mut client = client;
    if shared.clients.len() >= shared.runtime.load().config.server.max_client_connections {
        client
            .refuse(
                code::TOO_MANY_CONNECTIONS,
                "08004",
                "Too many connections (server.max_client_connections)",
            )
            .await;
        return Ok(());
    }
    // Listed with the PostgreSQL clients (SHOW CLIENTS) and counted against the same limit.
    let handle = shared.clients.register(
        &login.user.name,
        &login.db,
        "mysql",
        addr,
        client.stream.tls_description(),
    );
    let pid = handle.pid;
    let registry = shared.clone();
    let result = session::Session::new(shared, client, login)
        .run(shutdown, handle.kill.clone())
        .await;
    registry.clients.remove(pid);
    result
}
