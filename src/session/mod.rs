//! Client sessions: the listener and startup (`listener`), authentication (`auth`), and the
//! per-client relay that turns client messages into routed backend traffic (`frontend` handles
//! client messages, `checkout` holds a backend for them, `relay` runs the I/O loop, `responses`
//! matches backend responses to what was asked). Session state that must follow the client
//! across backend connections is in `state`.

pub mod admin;
pub mod auth;
mod bind_route;
mod checkout;
pub mod client;
mod collation;
mod columns;
mod copy_out;
mod dealloc;
mod encoding;
mod fence;
mod frontend;
mod heavy;
mod ids;
mod insert_select;
mod local;
mod local_portal;
mod multi;
mod multi_copy;
mod multi_write;
mod prepared;
pub use multi_write::DECISION_TABLE_DDL as TWO_PHASE_DECISION_DDL;
pub mod listener;
mod relay;

mod materialize;
mod responses;
mod retry;
mod ryw;
mod script;
mod select_rows;
mod sharding;
mod signal;
mod sql_types;
pub mod state;
mod statements;
mod transaction;
mod tx_control;
mod tx_end;
mod tx_legs;
pub mod values;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::app::clients::ClientHandle;
use crate::app::{Runtime, Shared};
use crate::backend::Checkout;
use crate::config::User;
use crate::protocol::pg::Frame;
use client::ClientConn;
use state::{Ops, Portals, SessionVars, Stmt};

/// The backend connection a session holds, with the responses it still owes.
struct Held {
    checkout: Checkout,
    /// The shard the connection belongs to.
    shard: crate::shardmap::ShardId,
    /// Responses expected, in order.
    ops: Ops,
    /// Bytes to send to the backend.
    wbuf: BytesMut,
    /// Transaction status from the last ReadyForQuery.
    tx_status: u8,
    /// A BEGIN was sent and its ReadyForQuery has not arrived.
    begin_pending: bool,
    /// A write ran on the primary since checkout (read-your-writes captures the position after it).
    wrote: bool,
    /// Extended-protocol messages were sent since the last Sync: the backend is mid-exchange (and
    /// after an error, skipping until Sync), so it cannot go back to the pool yet.
    needs_sync: bool,
    /// The backend is in COPY FROM STDIN mode: it ignores Sync and Flush until CopyDone/CopyFail.
    copy_in: bool,
    /// A ROLLBACK completed since the last ReadyForQuery.
    rolled_back: bool,
    /// Everything run on it since checkout only read: inside a transaction spanning shards, it
    /// commits without two-phase commit.
    only_read: bool,
    /// The shared map when it joined the session (`fence::plan_checked`).
    joined: Arc<crate::shardmap::ShardMap>,
}

impl Held {
    fn in_transaction(&self) -> bool {
        self.tx_status != b'I' || self.begin_pending
    }

    /// Nothing is owed, nothing is being sent or read, and no pipeline is open: the connection
    /// can be set aside (idle in its transaction) while the session works on another shard.
    fn quiet(&self) -> bool {
        self.ops.is_empty()
            && self.wbuf.is_empty()
            && !self.needs_sync
            && !self.copy_in
            && self.checkout.conn.rbuf.is_empty()
    }

    /// Nothing is owed and nothing is open: the connection may serve another client.
    fn is_free(&self) -> bool {
        self.ops.is_empty()
            && self.wbuf.is_empty()
            && !self.in_transaction()
            && !self.needs_sync
            && self.checkout.conn.rbuf.is_empty()
    }
}

/// What a client message handler decided.
enum Flow {
    /// Go on with the next message.
    Continue,
    /// The message needs another backend than the one held: keep it until that one is released.
    Stall(Frame),
    /// The client said goodbye.
    Terminate,
}

/// Outcome of making sure a backend is held for a statement.
enum Ensure {
    Ready,
    Stall,
    /// An error was already reported to the client.
    Failed,
}

/// How a session ends when it ends on its own.
enum Ending {
    /// With this FATAL error, still to be sent: the backend that held its state (pinned, or
    /// session pooling) is gone, and going on silently on a fresh one would lose that state.
    Tell(crate::protocol::pg::sqlstate::SqlState, String),
    /// With a FATAL error the client has been given (the server's answer to its statement, or a
    /// session terminating itself): the connection closes once what precedes it is written.
    Told,
}

/// One client's session on the data path.
pub struct Session {
    shared: Arc<Shared>,
    client: ClientConn,
    handle: Arc<ClientHandle>,
    user: Arc<User>,
    /// Config and cluster snapshot, refreshed whenever no backend is held.
    runtime: Arc<Runtime>,
    vars: SessionVars,
    /// Named prepared statements by client name.
    stmts: HashMap<String, Arc<Stmt>>,
    /// The unnamed prepared statement.
    unnamed: Option<Arc<Stmt>>,
    /// Portals by name, with the statement they were bound from.
    portals: Portals,
    held: Option<Held>,
    /// The response queue and send buffer of the last backend held, emptied, kept for the next
    /// checkout so a transaction does not allocate and grow them again.
    spare: Option<(Ops, BytesMut)>,
    /// Why the session keeps its backend for good, if it does.
    pinned: Option<&'static str>,
    /// The read being answered by a replica outside a transaction, while nothing of its answer
    /// has reached the client: if the replica fails now, it is tried once more on another node
    /// instead of failing (see `retry`).
    retry: retry::Retry,
    /// The messages being handled are that second try (until its Sync, or its Query).
    retrying: bool,
    /// Messages of a read tried again, handled ahead of what the client sends next.
    replay: std::collections::VecDeque<Frame>,
    /// The last message handled ended a batch (Sync, Query): the next one starts one.
    between_batches: bool,
    /// The session is ending (see `Ending`).
    ending: Option<Ending>,
    /// Read-your-writes: the commit position of the session's last write on each shard.
    ryw: ryw::Positions,
    /// After an error the proxy raised in the extended protocol, skip messages until Sync.
    ignore_till_sync: bool,
    /// A message waiting for the held backend to be released.
    stalled: Option<Frame>,
    /// The last statement text analyzed and its facts: clients that send the same text again and
    /// again (unnamed statements in the extended protocol) skip even the cache lookup.
    last_facts: Option<(String, Arc<crate::analyze::Facts>)>,
    /// Session parameters as they were before the first SET of the open transaction: a rollback
    /// undoes those SETs on the server, so the session's record must be undone too.
    vars_before_txn: Option<SessionVars>,
    /// A BEGIN the proxy answered itself: it is sent ahead of the transaction's first statement,
    /// on the shard that statement routes to.
    pending_begin: Option<String>,
    /// The open transaction's connections on other shards than the held one, idle in it: a
    /// transaction joins each shard it touches (see `transaction`).
    parked: Vec<Held>,
    /// The BEGIN that opened the transaction, as the client sent it: a shard the transaction
    /// joins later starts the same way (isolation level, READ ONLY, DEFERRABLE).
    tx_begin: Option<String>,
    /// The shard held before a statement on several shards borrowed the transaction's
    /// connections: held again afterwards.
    lent_from: Option<crate::shardmap::ShardId>,
    /// That BEGIN said READ ONLY: its statements may be read on replicas.
    tx_read_only: bool,
    /// A message is stalled until the held connection is quiet (not released): the transaction
    /// moves to another shard, or ends on all of them.
    switch_wait: bool,
    /// A pipeline's implicit transaction was made a transaction block to span shards: the
    /// client's Sync commits it on every shard.
    implicit_multi: bool,
    /// A query string run statement by statement (`script`).
    script: Option<Box<script::Script>>,
    /// A merge's output is read by shardwire itself (`select_rows`), not sent: the most it
    /// may hold.
    capture: Option<usize>,
    /// The extended-protocol ROLLBACK of a failed transaction was answered here: the held
    /// connection rolls back at the client's Sync (it skips everything until a Sync).
    rollback_at_sync: bool,
    /// DDL ran in the open transaction: the cached column lists are forgotten again when it ends.
    ddl_in_tx: bool,
    /// The open transaction failed in the proxy (a statement would have crossed shards): like
    /// PostgreSQL's aborted state, only ROLLBACK is accepted until it ends.
    tx_refused: bool,
    /// An extended-protocol portal whose statement runs on several shards, bound but not run.
    multi_portal: Option<multi::MultiPortal>,
    /// An extended-protocol portal the proxy answers itself (a deferred BEGIN, or the COMMIT or
    /// ROLLBACK of a transaction that never reached a shard), with its command tag.
    local_portal: Option<(String, local_portal::LocalPortal)>,
    /// Answers the proxy gave itself while no backend was held, in the middle of an extended-
    /// protocol batch (ParseComplete of a deferred Parse): sent with the backend's first answers
    /// or at Sync, so the client gets one write, not two.
    early: bytes::BytesMut,
    /// Fires when shardwire shuts down: the session ends as soon as it holds no backend. Made
    /// once per session and polled in place, so waiting on it costs no registration per wait.
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}
