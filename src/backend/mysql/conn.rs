//! One connection to a MySQL or MariaDB server: the client side of the handshake, commands sent
//! as frames, responses read frame by frame (the relay forwards them untouched) or collected
//! whole for the proxy's own statements (merges, state replay).
//!
//! Written on the proxy's socket type rather than through mysql_async: the relay needs the raw
//! frames of a response as they arrive, which a driver decodes into rows. mysql_async serves
//! the monitor's queries instead.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::{MyDeserialize, MySerialize};

use crate::config::NodeConfig;
use crate::net::Socket;
use crate::protocol::mysql::response::{Kind, Response};
use crate::protocol::mysql::{
    CapabilityFlags, ColumnInfo, StatusFlags, auth, column_info, parse_err, put_packet, take_frame, text_cells,
};

/// Capabilities the proxy asks of servers, and offers its own clients: results end with EOF
/// packets (no CLIENT_DEPRECATE_EOF, so one response shape for both sides), several
/// statements per query, no LOCAL INFILE, no compression.
pub const CAPABILITIES: CapabilityFlags = CapabilityFlags::from_bits_truncate(
    CapabilityFlags::CLIENT_LONG_PASSWORD.bits()
        | CapabilityFlags::CLIENT_LONG_FLAG.bits()
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB.bits()
        | CapabilityFlags::CLIENT_PROTOCOL_41.bits()
        | CapabilityFlags::CLIENT_TRANSACTIONS.bits()
        | CapabilityFlags::CLIENT_SECURE_CONNECTION.bits()
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS.bits()
        | CapabilityFlags::CLIENT_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH.bits()
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA.bits(),
);

/// Why a server connection failed.
#[derive(Debug, thiserror::Error)]
pub enum MyError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("{message} ({code})")]
    Server {
        /// MySQL error code.
        code: u16,
        /// SQLSTATE.
        state: String,
        /// Message.
        message: String,
    },
    /// The server said something that does not fit the protocol.
    #[error("{0}")]
    Protocol(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

impl From<crate::protocol::mysql::response::Malformed> for MyError {
    fn from(e: crate::protocol::mysql::response::Malformed) -> MyError {
        MyError::Protocol(e.to_string())
    }
}

/// A text result read whole.
#[derive(Debug, Default)]
pub struct TextResult {
    /// Columns (empty for a statement without rows).
    pub columns: Vec<ColumnInfo>,
    /// Column definition packets as the server sent them.
    pub column_packets: Vec<Bytes>,
    /// Rows.
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// Affected rows (statements without rows).
    pub affected: u64,
    /// Last insert id.
    pub last_insert_id: u64,
    /// Final status flags.
    pub status: StatusFlags,
    /// Warnings.
    pub warnings: u16,
    /// COM_STMT_PREPARE: the statement id, parameters and columns.
    pub prepared: Option<(u32, u16, u16)>,
}

/// A server's connection.
pub struct MyConn {
    sock: Socket,
    buf: BytesMut,
    /// The server's version string, as its handshake gave it.
    pub server_version: String,
    /// The server's thread id (for KILL QUERY).
    pub thread_id: u32,
    /// Database currently selected.
    pub db: String,
    /// `autocommit` as set on the connection.
    pub autocommit: bool,
    /// Signature of the session settings applied (0: the server's defaults).
    pub settings: u64,
    /// Statements prepared here: text → (server id, parameters, columns).
    pub prepared: HashMap<Bytes, (u32, u16, u16)>,
    /// Parameter types sent with this connection's last execute of a statement id (the server
    /// remembers them; a later execute may leave them out).
    pub bound_types: HashMap<u32, Bytes>,
    /// Unusable (a response was cut short, the socket failed).
    pub broken: bool,
}

impl MyConn {
    /// Connects and logs in to `node`.
    pub async fn connect(node: &NodeConfig, timeout: Duration) -> Result<MyConn, MyError> {
        tokio::time::timeout(timeout, Self::connect_inner(node))
            .await
            .map_err(|_| MyError::Timeout)?
    }

    async fn connect_inner(node: &NodeConfig) -> Result<MyConn, MyError> {
        let tcp = tokio::net::TcpStream::connect((node.host.as_str(), node.port)).await?;
        tcp.set_nodelay(true)?;
        let mut conn = MyConn {
            sock: Socket::from_tokio(tcp)?,
            buf: BytesMut::with_capacity(16 * 1024),
            server_version: String::new(),
            thread_id: 0,
            db: node.dbname.clone(),
            autocommit: true,
            settings: 0,
            prepared: HashMap::new(),
            bound_types: HashMap::new(),
            broken: false,
        };
        let (_, hello) = conn.frame().await?;
        if let Some((code, state, message)) = parse_err(&hello) {
            return Err(MyError::Server { code, state, message });
        }
        let hs =
            HandshakePacket::deserialize((), &mut ParseBuf(&hello)).map_err(|e| MyError::Protocol(e.to_string()))?;
        conn.server_version = hs.server_version_str().into_owned();
        conn.thread_id = hs.connection_id();
        let nonce = hs.nonce();
        let plugin = match hs.auth_plugin_name_ref() {
            Some(b"caching_sha2_password") => auth::CACHING_SHA2,
            _ => auth::NATIVE,
        };
        let password = node.password.clone().unwrap_or_default();
        let caps = CAPABILITIES & hs.capabilities();
        let response = HandshakeResponse::new(
            Some(scramble(plugin, &nonce, &password)),
            hs.server_version_parsed().unwrap_or((8, 0, 0)),
            Some(node.user.as_bytes()),
            Some(node.dbname.as_bytes()),
            Some(if plugin == auth::NATIVE {
                AuthPlugin::MysqlNativePassword
            } else {
                AuthPlugin::CachingSha2Password
            }),
            caps,
            None,
            16 << 20,
        );
        let mut payload = Vec::new();
        response.serialize(&mut payload);
        conn.write_packet(1, &payload).await?;
        loop {
            let (seq, p) = conn.frame().await?;
            match p.first() {
                Some(0x00) => return Ok(conn),
                Some(0xFF) => {
                    let (code, state, message) = parse_err(&p).unwrap_or((0, "HY000".into(), "login failed".into()));
                    return Err(MyError::Server { code, state, message });
                }
                Some(0xFE) => {
                    // Auth switch: plugin name, NUL, nonce (NUL-terminated).
                    let rest = &p[1..];
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    let name = String::from_utf8_lossy(&rest[..end]).into_owned();
                    let nonce = rest.get(end + 1..).unwrap_or_default();
                    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
                    let plugin = match name.as_str() {
                        auth::NATIVE => auth::NATIVE,
                        auth::CACHING_SHA2 => auth::CACHING_SHA2,
                        other => {
                            return Err(MyError::Protocol(format!(
                                "the server asks for auth plugin {other}; shardwire logs in with mysql_native_password or caching_sha2_password"
                            )));
                        }
                    };
                    conn.write_packet(seq.wrapping_add(1), &scramble(plugin, nonce, &password))
                        .await?;
                }
                Some(0x01) if p.get(1) == Some(&0x03) => {} // fast auth done: the OK follows
                Some(0x01) => {
                    return Err(MyError::Protocol(
                        "the server wants caching_sha2_password's full authentication (TLS or RSA), which shardwire does not do toward servers: give its account mysql_native_password, or log it in once so the server caches it".into(),
                    ));
                }
                _ => return Err(MyError::Protocol("unexpected packet during login".into())),
            }
        }
    }

    /// The next frame from the server.
    pub async fn frame(&mut self) -> Result<(u8, BytesMut), MyError> {
        loop {
            if let Some(f) = take_frame(&mut self.buf) {
                return Ok(f);
            }
            let n = self.sock.read_some(&mut self.buf, 16 * 1024).await;
            match n {
                Ok(0) => {
                    self.broken = true;
                    return Err(MyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(_) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// Raw bytes already read past the last frame taken (none between responses).
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Writes one packet starting at `seq`.
    pub async fn write_packet(&mut self, seq: u8, payload: &[u8]) -> Result<(), MyError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        let mut s = seq;
        put_packet(&mut out, &mut s, payload);
        self.write_raw(&out).await
    }

    /// Writes bytes already framed.
    pub async fn write_raw(&mut self, data: &[u8]) -> Result<(), MyError> {
        if let Err(e) = self.sock.write_all(data).await {
            self.broken = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends a command and reads its whole response, text rows decoded.
    pub async fn run(&mut self, command: &[u8], kind: Kind) -> Result<TextResult, MyError> {
        self.write_packet(0, command).await?;
        let mut r = Response::new(kind);
        let mut out = TextResult::default();
        let mut error = None;
        let mut in_columns = true;
        loop {
            let (_, p) = self.frame().await?;
            let first = p.first().copied();
            let before = r.result_sets;
            let done = r.feed(&p).inspect_err(|_| self.broken = true)?;
            if first == Some(0xFF) {
                error = parse_err(&p);
            } else if r.result_sets != before {
                in_columns = true;
                out.columns.clear();
                out.column_packets.clear();
                out.rows.clear();
            } else if in_columns && first == Some(0xFE) && p.len() < 9 {
                in_columns = false;
            } else if in_columns && r.result_sets > 0 {
                if let Some(c) = column_info(&p) {
                    out.columns.push(c);
                    out.column_packets.push(p.clone().freeze());
                }
            } else if r.result_sets > 0 && !(first == Some(0xFE) && p.len() < 9) {
                let p = p.freeze();
                let cells = text_cells(&p, out.columns.len()).ok_or_else(|| {
                    self.broken = true;
                    MyError::Protocol("a row that does not match its columns".into())
                })?;
                out.rows
                    .push(cells.into_iter().map(|c| c.map(|c| p.slice_ref(c))).collect());
            }
            if done {
                break;
            }
        }
        out.affected = r.affected;
        out.last_insert_id = r.last_insert_id;
        out.status = r.status;
        out.warnings = r.warnings;
        out.prepared = r.prepared;
        match error {
            Some((code, state, message)) => Err(MyError::Server { code, state, message }),
            None => Ok(out),
        }
    }

    /// Runs a text query (COM_QUERY) and reads its last result whole.
    pub async fn query(&mut self, sql: &str) -> Result<TextResult, MyError> {
        let mut cmd = Vec::with_capacity(sql.len() + 1);
        cmd.push(crate::protocol::mysql::cmd::QUERY);
        cmd.extend_from_slice(sql.as_bytes());
        self.run(&cmd, Kind::Query).await
    }
}

fn scramble(plugin: &str, nonce: &[u8], password: &str) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let s = if plugin == auth::CACHING_SHA2 {
        mysql_common::scramble::scramble_sha256(nonce, password.as_bytes()).map(|s| s.to_vec())
    } else {
        mysql_common::scramble::scramble_native(nonce, password.as_bytes()).map(|s| s.to_vec())
    };
    s.unwrap_or_default()
}
