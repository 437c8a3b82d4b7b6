//! A MySQL session's server connection: taking one from a node's pool, bringing it to the
//! session's state (database, `autocommit`, settings) before the first statement, and giving
//! it back when the server says no transaction is open and nothing pins it.
//!
//! A connection carries the signature of the settings applied to it. One that carries another
//! session's settings is reset first (COM_RESET_CONNECTION: settings, user variables, temporary
//! tables and prepared statements go), so no setting of one client ever leaks into another's
//! statements.

use crate::backend::mysql::{MyError, Pooled};
use crate::protocol::mysql::cmd;
use crate::protocol::mysql::response::Kind;
use crate::shardmap::ShardId;
use std::hash::{Hash, Hasher};

/// The connection a session holds.
pub(super) struct Held {
    /// Its shard.
    pub shard: ShardId,
    /// The connection.
    pub conn: Pooled,
    /// On the shard's primary.
    pub primary: bool,
    /// The server's last status said a transaction is open.
    pub in_tx: bool,
    /// A statement that needs the primary ran in the open transaction.
    pub wrote: bool,
}

/// The session state replayed on every connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct State {
    /// Current database.
    pub db: String,
    /// `autocommit`.
    pub autocommit: bool,
    /// `SET` statements by setting name, in the order first set.
    pub settings: Vec<(String, String)>,
}

impl State {
    /// Signature of the settings (0: none).
    pub fn signature(&self) -> u64 {
        if self.settings.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.settings.hash(&mut h);
        h.finish() | 1
    }

    /// Records `SET` statements that succeeded.
    pub fn set(&mut self, name: &str, sql: &str) {
        match self.settings.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = sql.to_owned(),
            None => self.settings.push((name.to_owned(), sql.to_owned())),
        }
    }
}

/// The settings mark of a connection just reset, whose character set still has to be set.
pub(super) const RESET: u64 = u64::MAX - 1;

/// The state of the proxy's own statements: autocommit, no settings, the connection's database.
pub(super) fn plain(conn: &Pooled) -> State {
    State {
        db: conn.db.clone(),
        autocommit: true,
        settings: Vec::new(),
    }
}

/// Brings `conn` to `state`: a reset if it carries other settings, then the settings, the
/// `autocommit` value and the database, in as few round trips as possible.
pub(super) async fn sync(conn: &mut Pooled, state: &State, sig: u64) -> Result<(), MyError> {
    if conn.settings != sig && conn.settings != 0 && conn.settings != RESET {
        conn.run(&[cmd::RESET_CONNECTION], Kind::Simple).await?;
        conn.settings = RESET;
        conn.autocommit = true;
        conn.prepared.clear();
        conn.bound_types.clear();
    }
    let mut sql = String::new();
    if conn.settings == RESET {
        // A reset returns the character set to the server's default, which may not be the
        // utf8mb4 every connection logs in with.
        sql.push_str("SET NAMES utf8mb4;");
    }
    if conn.settings != sig {
        for (_, s) in &state.settings {
            sql.push_str(s);
            sql.push(';');
        }
    }
    if conn.autocommit != state.autocommit {
        sql.push_str(if state.autocommit {
            "SET autocommit=1;"
        } else {
            "SET autocommit=0;"
        });
    }
    if !sql.is_empty() {
        sql.pop();
        if let Err(e) = conn.query(&sql).await {
            // Half applied: the connection's state is unknown.
            conn.broken = true;
            return Err(e);
        }
        conn.settings = sig;
        conn.autocommit = state.autocommit;
    }
    if conn.settings == RESET {
        conn.settings = 0;
    }
    if conn.db != state.db && !state.db.is_empty() {
        let mut c = vec![cmd::INIT_DB];
        c.extend_from_slice(state.db.as_bytes());
        conn.run(&c, Kind::Simple).await?;
        conn.db = state.db.clone();
    }
    Ok(())
}
