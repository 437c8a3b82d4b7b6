//! One raw backend connection: TCP, startup, authentication with the stored credentials (SCRAM,
//! md5, cleartext via postgres-protocol), then bytes. After startup the session relays messages
//! without decoding rows.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::NodeConfig;

/// Why a backend connection could not be made or was lost.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect or I/O failed.
    #[error("could not connect to {node}: {source}")]
    Connect {
        /// Node name.
        node: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Startup took longer than the connect timeout.
    #[error("timed out connecting to {0}")]
    Timeout(String),
    /// The server refused the login or sent an error during startup.
    #[error("{node} refused the connection: {message}")]
    Refused {
        /// Node name.
        node: String,
        /// The server's message.
        message: String,
    },
    /// The server asked for an authentication method shardwire cannot answer.
    #[error("{node} asked for an unsupported authentication method")]
    UnsupportedAuth {
        /// Node name.
        node: String,
    },
    /// An idle pooled connection turned out closed or sent something unexpected.
    #[error("pooled connection is no longer usable")]
    Stale,
}

/// A logged-in backend connection and what the proxy knows of its session state.
pub struct BackendConn {
    /// The socket; the session reads and writes it directly.
    pub stream: crate::net::Socket,
    /// Bytes read from the backend and not yet handled.
    pub rbuf: BytesMut,
    /// BackendKeyData process id, for cancel requests.
    pub pid: i32,
    /// BackendKeyData secret key.
    pub secret: i32,
    /// ParameterStatus values sent at startup.
    pub params: Vec<(String, String)>,
    /// The named statements prepared on this connection by the proxy (`sw_<hash>`).
    pub prepared: Prepared,
    /// Hash of the statement the unnamed statement slot holds, if known.
    pub unnamed: Option<u64>,
    /// Signature of the session parameters applied (see `session::state::SessionVars`).
    pub vars_sig: u64,
    /// Set when the connection must not go back to the pool.
    pub broken: bool,
}

pub use crate::config::validate::DEFAULT_MAX_PREPARED;

/// The statements prepared on a backend connection, by hash, least recently used first out.
pub struct Prepared {
    lru: lru::LruCache<u64, ()>,
    limit: usize,
}

impl Default for Prepared {
    fn default() -> Prepared {
        // Unbounded: eviction is the caller's, since each one costs a Close on the server.
        Prepared {
            lru: lru::LruCache::unbounded(),
            limit: DEFAULT_MAX_PREPARED,
        }
    }
}

impl Prepared {
    /// Whether `hash` is prepared; marks it as just used.
    pub fn touch(&mut self, hash: u64) -> bool {
        self.lru.get(&hash).is_some()
    }

    /// Sets how many statements the connection keeps.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// Records `hash` as prepared. Returns the statement to close first when that takes the
    /// connection past its limit.
    pub fn insert(&mut self, hash: u64) -> Option<u64> {
        self.lru.put(hash, ());
        if self.lru.len() > self.limit {
            self.lru.pop_lru().map(|(h, ())| h)
        } else {
            None
        }
    }

    /// Forgets every statement (`DEALLOCATE ALL` or `DISCARD ALL` ran on the connection).
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    /// Forgets `hash` (its Parse failed or was skipped).
    pub fn remove(&mut self, hash: u64) {
        self.lru.pop(&hash);
    }

    /// Takes back a statement whose Close was skipped: it is still on the server.
    pub fn restore(&mut self, hash: u64) {
        self.lru.push(hash, ());
    }

    /// How many statements are prepared.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }
}

/// Startup parameters every backend connection is opened with. Client parameters are replayed
/// as SET on top, so the pool is shared by clients whatever they sent at startup.
const APPLICATION_NAME: &str = "shardwire";

impl BackendConn {
    /// Opens and logs in.
    pub async fn connect(node: &NodeConfig, timeout: Duration) -> Result<BackendConn, BackendError> {
        tokio::time::timeout(timeout, Self::connect_inner(node))
            .await
            .map_err(|_| BackendError::Timeout(node.name.clone()))?
    }

    async fn connect_inner(node: &NodeConfig) -> Result<BackendConn, BackendError> {
        let io = |source| BackendError::Connect {
            node: node.name.clone(),
            source,
        };
        let stream = TcpStream::connect((node.host.as_str(), node.port)).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut conn = Handshake {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            pid: 0,
            secret: 0,
            params: Vec::new(),
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", node.user.as_str()),
            ("database", node.dbname.as_str()),
            ("application_name", APPLICATION_NAME),
        ];
        frontend::startup_message(params, &mut out).map_err(io)?;
        conn.stream.write_all(&out).await.map_err(io)?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = conn.read_message().await.map_err(io)?;
            out.clear();
            let password = || {
                node.password
                    .as_deref()
                    .map(str::as_bytes)
                    .ok_or_else(|| BackendError::Refused {
                        node: node.name.clone(),
                        message: "the server asks for a password and the node URL has none".into(),
                    })
            };
            match msg {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut out).map_err(io)?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash =
                        postgres_protocol::authentication::md5_hash(node.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = fallible_iterator::FallibleIterator::next(&mut mechanisms).map_err(io)? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(BackendError::UnsupportedAuth {
                            node: node.name.clone(),
                        });
                    }
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out).map_err(io)?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or(BackendError::UnsupportedAuth {
                        node: node.name.clone(),
                    })?;
                    s.update(body.data()).map_err(io)?;
                    frontend::sasl_response(s.message(), &mut out).map_err(io)?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or(BackendError::UnsupportedAuth {
                        node: node.name.clone(),
                    })?;
                    s.finish(body.data()).map_err(io)?;
                }
                backend::Message::ParameterStatus(body) => {
                    let name = body.name().map_err(io)?.to_owned();
                    let value = body.value().map_err(io)?.to_owned();
                    conn.params.push((name, value));
                }
                backend::Message::BackendKeyData(body) => {
                    conn.pid = body.process_id();
                    conn.secret = body.secret_key();
                }
                backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => {
                    return Ok(BackendConn {
                        stream: crate::net::Socket::from_tokio(conn.stream).map_err(io)?,
                        rbuf: conn.rbuf,
                        pid: conn.pid,
                        secret: conn.secret,
                        params: conn.params,
                        prepared: Prepared::default(),
                        unnamed: None,
                        vars_sig: EMPTY_VARS_SIG,
                        broken: false,
                    });
                }
                backend::Message::ErrorResponse(body) => {
                    let mut message = String::from("error during startup");
                    let mut fields = body.fields();
                    while let Ok(Some(f)) = fallible_iterator::FallibleIterator::next(&mut fields) {
                        if f.type_() == b'M' {
                            message = String::from_utf8_lossy(f.value_bytes()).into_owned();
                        }
                    }
                    return Err(BackendError::Refused {
                        node: node.name.clone(),
                        message,
                    });
                }
                _ => {
                    return Err(BackendError::UnsupportedAuth {
                        node: node.name.clone(),
                    });
                }
            }
            if !out.is_empty() {
                conn.stream.write_all(&out).await.map_err(io)?;
            }
        }
    }

    /// Checks, without a round trip, that an idle connection is still open and silent: a server
    /// that shut down or killed the backend has sent a FATAL error and closed the socket.
    ///
    /// The event loop already watches the socket, so its readiness says whether anything arrived
    /// while the connection sat in the pool; only then is the socket read. A silent connection
    /// costs no system call.
    pub fn check_idle(&mut self) -> Result<(), BackendError> {
        if self.broken || !self.rbuf.is_empty() {
            return Err(BackendError::Stale);
        }
        if self.stream.has_input() {
            Err(BackendError::Stale)
        } else {
            Ok(())
        }
    }
}

/// A connection during startup, before it becomes a [`BackendConn`].
struct Handshake {
    stream: TcpStream,
    rbuf: BytesMut,
    pid: i32,
    secret: i32,
    params: Vec<(String, String)>,
}

impl Handshake {
    async fn read_message(&mut self) -> std::io::Result<backend::Message> {
        loop {
            if let Some(msg) = backend::Message::parse(&mut self.rbuf)? {
                return Ok(msg);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Signature of a connection with no session parameters set (the session layer's record of
/// parameters hashes to it when empty).
pub const EMPTY_VARS_SIG: u64 = 0;

/// Sends a CancelRequest for `pid`/`secret` to a node.
pub async fn send_cancel(node: &NodeConfig, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut stream = TcpStream::connect((node.host.as_str(), node.port)).await?;
    let mut out = BytesMut::new();
    frontend::cancel_request(pid, secret, &mut out);
    stream.write_all(&out).await?;
    // The server closes the connection after reading the request; wait for that so the cancel
    // has been delivered when this returns.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}
