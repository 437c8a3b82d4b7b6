//! One shard's backend connection while a statement runs on several shards: PostgreSQL's
//! backend protocol for the executor's legs (send, read frames to ReadyForQuery, collect a
//! write's answer, stream rows). A leg stopped early is marked broken, so its
//! connection is closed rather than reused mid-result.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::backend::{BackendConn, Checkout};
use crate::protocol::pg::Frame;
use crate::protocol::pg::codec::decode_frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows;

/// One shard's connection for the statement.
pub struct Leg {
    /// The pooled connection.
    pub co: Checkout,
    /// Responses of a session-parameter replay sent ahead, to skip.
    pub replay: bool,
}

/// What one shard answered to a write.
pub struct Collected {
    /// RowDescription (RETURNING).
    pub description: Option<Frame>,
    /// DataRows.
    pub rows: Vec<Frame>,
    /// CommandComplete tag.
    pub tag: Option<String>,
    /// The first error.
    pub error: Option<Frame>,
}

impl Leg {
    pub fn new(co: Checkout) -> Leg {
        co.node.stats.statements.fetch_add(1, Ordering::Relaxed);
        Leg { co, replay: false }
    }

    pub fn mark_broken(&mut self) {
        self.co.conn.broken = true;
    }

    /// Runs one simple query to its ReadyForQuery: `None` if the connection failed, else the
    /// error it reported, if any.
    pub async fn simple(&mut self, sql: &str) -> Option<Option<Frame>> {
        simple_on(&mut self.co.conn, sql).await
    }

    /// The first column of a query's rows.
    pub async fn rows(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        let r = async {
            self.send(&out).await?;
            let mut rows = Vec::new();
            let mut err = None;
            loop {
                let f = self.frame().await?;
                match f.tag() {
                    b'D' => {
                        if let Ok(cells) = rows::parse_data_row(&f.raw().slice(5..)) {
                            rows.push(
                                cells
                                    .first()
                                    .cloned()
                                    .flatten()
                                    .map(|c| String::from_utf8_lossy(&c).into_owned())
                                    .unwrap_or_default(),
                            );
                        }
                    }
                    b'E' => err = Some(msg::error_message(f.body())),
                    b'Z' => return Ok::<_, std::io::Error>((rows, err)),
                    _ => {}
                }
            }
        }
        .await;
        match r {
            Ok((rows, None)) => Ok(rows),
            Ok((_, Some(e))) => Err(e),
            Err(e) => {
                self.mark_broken();
                Err(format!("shard connection failed: {e}"))
            }
        }
    }

    /// Sends a replay, BEGIN and a COPY FROM STDIN; returns the CopyInResponse, or the error.
    pub async fn start_copy(&mut self, out: &[u8]) -> std::io::Result<Result<Frame, Frame>> {
        self.send(out).await?;
        if let Some(e) = self.skip_replay().await? {
            return Ok(Err(e));
        }
        if let Some(e) = self.until_ready().await? {
            return Ok(Err(e));
        }
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'G' => return Ok(Ok(f)),
                b'E' => {
                    self.until_ready().await?;
                    return Ok(Err(f));
                }
                _ => {}
            }
        }
    }

    /// Abandons a COPY or transaction in progress: the connection is closed, so the server rolls
    /// back whatever it held.
    pub async fn abort_copy(&mut self) {
        self.mark_broken();
    }

    /// After CopyDone: the command tag or the error, through ReadyForQuery.
    pub async fn collect_tail(&mut self) -> std::io::Result<(Option<String>, Option<Frame>)> {
        let mut tag = None;
        let mut err = None;
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'C' => {
                    tag = Some(String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned())
                }
                b'E' => {
                    err.get_or_insert(f);
                }
                b'Z' => return Ok((tag, err)),
                _ => {}
            }
        }
    }

    /// Reads a write's answers: the replay, the BEGIN when `begun` (one was sent ahead of it),
    /// then the statement through ReadyForQuery.
    pub async fn collect(&mut self, begun: bool) -> std::io::Result<Collected> {
        let mut c = Collected {
            description: None,
            rows: Vec::new(),
            tag: None,
            error: self.skip_replay().await?,
        };
        if begun && let Some(e) = self.until_ready().await? {
            c.error.get_or_insert(e);
        }
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'T' => c.description = Some(f),
                b'D' => c.rows.push(f),
                b'C' => {
                    c.tag = Some(String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned())
                }
                b'E' => {
                    c.error.get_or_insert(f);
                }
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // A simple query drops the server's unnamed statement, a Parse of one replaces it.
        self.co.conn.unnamed = None;
        self.co.conn.stream.write_all(buf).await
    }

    pub async fn frame(&mut self) -> std::io::Result<Frame> {
        read_frame(&mut self.co.conn).await
    }

    /// Reads through the next ReadyForQuery; returns the first error, if any.
    pub async fn until_ready(&mut self) -> std::io::Result<Option<Frame>> {
        let mut err = None;
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'Z' => return Ok(err),
                b'E' if err.is_none() => err = Some(f),
                _ => {}
            }
        }
    }

    /// Skips the replay's responses if one was sent.
    pub async fn skip_replay(&mut self) -> std::io::Result<Option<Frame>> {
        if std::mem::take(&mut self.replay) {
            self.until_ready().await
        } else {
            Ok(None)
        }
    }

    /// The start of a result: its RowDescription, no rows, or the error (read through
    /// ReadyForQuery).
    pub async fn head(&mut self) -> std::io::Result<Head> {
        if let Some(e) = self.skip_replay().await? {
            self.until_ready().await?;
            return Ok(Head::Error(e));
        }
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'T' => return Ok(Head::Rows(f)),
                b'n' | b'C' | b'I' => return Ok(Head::NoRows),
                b'E' => {
                    self.until_ready().await?;
                    return Ok(Head::Error(f));
                }
                _ => {}
            }
        }
    }

    /// Every leg ran to completion: read through ReadyForQuery so the connections go back clean.
    pub async fn finish(legs: &mut [Leg]) {
        for leg in legs {
            if leg.until_ready().await.is_err() {
                leg.co.conn.broken = true;
            }
        }
    }

    /// Legs stopped early (an error, a LIMIT reached): their connections are not reused.
    pub async fn abandon(legs: &mut [Leg]) {
        for leg in legs {
            leg.co.conn.broken = true;
        }
    }

    /// The next row, or `None` at its CommandComplete (or PortalSuspended).
    pub async fn read_row(&mut self) -> Result<Option<Vec<Option<Bytes>>>, RowError> {
        loop {
            let f = self.frame().await.map_err(RowError::Io)?;
            match f.tag() {
                b'D' => {
                    return rows::parse_data_row(&f.raw().slice(5..))
                        .map(Some)
                        .map_err(|e| RowError::Io(std::io::Error::other(e.to_string())));
                }
                b'C' | b's' => return Ok(None),
                b'E' => return Err(RowError::Backend(f)),
                _ => {}
            }
        }
    }
}

/// The next whole message of a connection.
pub async fn read_frame(conn: &mut BackendConn) -> std::io::Result<Frame> {
    loop {
        match decode_frame(&mut conn.rbuf, 1 << 30) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        if conn.stream.read_some(&mut conn.rbuf, 16 * 1024).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Runs one simple query on an idle connection to its ReadyForQuery: `None` if the connection
/// failed (it is then marked broken), else the error the server reported, if any.
pub async fn simple_on(conn: &mut BackendConn, sql: &str) -> Option<Option<Frame>> {
    let mut out = BytesMut::new();
    msg::query(&mut out, sql);
    // A simple query drops the server's unnamed statement.
    conn.unnamed = None;
    if conn.stream.write_all(&out).await.is_err() {
        conn.broken = true;
        return None;
    }
    let mut err = None;
    loop {
        match read_frame(conn).await {
            Ok(f) if f.tag() == b'Z' => return Some(err),
            Ok(f) if f.tag() == b'E' && err.is_none() => err = Some(f),
            Ok(_) => {}
            Err(_) => {
                conn.broken = true;
                return None;
            }
        }
    }
}

/// How a result starts.
pub enum Head {
    /// Its RowDescription.
    Rows(Frame),
    /// A statement without rows.
    NoRows,
    /// Its ErrorResponse.
    Error(Frame),
}

/// Why a shard's row could not be read.
pub enum RowError {
    /// The shard's ErrorResponse, passed to the client as it is.
    Backend(Frame),
    /// The connection failed or spoke nonsense.
    Io(std::io::Error),
}
