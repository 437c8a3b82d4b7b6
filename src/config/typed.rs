//! The configuration as the rest of shardwire reads it: every setting typed (enums, `NonZero*`,
//! `Duration`, parsed addresses) and defaulted, so no reader parses a string or applies a default
//! of its own. Only `validate` builds a [`Config`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::nodes::{NodeConfig, ShardConfig};

/// Most statements the proxy keeps prepared on one backend connection unless
/// `pool.max_prepared_statements` says otherwise. Past it, the least recently used is closed on
/// the server before another is prepared, so a client that prepares ever new texts cannot grow
/// every backend's memory without bound (PgBouncer, PgCat and PgDog cap theirs the same way).
pub const DEFAULT_MAX_PREPARED: usize = 500;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener and client-facing settings.
    pub server: ServerConfig,
    /// Backend pools.
    pub pool: PoolConfig,
    /// Read/write split and lag.
    pub routing: RoutingConfig,
    /// Users by name.
    pub users: HashMap<String, Arc<User>>,
    /// The shards, in the order of the shard map's `shards` (a [`crate::shardmap::ShardId`]
    /// indexes this list).
    pub shards: Vec<ShardConfig>,
    /// With `[cluster]`: `[[shards]]` entries the serving map does not name yet (a shard being
    /// added: every instance gets its entry first, then the map in etcd names it).
    pub spare_shards: Vec<ShardConfig>,
    /// Which shard holds which rows; one shard and no sharded tables when no map is configured.
    pub map: Arc<crate::shardmap::ShardMap>,
    /// The map's file (`[sharding] map`), which admin map commands edit.
    pub map_path: Option<std::path::PathBuf>,
    /// Globally unique IDs, when configured.
    pub ids: Option<IdsConfig>,
    /// Sharing the shard map with other instances through etcd (`[cluster]`).
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the shard map lives in etcd, shared by every instance of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Prefix of the cluster's keys (no trailing `/`).
    pub prefix: String,
    /// This instance's name.
    pub name: String,
    /// An instance without a heartbeat for this long is no longer listed.
    pub ttl: std::time::Duration,
}

/// Where the worker id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerId {
    /// Fixed in the configuration.
    Fixed(u16),
    /// Leased from a PostgreSQL database.
    Leased {
        /// The lease store.
        store: NodeConfig,
        /// Lease length.
        ttl: Duration,
    },
    /// Leased through the cluster's etcd (`[ids] lease = "etcd"` with `[cluster]`).
    Etcd {
        /// Lease length.
        ttl: Duration,
    },
}

/// `[ids]`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdsConfig {
    /// Worker id source.
    pub worker: WorkerId,
    /// Epoch in Unix milliseconds.
    pub epoch_ms: u64,
    /// Largest backward clock step waited out.
    pub clock_tolerance: Duration,
}

/// How long a backend connection stays with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// For one transaction, or one statement outside a transaction.
    Transaction,
    /// For the whole client connection.
    Session,
}

/// `[server]`, typed.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client listener.
    pub listen: SocketAddr,
    /// MySQL client listener (clusters of MySQL/MariaDB shards).
    pub mysql_listen: Option<SocketAddr>,
    /// Auth plugin offered to MySQL clients first (both are accepted).
    pub mysql_auth: &'static str,
    /// HTTP listener for metrics and health.
    pub admin_http: Option<SocketAddr>,
    /// Pooling mode.
    pub pool_mode: PoolMode,
    /// Database name clients connect to.
    pub database: String,
    /// Most client connections at once.
    pub max_client_connections: usize,
    /// Largest client message in bytes.
    pub max_message_size: usize,
    /// What one statement text may cost to analyze.
    pub limits: crate::analyze::Limits,
    /// How long shutdown waits for clients.
    pub shutdown_timeout: Duration,
    /// How often the configuration and map files are checked for changes, if they are.
    pub watch_files: Option<Duration>,
    /// Worker threads. Fewer threads than cores keeps a client's wake-ups on one thread, which
    /// matters more for latency than parallelism when the database shares the machine.
    pub workers: usize,
    /// TLS for clients, when configured.
    pub tls: Option<super::tls::TlsConfig>,
}

/// `[pool]`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per node.
    pub min_size: u32,
    /// Most connections per node.
    pub max_size: NonZeroU32,
    /// Wait for a connection before the client gets an error.
    pub checkout_timeout: Duration,
    /// Time to open a backend connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this close.
    pub idle_timeout: Duration,
    /// Most statements the proxy keeps prepared on one backend connection.
    pub max_prepared: usize,
}

/// What reads do when no replica is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenNoReplica {
    /// Serve them from the primary.
    Primary,
    /// Fail them with an error.
    Refuse,
}

/// How reads are spread over replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// In turn.
    RoundRobin,
    /// To the replica with the fewest connections in use.
    LeastOutstanding,
}

/// `[routing]`, typed.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Time lag bound.
    pub max_lag: Duration,
    /// Byte lag bound.
    pub max_lag_bytes: u64,
    /// Lag check interval.
    pub check_interval: Duration,
    /// Fallback for reads.
    pub when_no_replica: WhenNoReplica,
    /// Replica choice.
    pub balance: Balance,
    /// Good checks in a row before a replica rejoins.
    pub healthy_after: NonZeroU32,
    /// Function names (lower case) whose calls force the primary, built-in ones included.
    pub primary_functions: HashSet<String>,
    /// Read-your-writes default for users that do not set it.
    pub read_your_writes: bool,
    /// Bytes of rows a statement may read into shardwire before it runs (its subqueries, WITH
    /// queries or tables that the shards cannot answer alone); 0 turns that off.
    pub max_intermediate_bytes: usize,
    /// Follow a promotion of a replica (writes move to it) or wait for the configuration.
    pub failover: Failover,
}

/// What the monitor does when a replica is promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// Writes go to the promoted replica; the old primary is fenced.
    Follow,
    /// Nothing: a DBA changes the configuration.
    Manual,
}

/// How a user proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// SCRAM-SHA-256 against a verifier.
    Scram(ScramVerifier),
    /// md5 against `md5(password || user)` in hex.
    Md5 {
        /// The 32 hex digits, without the "md5" prefix.
        hash: String,
    },
    /// No password.
    Trust,
}

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt, decoded.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScramVerifier(<redacted>)")
    }
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<ScramVerifier> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramVerifier {
            iterations: iterations.parse().ok()?,
            salt: b64.decode(salt).ok()?,
            stored_key: b64.decode(stored).ok()?,
            server_key: b64.decode(server).ok()?,
        })
    }
}

/// A client login.
#[derive(Debug)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Method and secret.
    pub auth: Auth,
    /// May use the admin console.
    pub admin: bool,
    /// Read-your-writes for this user.
    pub read_your_writes: bool,
    /// What MySQL logins check: the plain password (both MySQL auth plugins need it or its
    /// SHA-1 stage), or `Some("")` for trust. `None` when only a verifier or hash was given: such
    /// a user cannot log in over the MySQL protocol.
    pub mysql_password: Option<String>,
}
