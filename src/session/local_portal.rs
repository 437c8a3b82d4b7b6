//! Portals the proxy answers itself (made by `ids`, `signal` and the transaction paths; answered
//! by `local`).

/// A portal the proxy answers itself.
pub enum LocalPortal {
    /// A statement with only a command tag (a deferred BEGIN, an empty transaction's end).
    Tag(&'static str),
    /// The answer of a signal call (`pg_terminate_backend`, `pg_cancel_backend`), one row.
    Signal {
        /// Column name.
        column: &'static str,
        /// The answer; taken by the first Execute.
        value: Option<bool>,
        /// Result format (0 text, 1 binary).
        format: i16,
    },
    /// IDs, one per row.
    Ids {
        /// Column name.
        column: &'static str,
        /// The IDs.
        ids: Vec<u64>,
        /// Result format (0 text, 1 binary).
        format: i16,
    },
}
