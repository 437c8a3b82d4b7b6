//! Backends: raw connections (`conn`), pools per node (`pool`), and the cluster of one primary
//! with its replicas, including the choice of a replica for a read.

pub mod breaker;
pub mod conn;
pub mod leg;
pub mod mysql;
pub mod node_health;
pub mod pool;
pub mod twophase;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

pub use conn::{BackendConn, BackendError};
pub use pool::{Checkout, CheckoutError, Node, Role};

use crate::config::{Balance, PoolConfig, ShardConfig};

/// ParameterStatus name/value pairs a server reports at startup.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// A primary and its replicas, with their pools and health.
pub struct Cluster {
    /// Shard name.
    pub name: String,
    /// The configured primary.
    pub primary: Arc<Node>,
    /// The replicas, in configuration order.
    pub replicas: Vec<Arc<Node>>,
    /// Where writes go: the configured primary, or the replica a failover promoted.
    writer: ArcSwap<Node>,
    /// Failovers followed.
    pub failovers: AtomicU64,
    /// A promotion was followed for this shard (by this cluster or one it was rebuilt from):
    /// replicas must show they stream the new writer's timeline before they serve again.
    pub after_failover: std::sync::atomic::AtomicBool,
    /// The database's collation, read the first time a cross-shard merge needs it.
    pub collation: std::sync::OnceLock<String>,
    /// The two-phase commit decision table is known to exist on the writer.
    pub decision_table: std::sync::atomic::AtomicBool,
    rr: AtomicUsize,
    // std Mutex: a clone of an Arc under it, never held across an await.
    server_params: Mutex<Option<ServerParams>>,
}

impl Cluster {
    /// Builds nodes and pools (connections open lazily).
    pub fn new(s: &ShardConfig, pool: &PoolConfig) -> Arc<Cluster> {
        Cluster::rebuilt(s, pool, None, false)
    }

    /// Builds the shard anew after a change, keeping `old`'s nodes (their pools, open
    /// connections, health and counters) where a node's configuration and role are unchanged and
    /// `keep_nodes` says `old`'s pool settings are `pool`: adding or removing a replica drops no
    /// connection to the others. A followed failover carries over either way.
    pub fn rebuilt(s: &ShardConfig, pool: &PoolConfig, old: Option<&Cluster>, keep_nodes: bool) -> Arc<Cluster> {
        let node = |config: &crate::config::NodeConfig, role: Role| {
            old.filter(|_| keep_nodes)
                .and_then(|o| o.nodes().find(|n| n.config == *config && n.role() == role))
                .cloned()
                .unwrap_or_else(|| Node::new(config.clone(), role, pool))
        };
        let primary = node(&s.primary, Role::Primary);
        Arc::new(Cluster {
            name: s.name.clone(),
            writer: ArcSwap::new(primary.clone()),
            failovers: AtomicU64::new(0),
            after_failover: std::sync::atomic::AtomicBool::new(
                old.is_some_and(|o| o.after_failover.load(Ordering::Relaxed)),
            ),
            collation: std::sync::OnceLock::new(),
            decision_table: std::sync::atomic::AtomicBool::new(false),
            primary,
            replicas: s.replicas.iter().map(|r| node(r, Role::Replica)).collect(),
            rr: AtomicUsize::new(0),
            server_params: Mutex::new(None),
        })
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    /// The node writes go to now.
    pub fn writer(&self) -> Arc<Node> {
        self.writer.load_full()
    }

    /// Follows a failover: writes go to `node` (a replica that was promoted) from now on, and the
    /// node that had them is fenced.
    pub fn promote(&self, node: &Arc<Node>) {
        let old = self.writer.swap(node.clone());
        if !Arc::ptr_eq(&old, node) {
            old.set_role(Role::Fenced);
            node.set_role(Role::Primary);
            self.failovers.fetch_add(1, Ordering::Relaxed);
            self.after_failover.store(true, Ordering::Relaxed);
        }
    }

    /// A replica in rotation that has replayed at least `min_lsn`, or none.
    pub fn pick_replica(&self, balance: Balance, min_lsn: Option<u64>) -> Option<Arc<Node>> {
        let usable = |n: &&Arc<Node>| {
            let h = n.health.load();
            h.in_rotation
                && n.role() == Role::Replica
                && !n.disabled.load(Ordering::Relaxed)
                && min_lsn.is_none_or(|min| h.lsn.is_some_and(|l| l >= min))
        };
        match balance {
            Balance::RoundRobin => {
                let candidates: Vec<&Arc<Node>> = self.replicas.iter().filter(usable).collect();
                if candidates.is_empty() {
                    return None;
                }
                let i = self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
                Some(candidates[i].clone())
            }
            Balance::LeastOutstanding => self
                .replicas
                .iter()
                .filter(usable)
                .min_by_key(|n| n.outstanding.load(Ordering::Relaxed))
                .cloned(),
        }
    }

    /// The ParameterStatus values clients receive at startup, learned from the first backend
    /// connection to the primary.
    pub fn server_params(&self) -> Option<ServerParams> {
        self.server_params.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the ParameterStatus values of a fresh backend connection.
    pub fn learn_server_params(&self, params: &[(String, String)]) {
        let mut p = self.server_params.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() && !params.is_empty() {
            *p = Some(Arc::new(params.to_vec()));
        }
    }
}
