//! The configuration file as written: serde structs that reject unknown fields. Validation into
//! typed values happens in `validate.rs`.

use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener and client-facing settings.
    pub server: RawServer,
    /// Backend pool sizes and timeouts.
    #[serde(default)]
    pub pool: RawPool,
    /// Read/write split and replica lag settings.
    #[serde(default)]
    pub routing: RawRouting,
    /// Users clients may log in as.
    #[serde(default)]
    pub users: Vec<RawUser>,
    /// The shards: each a primary and its replicas.
    pub shards: Vec<RawShard>,
    /// The shard map; without one, a single shard serves every table.
    pub sharding: Option<RawSharding>,
    /// Globally unique IDs.
    pub ids: Option<RawIds>,
    /// Several instances sharing one shard map through etcd.
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// etcd endpoints (`host:port` or `http://host:port`).
    pub etcd: Vec<String>,
    /// Key prefix of this cluster's keys (default `/shardwire`).
    pub prefix: Option<String>,
    /// This instance's name among the cluster's (default: host name and listen port).
    pub name: Option<String>,
    /// How long an instance stays listed without a heartbeat (default 5 s).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// `[ids]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIds {
    /// This instance's worker id, 0..=1023; unique among running instances.
    pub worker_id: Option<u16>,
    /// Lease the worker id from this PostgreSQL database instead (connection URL).
    pub lease: Option<String>,
    /// Lease length (renewed every third of it).
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// The epoch, Unix milliseconds (default 2024-01-01T00:00:00Z).
    pub epoch_ms: Option<u64>,
    /// A backward clock step up to this long is waited out; longer ones refuse IDs.
    #[serde(default, with = "humantime_serde")]
    pub clock_tolerance: Option<Duration>,
}

/// `[sharding]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharding {
    /// Path of the shard map file, relative to the configuration file.
    pub map: String,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address for PostgreSQL clients, e.g. "127.0.0.1:6432".
    pub listen: String,
    /// Address for MySQL clients, e.g. "127.0.0.1:3307", when the shards are MySQL/MariaDB.
    pub mysql_listen: Option<String>,
    /// Auth plugin offered to MySQL clients: "mysql_native_password" (default) or
    /// "caching_sha2_password".
    pub mysql_auth: Option<String>,
    /// Address for HTTP `/metrics` and `/health`; none when absent.
    pub admin_http: Option<String>,
    /// "transaction" (default) or "session".
    pub pool_mode: Option<String>,
    /// Database name clients connect to; defaults to the primary's database name.
    pub database: Option<String>,
    /// Most client connections served at once.
    pub max_client_connections: Option<usize>,
    /// Largest message accepted from a client, in bytes.
    pub max_message_size: Option<usize>,
    /// Longest statement text analyzed, in bytes; longer ones are refused (54000).
    pub max_statement_size: Option<usize>,
    /// Most terms in one expression or operator chain (see docs); deeper statements are refused
    /// (54001) before they are parsed. At most 4000, the default.
    pub max_expression_depth: Option<usize>,
    /// Worker threads serving clients; default half the cores (at least 1).
    pub workers: Option<usize>,
    /// How long shutdown waits for clients before closing them.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_timeout: Option<Duration>,
    /// Check the configuration and shard map files this often and reload when they change
    /// (absent: only SIGHUP and admin RELOAD reload).
    #[serde(default, with = "humantime_serde")]
    pub watch_files: Option<Duration>,
    /// TLS for clients; without it, SSLRequest is answered 'N'.
    pub tls: Option<RawTls>,
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate chain in PEM, the server's own certificate first; relative to the
    /// configuration file.
    pub cert_file: String,
    /// The certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1); relative to the
    /// configuration file.
    pub key_file: String,
    /// "prefer" (default): clients that ask for TLS get it; "require": clients that do not are
    /// refused at login.
    pub mode: Option<String>,
}

/// `[pool]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Idle connections kept open per node.
    pub min_size: Option<u32>,
    /// Most connections per node.
    pub max_size: Option<u32>,
    /// How long a client waits for a backend connection before it gets an error.
    #[serde(default, with = "humantime_serde")]
    pub checkout_timeout: Option<Duration>,
    /// How long opening a backend connection may take.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Idle backend connections older than this are closed.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Most statements the proxy keeps prepared on one backend connection.
    pub max_prepared_statements: Option<usize>,
}

/// `[routing]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// A replica further behind than this (time) leaves the read rotation.
    #[serde(default, with = "humantime_serde")]
    pub max_replica_lag: Option<Duration>,
    /// A replica further behind than this many WAL bytes leaves the read rotation.
    pub max_replica_lag_bytes: Option<u64>,
    /// How often each replica's lag and health are checked.
    #[serde(default, with = "humantime_serde")]
    pub lag_check_interval: Option<Duration>,
    /// "primary" (default): reads go to the primary when no replica is usable; "refuse": they fail.
    pub when_no_replica: Option<String>,
    /// "round_robin" (default) or "least_outstanding".
    pub replica_balance: Option<String>,
    /// Good checks in a row before a replica that left the rotation comes back.
    pub healthy_after: Option<u32>,
    /// Functions with side effects, in addition to the built-in list: a call sends the statement to the primary.
    #[serde(default)]
    pub primary_functions: Vec<String>,
    /// Read-your-writes for every user (users may also turn it on one by one).
    pub read_your_writes: Option<bool>,
    /// Bytes of rows a statement may read into shardwire before it runs (parts that run first);
    /// 0: such statements are refused.
    pub max_intermediate_bytes: Option<u64>,
    /// "follow" (default): writes move to a replica that was promoted; "manual": only a
    /// configuration change moves them.
    pub failover: Option<String>,
}

/// `[[users]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// Login name.
    pub name: String,
    /// Plain password, a SCRAM verifier ("SCRAM-SHA-256$...") or an md5 hash ("md5...").
    pub password: Option<String>,
    /// "scram-sha-256" (default), "md5" or "trust".
    pub auth: Option<String>,
    /// May use the admin console (database `shardwire`).
    #[serde(default)]
    pub admin: bool,
    /// After a write, this user's reads wait for replicas that replayed it (else the primary).
    pub read_your_writes: Option<bool>,
}

/// `[[shards]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    /// Shard name, unique.
    pub name: String,
    /// Connection URL of the primary, with the credentials shardwire logs in with.
    pub primary: String,
    /// Connection URLs of streaming replicas.
    #[serde(default)]
    pub replicas: Vec<String>,
}
