//! Raw config → typed config. Every check that `serve`, `check` and `RELOAD` run is here, and
//! every error names the field it is about.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::nodes::node;
pub use super::nodes::{Engine, NodeConfig, ShardConfig};
use super::raw::{RawConfig, RawUser};
use super::{ConfigError, err, one_of};

/// Most statements the proxy keeps prepared on one backend connection unless
/// `pool.max_prepared_statements` says otherwise. Past it, the least recently used is closed on
/// the server before another is prepared, so a client that prepares ever new texts cannot grow
/// every backend's memory without bound (PgBouncer, PgCat and PgDog cap theirs the same way).
pub const DEFAULT_MAX_PREPARED: usize = 500;

/// The validated configuration.
#[derive(Debug)]
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
    /// Which shard holds which rows; one shard and no sharded tables when no map is configured.
    pub map: Arc<crate::shardmap::ShardMap>,
    /// The map's file (`[sharding] map`), which admin map commands edit.
    pub map_path: Option<std::path::PathBuf>,
    /// Globally unique IDs, when configured.
    pub ids: Option<IdsConfig>,
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
#[derive(Debug)]
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
#[derive(Debug, PartialEq, Eq)]
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
#[derive(Debug)]
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

fn addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| err(path, format!("`{s}` is not an address like 127.0.0.1:6432")))
}

/// Validates a parsed file.
pub fn validate(raw: RawConfig, base: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let (shards, map, map_path) = super::shards::shards_and_map(&raw, base)?;
    let default_db = shards[map.default_shard].primary.dbname.clone();
    let s = &raw.server;
    let server = ServerConfig {
        listen: addr("server.listen", &s.listen)?,
        mysql_listen: s
            .mysql_listen
            .as_deref()
            .map(|a| addr("server.mysql_listen", a))
            .transpose()?,
        mysql_auth: one_of(
            "server.mysql_auth",
            s.mysql_auth.as_deref(),
            "mysql_native_password",
            &[
                ("mysql_native_password", "mysql_native_password"),
                ("caching_sha2_password", "caching_sha2_password"),
            ],
        )?,
        admin_http: s
            .admin_http
            .as_deref()
            .map(|a| addr("server.admin_http", a))
            .transpose()?,
        pool_mode: one_of(
            "server.pool_mode",
            s.pool_mode.as_deref(),
            PoolMode::Transaction,
            &[("transaction", PoolMode::Transaction), ("session", PoolMode::Session)],
        )?,
        database: s.database.clone().unwrap_or(default_db),
        max_client_connections: s.max_client_connections.unwrap_or(10_000),
        max_message_size: s.max_message_size.unwrap_or(64 << 20),
        limits: crate::analyze::Limits {
            max_bytes: s.max_statement_size.unwrap_or(8 << 20),
            max_depth: s.max_expression_depth.unwrap_or(crate::analyze::limits::MAX_DEPTH),
        },
        shutdown_timeout: s.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
        watch_files: s.watch_files.filter(|d| !d.is_zero()),
        workers: match s.workers {
            Some(0) => return Err(err("server.workers", "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        },
        tls: s.tls.as_ref().map(|t| super::tls::load(t, base)).transpose()?,
    };
    let engine = shards[0].primary.engine;
    for (i, sh) in shards.iter().enumerate() {
        if let Some(n) = std::iter::once(&sh.primary)
            .chain(&sh.replicas)
            .find(|n| n.engine != engine)
        {
            return Err(err(
                format!("shards[{i}]"),
                format!(
                    "node {} is {} but shard 0's primary is {}: one cluster speaks one protocol",
                    n.name, n.engine, engine
                ),
            ));
        }
    }
    if engine == Engine::MySql && server.mysql_listen.is_none() {
        return Err(err(
            "server.mysql_listen",
            "the shards are MySQL servers (mysql:// URLs): set the address MySQL clients connect to",
        ));
    }
    if engine == Engine::Postgres && server.mysql_listen.is_some() {
        return Err(err(
            "server.mysql_listen",
            "the shards are PostgreSQL servers: a MySQL listener needs mysql:// shards",
        ));
    }
    if server.database == "shardwire" {
        return Err(err("server.database", "`shardwire` is the admin console's name"));
    }
    if server.max_message_size < 1024 {
        return Err(err("server.max_message_size", "must be at least 1024 bytes"));
    }
    if server.limits.max_bytes < 1024 {
        return Err(err("server.max_statement_size", "must be at least 1024 bytes"));
    }
    if !(16..=crate::analyze::limits::MAX_DEPTH).contains(&server.limits.max_depth) {
        return Err(err(
            "server.max_expression_depth",
            format!("must be between 16 and {}", crate::analyze::limits::MAX_DEPTH),
        ));
    }
    let p = &raw.pool;
    let pool = PoolConfig {
        min_size: p.min_size.unwrap_or(0),
        max_size: NonZeroU32::new(p.max_size.unwrap_or(20))
            .ok_or_else(|| err("pool.max_size", "must be at least 1"))?,
        checkout_timeout: p.checkout_timeout.unwrap_or(Duration::from_secs(5)),
        connect_timeout: p.connect_timeout.unwrap_or(Duration::from_secs(5)),
        idle_timeout: p.idle_timeout.unwrap_or(Duration::from_secs(600)),
        max_prepared: match p.max_prepared_statements {
            Some(0) => return Err(err("pool.max_prepared_statements", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_PREPARED,
        },
    };
    if pool.min_size > pool.max_size.get() {
        return Err(err("pool.min_size", "must not exceed pool.max_size"));
    }
    let routing = routing(&raw)?;
    let mut users = HashMap::new();
    for (i, u) in raw.users.iter().enumerate() {
        let user = user(&format!("users[{i}]"), u, routing.read_your_writes)?;
        if users.insert(user.name.clone(), Arc::new(user)).is_some() {
            return Err(err(
                format!("users[{i}].name"),
                format!("user `{}` is listed twice", u.name),
            ));
        }
    }
    if users.is_empty() {
        return Err(err("users", "at least one [[users]] entry is needed"));
    }
    let ids = match &raw.ids {
        None => None,
        Some(i) => {
            let worker = match (i.worker_id, &i.lease) {
                (Some(_), Some(_)) => return Err(err("ids", "give worker_id or lease, not both")),
                (None, None) => {
                    return Err(err(
                        "ids.worker_id",
                        "give this instance a worker id, 0..=1023, unique among running instances, or a lease store (ids.lease)",
                    ));
                }
                (Some(w), None) if w > crate::ids::MAX_WORKER => {
                    return Err(err("ids.worker_id", format!("{w} is out of range 0..=1023")));
                }
                (Some(w), None) => WorkerId::Fixed(w),
                (None, Some(url)) => {
                    let ttl = i.lease_ttl.unwrap_or(Duration::from_secs(10));
                    if ttl < Duration::from_millis(300) {
                        return Err(err("ids.lease_ttl", "must be at least 300ms"));
                    }
                    WorkerId::Leased {
                        store: node("ids-lease", "ids.lease", url)?,
                        ttl,
                    }
                }
            };
            let epoch_ms = i.epoch_ms.unwrap_or(crate::ids::DEFAULT_EPOCH_MS);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if epoch_ms > now {
                return Err(err("ids.epoch_ms", "the epoch is in the future"));
            }
            Some(IdsConfig {
                worker,
                epoch_ms,
                clock_tolerance: i.clock_tolerance.unwrap_or(Duration::from_millis(5)),
            })
        }
    };
    Ok(Config {
        server,
        pool,
        routing,
        users,
        shards,
        map: Arc::new(map),
        map_path,
        ids,
    })
}

fn routing(raw: &RawConfig) -> Result<RoutingConfig, ConfigError> {
    let r = &raw.routing;
    let check_interval = r.lag_check_interval.unwrap_or(Duration::from_millis(200));
    if check_interval < Duration::from_millis(10) {
        return Err(err("routing.lag_check_interval", "must be at least 10ms"));
    }
    let mut primary_functions: HashSet<String> = crate::analyze::DEFAULT_PRIMARY_FUNCTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    primary_functions.extend(r.primary_functions.iter().map(|f| f.to_ascii_lowercase()));
    Ok(RoutingConfig {
        max_lag: r.max_replica_lag.unwrap_or(Duration::from_secs(1)),
        max_lag_bytes: r.max_replica_lag_bytes.unwrap_or(16 << 20),
        check_interval,
        when_no_replica: one_of(
            "routing.when_no_replica",
            r.when_no_replica.as_deref(),
            WhenNoReplica::Primary,
            &[("primary", WhenNoReplica::Primary), ("refuse", WhenNoReplica::Refuse)],
        )?,
        failover: one_of(
            "routing.failover",
            r.failover.as_deref(),
            Failover::Follow,
            &[("follow", Failover::Follow), ("manual", Failover::Manual)],
        )?,
        balance: one_of(
            "routing.replica_balance",
            r.replica_balance.as_deref(),
            Balance::RoundRobin,
            &[
                ("round_robin", Balance::RoundRobin),
                ("least_outstanding", Balance::LeastOutstanding),
            ],
        )?,
        healthy_after: NonZeroU32::new(r.healthy_after.unwrap_or(3))
            .ok_or_else(|| err("routing.healthy_after", "must be at least 1"))?,
        primary_functions,
        read_your_writes: r.read_your_writes.unwrap_or(true),
    })
}

fn user(path: &str, u: &RawUser, ryw_default: bool) -> Result<User, ConfigError> {
    if u.name.is_empty() {
        return Err(err(format!("{path}.name"), "must not be empty"));
    }
    let method = u.auth.as_deref().unwrap_or("scram-sha-256");
    let password = u.password.as_deref();
    let need = || err(format!("{path}.password"), format!("auth `{method}` needs a password"));
    let auth = match method {
        "trust" => Auth::Trust,
        "scram-sha-256" => {
            let pw = password.ok_or_else(need)?;
            if pw.starts_with("SCRAM-SHA-256$") {
                Auth::Scram(
                    ScramVerifier::parse(pw)
                        .ok_or_else(|| err(format!("{path}.password"), "malformed SCRAM-SHA-256 verifier"))?,
                )
            } else if pw.starts_with("md5") && pw.len() == 35 {
                return Err(err(
                    format!("{path}.password"),
                    "an md5 hash cannot be used for scram-sha-256; give the password or a SCRAM verifier",
                ));
            } else {
                // Verifier generation is postgres-protocol's: same salt size and iteration count as the server.
                let v = postgres_protocol::password::scram_sha_256(pw.as_bytes());
                Auth::Scram(ScramVerifier::parse(&v).expect("postgres-protocol produces a well-formed verifier"))
            }
        }
        "md5" => {
            let pw = password.ok_or_else(need)?;
            let hash = match pw.strip_prefix("md5") {
                Some(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h.to_ascii_lowercase(),
                _ => {
                    use md5::{Digest, Md5};
                    let mut m = Md5::new();
                    m.update(pw.as_bytes());
                    m.update(u.name.as_bytes());
                    format!("{:x}", m.finalize())
                }
            };
            Auth::Md5 { hash }
        }
        other => {
            return Err(err(
                format!("{path}.auth"),
                format!("`{other}` is not one of \"scram-sha-256\", \"md5\", \"trust\""),
            ));
        }
    };
    let mysql_password = match (&auth, password) {
        (Auth::Trust, _) => Some(String::new()),
        (_, Some(pw)) if !(pw.starts_with("SCRAM-SHA-256$") || pw.starts_with("md5") && pw.len() == 35) => {
            Some(pw.to_owned())
        }
        _ => None,
    };
    Ok(User {
        name: u.name.clone(),
        mysql_password,
        auth,
        admin: u.admin,
        read_your_writes: u.read_your_writes.unwrap_or(ryw_default),
    })
}
