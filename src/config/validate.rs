//! Raw config → typed config. Every check that `serve`, `check` and `RELOAD` run is here, and
//! every error names the field it is about.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::nodes::node;
pub use super::nodes::{Engine, NodeConfig, ShardConfig};
use super::raw::RawConfig;
pub use super::typed::{
    Auth, Balance, ClusterConfig, Config, DEFAULT_MAX_PREPARED, Failover, IdsConfig, PoolConfig, PoolMode,
    RoutingConfig, ScramVerifier, ServerConfig, User, WhenNoReplica, WorkerId,
};
use super::users::user;
use super::{ConfigError, err, one_of};

fn addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| err(path, format!("`{s}` is not an address like 127.0.0.1:6432")))
}

/// Validates a parsed file.
pub fn validate(raw: RawConfig, base: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let super::shards::Sharding {
        shards,
        map,
        path: map_path,
        spare: spare_shards,
    } = super::shards::shards_and_map(&raw, base)?;
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
                (None, Some(url)) if url == "etcd" => {
                    if raw.cluster.is_none() {
                        return Err(err(
                            "ids.lease",
                            "\"etcd\" leases worker ids through the cluster's etcd: configure [cluster] etcd = [...]",
                        ));
                    }
                    let ttl = i.lease_ttl.unwrap_or(Duration::from_secs(10));
                    if ttl < Duration::from_secs(2) {
                        return Err(err(
                            "ids.lease_ttl",
                            "must be at least 2s with etcd (its leases count whole seconds)",
                        ));
                    }
                    WorkerId::Etcd { ttl }
                }
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
    let cluster = super::cluster::cluster(&raw, server.listen)?;
    Ok(Config {
        server,
        pool,
        routing,
        users,
        shards,
        spare_shards,
        map: Arc::new(map),
        map_path,
        ids,
        cluster,
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
        max_intermediate_bytes: usize::try_from(r.max_intermediate_bytes.unwrap_or(16 << 20))
            .map_err(|_| err("routing.max_intermediate_bytes", "too large"))?,
    })
}
