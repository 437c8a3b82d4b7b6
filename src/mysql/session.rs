//! One MySQL client: its commands, its state (database, `autocommit`, settings, an open
//! transaction, what pins it to one connection) and the connection it holds.
//!
//! Pooling follows the server: a connection is held while the server reports a transaction
//! open (`SERVER_STATUS_IN_TRANS`, whatever opened it: BEGIN, `autocommit=0`, XA) or while
//! something pins the session, and goes back to the pool otherwise. A BEGIN waits until the
//! first statement says which shard and role the transaction needs.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::login::Login;
use super::prepared::Statements;
use super::sync::{Held, State, sync};
use super::{ClientConn, ClientError};
use crate::app::{Runtime, Shared};
use crate::backend::mysql::MyError;
use crate::protocol::mysql::response::Kind;
use crate::protocol::mysql::{StatusFlags, cmd, code, err, ok};
use crate::shardmap::ShardId;

pub(super) struct Session {
    pub shared: Arc<Shared>,
    /// The configuration and shards in use: taken per statement, kept while a connection is held.
    pub rt: Arc<Runtime>,
    pub client: ClientConn,
    pub state: State,
    pub sig: u64,
    pub held: Option<Held>,
    /// A BEGIN not yet sent: its text and whether it said READ ONLY.
    pub begin: Option<(String, bool)>,
    /// Why the session keeps its connection until it leaves.
    pub pinned: Option<&'static str>,
    /// When the session's last write committed (read-your-writes).
    pub wrote_at: Option<Instant>,
    /// The server connection of an open transaction was lost: statements fail until the client
    /// ends the transaction.
    pub tx_lost: bool,
    pub stmts: Statements,
    /// The XA id of a transaction over shards (see [`super::xa`]).
    pub xid: Option<String>,
    /// Connections of the XA transaction on shards other than the held one's.
    pub parked: Vec<Held>,
    /// Functions whose calls need the primary (MySQL's and the configured ones).
    pub functions: std::collections::HashSet<String>,
    login_db: String,
    read_your_writes: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, client: ClientConn, login: Login) -> Session {
        let rt = shared.runtime.load_full();
        let mut state = State {
            db: login.db.clone(),
            autocommit: true,
            settings: Vec::new(),
        };
        if let Some(names) = login.names {
            state.set("names", &names);
        }
        let sig = state.signature();
        let mut functions = rt.config.routing.primary_functions.clone();
        functions.extend(crate::analyze::mysql::PRIMARY_FUNCTIONS.iter().map(|f| f.to_string()));
        Session {
            functions,
            shared,
            rt,
            client,
            state,
            sig,
            held: None,
            begin: None,
            pinned: None,
            wrote_at: None,
            tx_lost: false,
            stmts: Statements::default(),
            xid: None,
            parked: Vec::new(),
            login_db: login.db,
            read_your_writes: login.user.read_your_writes,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let result = self.serve(shutdown).await;
        self.leave();
        let _ = self.client.flush().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.client.stream.close()).await;
        result
    }

    async fn serve(&mut self, shutdown: CancellationToken) -> Result<(), ClientError> {
        loop {
            let next = tokio::select! {
                p = self.client.packet() => p?,
                () = shutdown.cancelled(), if self.held.is_none() => return Ok(()),
            };
            let Some((seq, payload)) = next else {
                tracing::debug!("MySQL client closed the connection");
                return Ok(());
            };
            tracing::trace!(seq, len = payload.len(), "MySQL command");
            if seq != 0 {
                self.client
                    .refuse(code::OUT_OF_ORDER, "08S01", "Got packets out of order")
                    .await;
                return Err(ClientError::Protocol(format!("command with sequence id {seq}")));
            }
            let Some(&command) = payload.first() else {
                self.client
                    .refuse(code::MALFORMED, "HY000", "Malformed communication packet")
                    .await;
                return Err(ClientError::Protocol("empty command".into()));
            };
            match command {
                cmd::QUIT => return Ok(()),
                cmd::PING => self.ok(),
                cmd::QUERY => self.query(payload).await?,
                cmd::INIT_DB => self.init_db(payload).await?,
                cmd::FIELD_LIST => self.on_default(payload, Kind::FieldList).await?,
                cmd::STATISTICS => {
                    let mut seq = 1;
                    let text = format!("shardwire: {} shards", self.rt.config.shards.len());
                    self.client.put(&mut seq, text.as_bytes());
                }
                cmd::SET_OPTION => {
                    let mut seq = 1;
                    let status = self.status();
                    self.client.put(&mut seq, &crate::protocol::mysql::eof(0, status));
                }
                cmd::RESET_CONNECTION => {
                    self.reset().await;
                    self.ok();
                }
                cmd::CHANGE_USER => {
                    if let Some((user, db)) =
                        super::login::change_user(&mut self.client, &payload, &self.shared).await?
                    {
                        self.reset().await;
                        self.read_your_writes = user.read_your_writes;
                        if let Some(db) = db {
                            self.login_db = db.clone();
                            self.state.db = db;
                        }
                        // The answer follows the client's auth-switch response (sequence 2).
                        let mut seq = 3;
                        let p = ok(0, 0, self.status(), 0, "");
                        self.client.put(&mut seq, &p);
                    }
                }
                cmd::STMT_PREPARE => self.prepare(payload).await?,
                cmd::STMT_EXECUTE => self.execute(payload).await?,
                cmd::STMT_SEND_LONG_DATA => self.long_data(&payload),
                cmd::STMT_CLOSE => self.close_statement(&payload),
                cmd::STMT_RESET => self.reset_statement(&payload),
                _ => self.error(
                    code::UNKNOWN_COMMAND,
                    "08S01",
                    &format!("Unknown command 0x{command:02x}"),
                ),
            }
            self.client.flush().await?;
        }
    }

    /// Status flags of answers the proxy makes itself.
    pub fn status(&self) -> StatusFlags {
        let mut s = StatusFlags::empty();
        if self.state.autocommit {
            s |= StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        }
        if self.in_tx() {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    pub fn in_tx(&self) -> bool {
        self.begin.is_some() || self.tx_lost || self.xid.is_some() || self.held.as_ref().is_some_and(|h| h.in_tx)
    }

    pub fn ok(&mut self) {
        let mut seq = 1;
        let p = ok(0, 0, self.status(), 0, "");
        self.client.put(&mut seq, &p);
    }

    pub fn error(&mut self, code: u16, state: &str, message: &str) {
        let mut seq = 1;
        self.client.put(&mut seq, &err(code, state, message));
    }

    /// Reports a failed server connection to the client.
    pub fn backend_error(&mut self, e: &MyError) {
        match e {
            MyError::Server { code, state, message } => self.error(*code, state, message),
            MyError::Timeout => self.error(
                code::BUSY,
                "HY000",
                "no server connection became free in time (pool.checkout_timeout)",
            ),
            other => self.error(
                code::SERVER_LOST,
                "HY000",
                &format!("Lost connection to the server: {other}"),
            ),
        }
    }

    /// The shard and node a statement that needs no particular shard runs on: the one held,
    /// else the default shard's primary.
    pub fn default_shard(&self) -> ShardId {
        self.held.as_ref().map_or(self.rt.config.map.default_shard, |h| h.shard)
    }

    /// As [`Session::acquire`], joining `shard` to an XA transaction over shards when one runs.
    pub async fn reach(&mut self, shard: ShardId, primary: bool) -> bool {
        if self.xid.is_some() && self.held.as_ref().is_some_and(|h| h.shard != shard) {
            return self.join_xa(shard).await;
        }
        self.acquire(shard, primary).await
    }

    /// Makes sure a connection to `shard` is held (the primary, or a replica when `primary` is
    /// false and one is usable), in the session's state. An error has been reported to the
    /// client when this returns false.
    pub async fn acquire(&mut self, shard: ShardId, primary: bool) -> bool {
        if let Some(h) = &self.held {
            if h.shard == shard {
                return true;
            }
            let why = match self.pinned {
                Some(p) => format!(
                    "the session is pinned to shard {} by {p}",
                    self.rt.config.map.shards[h.shard]
                ),
                None => format!(
                    "the open transaction runs on shard {}; a transaction over several shards is not supported on the MySQL front end yet: COMMIT first, or keep a transaction's rows on one shard",
                    self.rt.config.map.shards[h.shard]
                ),
            };
            self.error(code::NOT_SUPPORTED, "0A000", &why);
            return false;
        }
        if self.parked.is_empty() {
            // A transaction over shards keeps the map it started with.
            self.rt = self.shared.runtime.load_full();
        }
        let Some(s) = self.rt.mysql.get(shard).cloned() else {
            self.error(code::NOT_SUPPORTED, "0A000", "the shards are not MySQL servers");
            return false;
        };
        let wrote = if self.read_your_writes { self.wrote_at } else { None };
        let node = match (primary, s.replica(wrote)) {
            (false, Some(r)) => r,
            (false, None) if self.rt.config.routing.when_no_replica == crate::config::WhenNoReplica::Refuse => {
                self.error(
                    code::SERVER_LOST,
                    "08001",
                    "no replica is usable and routing.when_no_replica is \"refuse\"",
                );
                return false;
            }
            _ => s.primary.clone(),
        };
        let is_primary = Arc::ptr_eq(&node, &s.primary);
        tracing::debug!(node = %node.config.name, port = node.config.port, "MySQL checkout");
        let mut conn = match node.checkout().await {
            Ok(c) => c,
            Err(e) => {
                self.backend_error(&e);
                return false;
            }
        };
        if let Err(e) = sync(&mut conn, &self.state, self.sig).await {
            self.backend_error(&e);
            return false;
        }
        node.statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.held = Some(Held {
            shard,
            conn,
            primary: is_primary,
            in_tx: false,
            wrote: false,
        });
        true
    }

    /// After a response: remembers whether a transaction is open and gives the connection back
    /// when none is and nothing pins the session.
    pub fn after(&mut self, status: StatusFlags, wrote: bool) {
        let Some(h) = &mut self.held else { return };
        h.wrote |= wrote && h.primary;
        if self.xid.is_some() {
            // XA branches stay until COMMIT or ROLLBACK, whatever the status says.
            return;
        }
        h.in_tx = status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
        if !h.in_tx {
            if h.wrote {
                self.wrote_at = Some(Instant::now());
                h.wrote = false;
            }
            if self.pinned.is_none() {
                self.held = None;
            }
        }
    }

    /// The held connection failed: it goes, and an open transaction stays failed for the
    /// client until it ends it.
    pub fn lost(&mut self) {
        if self.xid.take().is_some() {
            // The other branches are rolled back by their servers when their connections
            // close; the client must end the transaction.
            for mut p in self.parked.drain(..) {
                p.conn.broken = true;
            }
            self.tx_lost = true;
        }
        if let Some(mut h) = self.held.take() {
            h.conn.broken = true;
            if h.in_tx {
                self.tx_lost = true;
            }
            if self.pinned.is_some() {
                // What pinned it (user variables, locks) is gone with it.
                self.pinned = None;
            }
        }
    }

    /// COM_RESET_CONNECTION: the session as it was after login.
    async fn reset(&mut self) {
        self.xid = None;
        for mut p in self.parked.drain(..) {
            p.conn.broken = true;
        }
        if let Some(mut h) = self.held.take() {
            // Roll back and clear what the connection carries; if that fails it is not reused.
            if h.conn.run(&[cmd::RESET_CONNECTION], Kind::Simple).await.is_err() {
                h.conn.broken = true;
            } else {
                h.conn.settings = 0;
                h.conn.autocommit = true;
                h.conn.prepared.clear();
                h.conn.bound_types.clear();
            }
        }
        let names = self.state.settings.iter().find(|(n, _)| n == "names").cloned();
        self.state = State {
            db: self.login_db.clone(),
            autocommit: true,
            settings: names.into_iter().collect(),
        };
        self.sig = self.state.signature();
        self.begin = None;
        self.pinned = None;
        self.tx_lost = false;
        self.stmts = Statements::default();
    }

    /// COM_INIT_DB: checked by a server (the held connection or the default shard's primary).
    async fn init_db(&mut self, payload: BytesMut) -> Result<(), ClientError> {
        let db = String::from_utf8_lossy(&payload[1..]).into_owned();
        let shard = self.default_shard();
        if !self.acquire(shard, true).await {
            return Ok(());
        }
        let out = self.relay(&payload, Kind::Simple).await?;
        if !out.failed
            && let Some(h) = &mut self.held
        {
            h.conn.db = db.clone();
            self.state.db = db;
        }
        self.after(out.status, false);
        Ok(())
    }

    /// A command any shard answers the same (COM_FIELD_LIST): on the held or default shard.
    async fn on_default(&mut self, payload: BytesMut, kind: Kind) -> Result<(), ClientError> {
        let shard = self.default_shard();
        if !self.acquire(shard, true).await {
            return Ok(());
        }
        let out = self.relay(&payload, kind).await?;
        self.after(out.status, false);
        Ok(())
    }

    /// The client left: a connection in a transaction is not reused (the server rolls back
    /// when it closes).
    fn leave(&mut self) {
        for mut p in self.parked.drain(..) {
            p.conn.broken = true;
        }
        if self.xid.is_some()
            && let Some(h) = self.held.as_mut()
        {
            h.conn.broken = true;
        }
        if let Some(mut h) = self.held.take()
            && (h.in_tx || self.pinned.is_some())
        {
            h.conn.broken = true;
        }
    }
}
