//! What analysis learns about a statement text: everything routing needs, nothing about protocols.

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A read without side effects: a replica under the lag bound will do.
    Read,
    /// Writes, DDL, locks, side-effecting functions, anything not understood: the primary.
    Primary,
}

/// What a statement does to the transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxEffect {
    /// Nothing.
    None,
    /// BEGIN / START TRANSACTION.
    Begin {
        /// `READ ONLY` was given.
        read_only: bool,
    },
    /// COMMIT, ROLLBACK, END, ABORT.
    End,
}

/// A change to session parameters, replayed on every backend connection the client uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOp {
    /// `SET name ...`: `sql` replays it.
    Set {
        /// Parameter name, lower case.
        name: String,
        /// A statement that sets it again.
        sql: String,
    },
    /// `RESET name`.
    Reset {
        /// Parameter name, lower case.
        name: String,
    },
    /// `RESET ALL` or `DISCARD ALL`.
    ResetAll,
    /// `SAVEPOINT name`: the parameters as they are now can be gone back to.
    Savepoint {
        /// Savepoint name, as the server folds it.
        name: String,
    },
    /// `ROLLBACK TO [SAVEPOINT] name`: the parameters go back to what they were at the savepoint.
    RollbackTo {
        /// Savepoint name.
        name: String,
    },
    /// `RELEASE [SAVEPOINT] name`: that savepoint and later ones go; the parameters stand.
    Release {
        /// Savepoint name.
        name: String,
    },
}

/// The facts of one statement text (which may hold several statements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Where it may run.
    pub need: Need,
    /// Effect on the transaction state (of the first statement that has one).
    pub tx: TxEffect,
    /// Session parameter changes, in order.
    pub set_ops: Vec<SetOp>,
    /// Session state that cannot be replayed on another connection (temporary tables, SQL-level
    /// PREPARE, LISTEN, WITH HOLD cursors, session advisory locks): the client keeps its backend.
    pub pins_session: Option<&'static str>,
    /// The text parsed; if not, it goes to the primary and the database reports the error.
    pub parsed: bool,
    /// A `/* shardwire: primary */` hint was given.
    pub hint_primary: bool,
    /// A call the proxy answers itself (`SELECT shardwire.next_id()`).
    pub proxy_call: Option<ProxyCall>,
    /// `DEALLOCATE` or `DISCARD ALL`: protocol-level prepared statements go away.
    pub dealloc: Option<Dealloc>,
    /// Not analyzed: over the size or depth limits. The client gets an error, no backend sees it.
    pub too_complex: Option<super::TooComplex>,
    /// A read with `current_setting($n)` (index n-1): the primary answers it when the parameter
    /// is `transaction_read_only` (on a hot standby always `on`), which only the Bind tells.
    pub setting_param: Option<usize>,
}

/// Prepared statements a statement deallocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dealloc {
    /// `DEALLOCATE ALL`, `DISCARD ALL`: every one on the connection.
    All,
    /// `DEALLOCATE name`.
    Named(String),
}

/// Statements shardwire answers without a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyCall {
    /// `SELECT shardwire.next_id()`: one ID.
    NextId,
    /// `SELECT shardwire.next_ids(n)`: n IDs, one per row; the count as written or a parameter.
    NextIds(Count),
    /// `SELECT pg_terminate_backend(pid)` (`terminate`) or `SELECT pg_cancel_backend(pid)`: answered
    /// by the proxy when the pid is one it gave a client at login, sent to the server otherwise.
    Signal {
        /// Terminate rather than cancel.
        terminate: bool,
        /// The process id, as written or a parameter.
        pid: Count,
    },
}

/// The count of `next_ids`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Count {
    /// A literal.
    Lit(u64),
    /// `$n`, as index n-1.
    Param(usize),
}

impl Facts {
    /// Facts of a text that did not parse: primary, no known effects.
    pub fn unparsed() -> Facts {
        Facts {
            need: Need::Primary,
            tx: TxEffect::None,
            set_ops: Vec::new(),
            pins_session: None,
            parsed: false,
            hint_primary: false,
            proxy_call: None,
            dealloc: None,
            too_complex: None,
            setting_param: None,
        }
    }
}

/// Functions that write, take locks or read sequences: a call sends the statement to the primary.
pub const DEFAULT_PRIMARY_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    // The fate of a transaction is known where it ran: a standby may not have replayed it yet.
    "txid_status",
    "pg_xact_status",
    "set_config",
    "dblink_exec",
    "lo_import",
    "lo_create",
    "lo_unlink",
];
