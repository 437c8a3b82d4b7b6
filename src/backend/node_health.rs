//! What the monitor last learned of a node, kept with the node so the routing path reads it
//! without locks. The monitor (`health`) writes it; pools and replica choice read it.

use std::time::Instant;

/// Whether a node answered its last checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Not checked yet.
    Unknown,
    /// Answering.
    Up,
    /// Unreachable, failing checks or (replicas) over the lag bound.
    Down,
}

/// What the monitor last learned of a node.
#[derive(Clone, Debug)]
pub struct NodeHealth {
    /// Up, down or unknown.
    pub state: HealthState,
    /// Replicas: may serve reads now.
    pub in_rotation: bool,
    /// Replicas: WAL bytes not yet replayed.
    pub lag_bytes: Option<u64>,
    /// Replicas: seconds behind (zero once replay reached the primary's position).
    pub lag_secs: Option<f64>,
    /// Primary: current WAL position; replica: replay position.
    pub lsn: Option<u64>,
    /// Why the node is out of rotation, or "ok".
    pub reason: String,
    /// Good checks in a row.
    pub good_streak: u32,
    /// When the last check finished.
    pub checked: Option<Instant>,
}

impl NodeHealth {
    /// Before the first check: not in rotation.
    pub fn initial() -> NodeHealth {
        NodeHealth {
            state: HealthState::Unknown,
            in_rotation: false,
            lag_bytes: None,
            lag_secs: None,
            lsn: None,
            reason: "not checked yet".into(),
            good_streak: 0,
            checked: None,
        }
    }
}

/// Takes a replica out of rotation at once, e.g. when the data path could not connect to it;
/// the monitor brings it back after enough good checks.
pub fn mark_down(node: &super::Node, why: &str) {
    let prev = node.health.load();
    node.health.store(std::sync::Arc::new(NodeHealth {
        state: HealthState::Down,
        in_rotation: false,
        good_streak: 0,
        reason: why.to_owned(),
        ..NodeHealth::clone(&prev)
    }));
    tracing::warn!(node = %node.config.name, reason = why, "replica taken out of rotation");
}
