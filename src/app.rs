//! The shared handles (config and cluster snapshot, analysis cache, client registry, counters),
//! building them from a config, reloading, and running the listeners until shutdown.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::analyze::AnalysisCache;
use crate::backend::Cluster;
use crate::config::{Config, ConfigError};
use crate::health::Bounds;
use crate::health::monitor::{self, MonitorSettings};
use clients::ClientRegistry;

pub mod clients;
pub mod cluster_sync;
mod map_change;
pub mod moves_watch;
pub mod topology_change;
pub mod watch;
pub use map_change::MapChange;

/// One version of the configuration with the cluster built from it. Sessions take a snapshot per
/// transaction; a reload publishes a new one.
pub struct Runtime {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Nodes, pools and health of each shard, indexed by [`crate::shardmap::ShardId`].
    pub clusters: Vec<Arc<Cluster>>,
    /// The shards of a MySQL cluster (empty for PostgreSQL), indexed like `clusters`.
    pub mysql: Vec<Arc<crate::backend::mysql::MyShard>>,
    /// This runtime's monitors and recovery tasks: stopped when a reload replaces it.
    monitor: CancellationToken,
    /// Stops them when the last snapshot is dropped, too.
    _monitor: DropGuard,
}

impl Runtime {
    /// Builds the shards' clusters (reusing those whose nodes and pool settings are unchanged)
    /// and starts their monitors.
    fn new(config: Config, previous: Option<&Runtime>) -> Arc<Runtime> {
        let clusters: Vec<Arc<Cluster>> = config
            .shards
            .iter()
            .map(|s| {
                previous
                    .filter(|p| p.config.pool == config.pool)
                    .and_then(|p| p.clusters.iter().zip(&p.config.shards).find(|(_, old)| *old == s))
                    .map(|(c, _)| c.clone())
                    .unwrap_or_else(|| {
                        let old = previous.and_then(|p| p.clusters.iter().find(|o| o.name == s.name));
                        // Nodes are kept only under the same pool settings (they hold the pools).
                        let same_pool = previous.is_some_and(|p| p.config.pool == config.pool);
                        let c = Cluster::rebuilt(s, &config.pool, old.map(|c| &**c), same_pool);
                        // A failover followed before the rebuild still stands: writes stay on the
                        // promoted node (and the old primary fenced) if the new nodes include it.
                        let followed = previous
                            .and_then(|p| p.clusters.iter().find(|o| o.name == s.name))
                            .map(|o| o.writer())
                            .filter(|w| w.role() == crate::backend::Role::Primary);
                        let same = |a: &crate::backend::Node, b: &crate::backend::Node| {
                            (&a.config.host, a.config.port) == (&b.config.host, b.config.port)
                        };
                        if let Some(w) = followed
                            && !same(&w, &c.primary)
                            && let Some(n) = c.nodes().find(|n| same(n, &w)).cloned()
                        {
                            c.promote(&n);
                        }
                        c
                    })
            })
            .collect();
        let token = CancellationToken::new();
        let r = &config.routing;
        let settings = MonitorSettings {
            bounds: Bounds {
                max_lag: r.max_lag,
                max_lag_bytes: r.max_lag_bytes,
            },
            interval: r.check_interval,
            healthy_after: r.healthy_after.get(),
            connect_timeout: config.pool.connect_timeout,
            follow: r.failover == crate::config::Failover::Follow,
        };
        let mysql: Vec<Arc<crate::backend::mysql::MyShard>> = match config.shards[0].primary.engine {
            crate::config::Engine::Postgres => Vec::new(),
            crate::config::Engine::MySql => config
                .shards
                .iter()
                .map(|s| {
                    previous
                        .filter(|p| p.config.pool == config.pool)
                        .and_then(|p| p.mysql.iter().zip(&p.config.shards).find(|(_, old)| *old == s))
                        .map(|(c, _)| c.clone())
                        .unwrap_or_else(|| crate::backend::mysql::MyShard::new(s, &config.pool))
                })
                .collect(),
        };
        if mysql.is_empty() {
            for c in &clusters {
                tokio::spawn(monitor::run(c.clone(), settings, token.clone()));
            }
        } else {
            let s = crate::health::mysql::Settings {
                interval: r.check_interval,
                max_lag: r.max_lag,
                healthy_after: r.healthy_after.get(),
            };
            tokio::spawn(crate::health::mysql::run(mysql.clone(), s, token.clone()));
        }
        if clusters.len() > 1 && mysql.is_empty() {
            tokio::spawn(crate::backend::twophase::run(
                clusters.clone(),
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(60),
                token.clone(),
            ));
        }
        Arc::new(Runtime {
            config: Arc::new(config),
            clusters,
            mysql,
            monitor: token.clone(),
            _monitor: token.drop_guard(),
        })
    }

    /// Called once `next` serves in its place: this runtime's monitors stop (`next` runs its own,
    /// for the clusters it kept too), and the nodes `next` does not have are retired, so their
    /// connections close even while idle sessions still hold this snapshot.
    pub(crate) fn replaced_by(&self, next: &Runtime) {
        self.monitor.cancel();
        for n in self.nodes() {
            if !next.nodes().any(|m| Arc::ptr_eq(m, n)) {
                n.retire();
            }
        }
    }

    /// Every node of every shard.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<crate::backend::Node>> {
        self.clusters.iter().flat_map(|c| c.nodes())
    }

    /// The cluster of the default shard (unsharded tables, startup parameters).
    pub fn default_cluster(&self) -> &Arc<Cluster> {
        &self.clusters[self.config.map.default_shard]
    }
}

/// Process-wide counters.
#[derive(Default)]
pub struct Stats {
    /// Successful reloads.
    pub reloads: AtomicU64,
    /// Reloads refused: an invalid file, or a map that moves keys without the data stated in place.
    pub rejected_reloads: AtomicU64,
    /// Statements by shard plan kind: single-shard, scatter, broadcast, insert-split, materialized, refused.
    pub plans: [AtomicU64; 6],
}

/// Plan kinds counted in [`Stats::plans`], in order.
pub const PLAN_KINDS: [&str; 6] = [
    "single-shard",
    "scatter",
    "broadcast",
    "insert-split",
    "materialized",
    "refused",
];

impl Stats {
    /// Counts one statement of a plan kind.
    pub fn record_plan(&self, kind: &str) {
        if let Some(i) = PLAN_KINDS.iter().position(|k| *k == kind) {
            self.plans[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Everything sessions, the admin console and the HTTP endpoint share.
pub struct Shared {
    /// Current configuration and cluster.
    pub runtime: ArcSwap<Runtime>,
    /// Statement analyses by text.
    pub cache: AnalysisCache,
    /// Shard shapes of statement texts under the current map.
    pub shapes: crate::analyze::cache::ShapeCache,
    /// MySQL statement analyses, by text with the literals replaced.
    pub my_facts: crate::analyze::cache::MyFactsCache,
    /// Connected clients.
    pub clients: ClientRegistry,
    /// Counters.
    pub stats: Stats,
    /// File RELOAD reads, if serving from a file.
    pub config_path: Option<PathBuf>,
    /// The ID generator, when `[ids]` is configured (changes take effect on restart).
    pub ids: Option<Arc<crate::ids::Generator>>,
    /// Long statement texts analyzed at once off the runtime's threads (`session::heavy`): a
    /// flood of them waits here instead of taking every core.
    pub analysis_slots: tokio::sync::Semaphore,
    /// Column names of sharded tables, in order, read from a shard's catalog for INSERTs without
    /// a column list; forgotten after DDL through shardwire and on reload.
    pub columns: std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<String>>>>,
    /// Per table, whether all its columns have the database's collation (read from the
    /// catalog for queries whose parts run first); forgotten with the column lists.
    pub default_collations: std::sync::Mutex<std::collections::HashMap<String, bool>>,
    /// Map changes applied, for SHOW MAP HISTORY.
    map_history: std::sync::Mutex<std::collections::VecDeque<MapChange>>,
    /// Held while an admin command edits the map file.
    map_edit: tokio::sync::Mutex<()>,
    /// The cluster's etcd, when `[cluster]` is configured.
    pub cluster: cluster_sync::ClusterState,
    /// Partition moves as last read from the shards (`moves_watch`, `SHOW MOVES`).
    moves: std::sync::Mutex<Vec<crate::rebalance::status::MoveStatus>>,
}

impl Shared {
    /// Partition moves as last read from the shards.
    pub fn moves(&self) -> Vec<crate::rebalance::status::MoveStatus> {
        self.moves.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keeps `moves` as the latest read.
    pub fn set_moves(&self, moves: Vec<crate::rebalance::status::MoveStatus>) {
        *self.moves.lock().unwrap_or_else(|e| e.into_inner()) = moves;
    }

    /// Forgets the column lists and collations read from catalogs (a table may have changed).
    pub fn forget_columns(&self) {
        self.columns.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.default_collations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Builds the handles and starts the monitor. Must run inside a tokio runtime.
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Arc<Shared> {
        let ids = config.ids.as_ref().map(|i| {
            let fixed = match &i.worker {
                crate::config::WorkerId::Fixed(w) => Some(*w),
                crate::config::WorkerId::Leased { .. } | crate::config::WorkerId::Etcd { .. } => None,
            };
            let g = crate::ids::Generator::new(
                i.epoch_ms,
                fixed.unwrap_or(0),
                i.clock_tolerance.as_millis() as u64,
                Box::new(crate::ids::SystemClock),
                0,
            );
            if fixed.is_none() {
                g.disable("waiting for a worker id lease");
            }
            Arc::new(g)
        });
        Arc::new(Shared {
            ids,
            runtime: ArcSwap::new(Runtime::new(config, None)),
            cache: AnalysisCache::new(NonZeroUsize::new(10_000).expect("non-zero")),
            shapes: crate::analyze::cache::ShapeCache::new(NonZeroUsize::new(10_000).expect("non-zero")),
            my_facts: crate::analyze::cache::MyFactsCache::new(NonZeroUsize::new(10_000).expect("non-zero")),
            clients: ClientRegistry::default(),
            stats: Stats::default(),
            config_path,
            analysis_slots: tokio::sync::Semaphore::new(2),
            columns: Default::default(),
            default_collations: Default::default(),
            map_history: Default::default(),
            map_edit: Default::default(),
            cluster: Default::default(),
            moves: Default::default(),
        })
    }

    /// Re-reads the config file and swaps it in if valid; the running config stays otherwise.
    /// Statements in flight finish on the snapshot they started with. A shard map that sends
    /// existing keys to other shards is refused unless `data_in_place` (the DBA moved the data).
    pub async fn reload(&self, data_in_place: bool) -> Result<String, ConfigError> {
        self.reload_as(data_in_place, "file").await
    }

    /// [`Shared::reload`] on behalf of `by` (for the map history).
    pub(crate) async fn reload_as(&self, data_in_place: bool, by: &str) -> Result<String, ConfigError> {
        let r = self.try_reload(data_in_place, by).await;
        if r.is_err() {
            self.stats
                .rejected_reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn try_reload(&self, data_in_place: bool, by: &str) -> Result<String, ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::Invalid {
                path: "RELOAD".into(),
                message: "not serving from a config file".into(),
            });
        };
        // Off the runtime: reading the file and deriving password verifiers take a while.
        let file = path.clone();
        let config = tokio::task::spawn_blocking(move || crate::config::load(&file))
            .await
            .map_err(|e| ConfigError::Invalid {
                path: path.display().to_string(),
                message: format!("loading the file failed: {e}"),
            })??;
        self.apply_config(config, data_in_place, by, &path.display().to_string())
            .await
    }

    /// Swaps in `config` (from `source`, named in errors) if it may replace the running one: a
    /// map that moves stored rows needs `data_in_place`, a changed map a higher version, new
    /// nodes must be reachable.
    pub(crate) async fn apply_config(
        &self,
        mut config: Config,
        data_in_place: bool,
        by: &str,
        source: &str,
    ) -> Result<String, ConfigError> {
        let path = source;
        let old = self.runtime.load_full();
        if config.cluster.is_some() {
            // The map is the cluster's, from etcd: the file's only seeded it.
            config = config
                .with_map((*old.config.map).clone())
                .map_err(|m| ConfigError::Invalid {
                    path: path.to_owned(),
                    message: m,
                })?;
        }
        let mut notes = Vec::new();
        if config.server.listen != old.config.server.listen || config.server.admin_http != old.config.server.admin_http
        {
            notes.push("listen addresses change only on restart");
        }
        if config.map != old.config.map && config.map.version <= old.config.map.version {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "the shard map changed but its version did not go up (serving {}, file {}): raise `version` with every change",
                    old.config.map.version, config.map.version
                ),
            });
        }
        let moves = crate::shardmap::diff::moves(&old.config.map, &config.map);
        if !moves.is_empty() && !data_in_place {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "the new shard map sends existing rows to other shards, where they are not yet: {}. \
                     Move the data first; if it is already in place, run RELOAD DATA IN PLACE",
                    moves.join("; ")
                ),
            });
        }
        if !moves.is_empty() {
            tracing::warn!(moves = %moves.join("; "), "shard map change moves keys; the data is stated to be in place");
        }
        unreachable_nodes(&old.config, &config).await?;
        let reused = old.config.shards == config.shards && old.config.pool == config.pool;
        if config.map.version != old.config.map.version || config.map != old.config.map {
            tracing::info!(
                old_version = old.config.map.version,
                new_version = config.map.version,
                "shard map changed"
            );
            notes.push("shard map swapped in");
        }
        if config.routing.primary_functions != old.config.routing.primary_functions
            || config.server.limits != old.config.server.limits
        {
            self.cache.clear();
            self.my_facts.clear();
        }
        let map_changed = config.map != old.config.map;
        let versions = (old.config.map.version, config.map.version);
        let next = Runtime::new(config, Some(&old));
        self.runtime.store(next.clone());
        old.replaced_by(&next);
        if map_changed {
            let what = if moves.is_empty() {
                "map reloaded".to_string()
            } else {
                format!("map reloaded, data stated in place: {}", moves.join("; "))
            };
            if by == "file" {
                self.record_change(versions.0, versions.1, by, what);
            }
            self.shapes.clear();
            self.forget_columns();
        }
        self.stats.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = if reused {
            "configuration reloaded"
        } else {
            "configuration reloaded; new backend pools built"
        };
        tracing::info!(path = %path, reused_pools = reused, "{what}");
        Ok(if notes.is_empty() {
            what.to_string()
        } else {
            format!("{what} ({})", notes.join("; "))
        })
    }
}

/// Nodes a new configuration adds (or changes) that do not accept a connection within the
/// connect timeout: a reload with one is refused, before anything is swapped.
async fn unreachable_nodes(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let known: Vec<(&str, u16)> = old
        .shards
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .map(|n| (n.host.as_str(), n.port))
        .collect();
    let mut down = Vec::new();
    for s in &new.shards {
        for n in std::iter::once(&s.primary).chain(&s.replicas) {
            if known.contains(&(n.host.as_str(), n.port)) {
                continue;
            }
            let reach = tokio::time::timeout(
                new.pool.connect_timeout,
                tokio::net::TcpStream::connect((n.host.as_str(), n.port)),
            )
            .await;
            if !matches!(reach, Ok(Ok(_))) {
                down.push(format!("{} ({}:{})", n.name, n.host, n.port));
            }
        }
    }
    if down.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        path: "shards".into(),
        message: format!(
            "new node(s) not reachable within {:?}: {}; start them (or fix the address) and reload again",
            new.pool.connect_timeout,
            down.join(", ")
        ),
    })
}
