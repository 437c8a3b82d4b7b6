//! The queue of responses expected from the backend in use. A backend answers in order, but not
//! everything it answers was asked by the client (the proxy's own Parse, Sync, ROLLBACK or
//! settings replay) and not everything the client gets comes from it, so each entry says what
//! its response is and whether the client sees it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::analyze::SetOp;

/// The extended-protocol message an [`Op::Ext`] answers.
#[derive(Debug)]
pub enum ExtKind {
    /// Parse; on failure forget that the backend holds statement `forget`.
    Parse {
        /// Hash of a named statement marked prepared on the backend when sent.
        forget: Option<u64>,
        /// The client's name for it, dropped if the Parse fails.
        client_name: Option<String>,
    },
    /// Bind.
    Bind,
    /// Describe (statement or portal).
    Describe,
    /// Execute; applies `set_ops` on success.
    Execute {
        /// Session parameter changes of the executed statement.
        set_ops: Vec<SetOp>,
    },
    /// Close of a portal.
    Close,
}

/// One response (group) expected from the backend, or one the proxy produces itself, in the order
/// the client must see them.
#[derive(Debug)]
pub enum Op {
    /// A simple Query: everything up to ReadyForQuery is forwarded.
    Query {
        /// Applied when the query completes without error.
        set_ops: Vec<SetOp>,
        /// An ErrorResponse was seen.
        failed: bool,
    },
    /// An extended-protocol message.
    Ext(ExtKind),
    /// Sync: ReadyForQuery.
    Sync,
    /// A message the proxy answers itself (ParseComplete for a statement the backend already
    /// holds, CloseComplete, an error), emitted when it reaches the front.
    Synth(Bytes),
    /// A Parse the proxy added before Bind/Describe: its ParseComplete is swallowed.
    Inject {
        /// Named statement hash to forget if it fails or is skipped.
        forget: Option<u64>,
    },
    /// A Close of a statement the proxy prepared, to stay under `pool.max_prepared_statements`:
    /// its CloseComplete is swallowed.
    Evict {
        /// The statement's hash, taken back if the Close is skipped after an error.
        hash: u64,
    },
    /// Where the client ended a COPY FROM STDIN before the server said it started one: Syncs queued
    /// before it are ignored by the server. Answers nothing.
    CopyEnd,
    /// The replay of session parameters: swallowed through ReadyForQuery.
    SyncVars,
    /// A Sync the proxy added to end a pipeline on this backend so the rest of the client's
    /// pipeline can go to another node: its ReadyForQuery is swallowed. `failed`: an error came
    /// before it, so the client's remaining messages are skipped until its own Sync, as the
    /// server would have.
    PipelineSync {
        /// An error preceded it.
        failed: bool,
    },
    /// A Bind of a statement that cannot exist, sent after an error the proxy raised itself in a
    /// pipeline: it fails on the backend too, so the pipeline's implicit transaction (or the
    /// transaction block) is rolled back at Sync as when the server raises an error, and nothing
    /// the pipeline ran before the error is committed. Its ErrorResponse is swallowed.
    Abort,
    /// An extended-protocol BEGIN the proxy added in the middle of a pipeline, turning its
    /// implicit transaction into a transaction block so it can span shards: its ParseComplete,
    /// BindComplete and CommandComplete are swallowed.
    HiddenBegin,
    /// Something the proxy sent on its own (a Sync, a ROLLBACK): everything through its
    /// ReadyForQuery is swallowed, errors included.
    Hidden,
    /// `pg_current_wal_lsn()` after a write, for read-your-writes: swallowed, value kept.
    CaptureLsn {
        /// The position read.
        lsn: Option<u64>,
        /// The shard written.
        shard: crate::shardmap::ShardId,
    },
}

/// The queue of expected responses of the backend connection in use.
pub type Ops = VecDeque<Op>;
