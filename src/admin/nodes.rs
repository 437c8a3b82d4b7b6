//! One view of every backend node, whichever protocol the cluster speaks, for the console's
//! tables and the metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::app::Runtime;
use crate::health::NodeHealth;

/// What the admin views show of a node.
pub struct NodeView {
    /// Node name (`shard/primary`, `shard/replica0`).
    pub name: String,
    /// primary, replica or fenced.
    pub role: &'static str,
    /// host:port.
    pub address: String,
    /// Latest health.
    pub health: Arc<NodeHealth>,
    /// Taken out of rotation by a DBA.
    pub disabled: bool,
    /// Statements routed here.
    pub statements: u64,
    /// Connections checked out.
    pub checkouts: u64,
    /// Checkouts that failed.
    pub checkout_errors: u64,
    /// Open connections.
    pub connections: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Pool size.
    pub max_size: u32,
}

/// Every node of the runtime, shard by shard, primary first.
pub fn nodes(rt: &Runtime) -> Vec<NodeView> {
    if !rt.mysql.is_empty() {
        return rt
            .mysql
            .iter()
            .flat_map(|s| {
                s.nodes()
                    .enumerate()
                    .map(|(i, n)| (i == 0, n.clone()))
                    .collect::<Vec<_>>()
            })
            .map(|(primary, n)| {
                let st = n.pool.state();
                let checkouts = n.statements.load(Ordering::Relaxed);
                NodeView {
                    name: n.config.name.clone(),
                    role: if primary { "primary" } else { "replica" },
                    address: format!("{}:{}", n.config.host, n.config.port),
                    health: n.health.load_full(),
                    disabled: n.disabled.load(Ordering::Relaxed),
                    statements: checkouts,
                    checkouts,
                    checkout_errors: n.checkout_errors.load(Ordering::Relaxed),
                    connections: st.connections,
                    idle: st.idle_connections,
                    in_use: st.connections.saturating_sub(st.idle_connections),
                    max_size: rt.config.pool.max_size.get(),
                }
            })
            .collect();
    }
    rt.nodes()
        .map(|n| NodeView {
            name: n.config.name.clone(),
            role: n.role().as_str(),
            address: format!("{}:{}", n.config.host, n.config.port),
            health: n.health.load_full(),
            disabled: n.disabled.load(Ordering::Relaxed),
            statements: n.stats.statements.load(Ordering::Relaxed),
            checkouts: n.stats.checkouts.load(Ordering::Relaxed),
            checkout_errors: n.stats.checkout_errors.load(Ordering::Relaxed),
            connections: n.pool.state().connections,
            idle: n.idle_connections(),
            in_use: n.outstanding.load(Ordering::Relaxed) as u32,
            max_size: n.max_size,
        })
        .collect()
}
