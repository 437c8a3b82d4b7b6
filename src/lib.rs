//! shardwire: a PostgreSQL wire-protocol proxy that routes each statement to the right node.
//!
//! # Layout
//!
//! The data path, one task per client connection, each layer calling only the one below:
//!
//! 1. [`protocol`]: PostgreSQL codecs, bytes ⇄ messages, no sockets.
//! 2. [`session`]: startup, authentication, the per-client relay; transaction and session state
//!    (parameters replayed on every backend used, prepared statements re-prepared where needed).
//! 3. [`analyze`]: SQL text → [`analyze::Facts`] (read or primary-only, transaction effect, SET).
//! 4. [`plan`]: facts + session context → a [`plan::Target`]. Pure.
//! 5. [`backend`]: pools per node (bb8), raw backend connections, replica choice, the writer of
//!    each shard (which follows a failover).
//!
//! Statements on several shards are merged by [`exec`], which knows no wire protocol: the
//! session hands it the shards' rows and takes the merged ones through traits it implements.
//!
//! Beside it, the control plane: [`health`] (lag and liveness monitor publishing snapshots the
//! data path reads), [`admin`] (the console's tables and `/metrics`), [`config`] (load and
//! validate), and [`app`] (shared handles, reload, serve). Neutral data modules any layer may use:
//! [`copy_format`] (COPY text and CSV), [`shardmap`],
//! [`ids`]. [`sandbox`] starts real PostgreSQL topologies for the demo and the tests.

pub mod admin;
pub mod analyze;
pub mod app;
pub mod backend;
pub mod config;
pub mod copy_format;
pub mod etcd;
pub mod exec;
pub mod health;
pub mod ids;
pub mod mysql;
pub mod net;
pub mod plan;
pub mod protocol;
pub mod rebalance;
pub mod sandbox;
pub mod sandbox_mysql;
pub mod serve;
pub mod session;
pub mod shardmap;
