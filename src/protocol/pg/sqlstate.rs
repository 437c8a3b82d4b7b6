//! The SQLSTATE codes shardwire itself reports. Typed, so no call site invents a code string.

/// A five-character SQLSTATE code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    /// The code as sent on the wire.
    pub fn code(self) -> &'static str {
        self.0
    }

    /// 08P01 protocol_violation: malformed or out-of-order messages.
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    /// 08006 connection_failure: a backend could not be reached or dropped the connection.
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    /// 08001 sqlclient_unable_to_establish_sqlconnection: no node can take the statement.
    pub const UNABLE_TO_CONNECT: SqlState = SqlState("08001");
    /// 28P01 invalid_password.
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    /// 28000 invalid_authorization_specification: unknown user, wrong method.
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    /// 3D000 invalid_catalog_name: unknown database.
    pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
    /// 26000 invalid_sql_statement_name: unknown prepared statement.
    pub const INVALID_SQL_STATEMENT_NAME: SqlState = SqlState("26000");
    /// 34000 invalid_cursor_name: unknown portal.
    pub const INVALID_CURSOR_NAME: SqlState = SqlState("34000");
    /// 42501 insufficient_privilege.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 42P05 duplicate_prepared_statement.
    pub const DUPLICATE_PREPARED_STATEMENT: SqlState = SqlState("42P05");
    /// 54000 program_limit_exceeded: a statement longer than the proxy analyzes.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// 54001 statement_too_complex: an expression deeper than the proxy analyzes.
    pub const STATEMENT_TOO_COMPLEX: SqlState = SqlState("54001");
    /// 0A000 feature_not_supported: refused because it cannot be done correctly.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// character_not_in_repertoire: text that is not valid in the client's encoding.
    pub const CHARACTER_NOT_IN_REPERTOIRE: SqlState = SqlState("22021");
    /// 22P04 bad_copy_file_format: COPY data that cannot be routed.
    pub const BAD_COPY_FILE_FORMAT: SqlState = SqlState("22P04");
    /// 22023 invalid_parameter_value.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 55000 object_not_in_prerequisite_state: IDs refused (clock stepped back, lease lost).
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    /// 40000 transaction_rollback: a multi-shard write was rolled back.
    pub const TRANSACTION_ROLLBACK: SqlState = SqlState("40000");
    /// 25P02 in_failed_sql_transaction: the transaction failed; only ROLLBACK is accepted.
    pub const IN_FAILED_SQL_TRANSACTION: SqlState = SqlState("25P02");
    /// 53300 too_many_connections: the pool or the client limit is exhausted.
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    /// 57P01 admin_shutdown: shardwire is shutting down, or the session was terminated.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    /// 57014 query_canceled: the statement was cancelled (a session cancelling itself).
    pub const QUERY_CANCELED: SqlState = SqlState("57014");
    /// 42601 syntax_error: an admin command that does not parse.
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// 40001 serialization_failure: the transaction must be run again (a partition it used
    /// moved while it was open).
    pub const SERIALIZATION_FAILURE: SqlState = SqlState("40001");
    /// 42P01 undefined_table: a table named in a statement that does not exist.
    pub const UNDEFINED_TABLE: SqlState = SqlState("42P01");
    /// 58000 system_error: a failure inside shardwire (a bug), never a user's fault.
    pub const SYSTEM_ERROR: SqlState = SqlState("58000");
    /// F0000 config_file_error: a reload was rejected.
    pub const CONFIG_FILE_ERROR: SqlState = SqlState("F0000");
    /// 01000 warning, for notices.
    pub const WARNING: SqlState = SqlState("01000");
}
