//! Statements that touch a fenced partition (a move's cutover, see `shardmap::states`) wait for
//! the map to say where it serves, polling the shared snapshot, for at most [`FENCE_WAIT`]. A
//! session outside a transaction (or in one that has not reached a shard yet) then takes the new
//! map; one whose transaction holds shard connections goes on only if the partition stayed where
//! it was: otherwise its earlier work there would be left behind on the old shard, so it gets
//! 40001 and runs again.
//!
//! A session in a transaction plans by the map snapshot it took when the transaction began (and
//! any statement by the one it took when it started, which matters for those planned again after
//! reading rows first), so [`Session::plan_checked`] also looks at the shared map: a partition fenced or moved since
//! counts as fenced, except on a connection this transaction already had to the partition's
//! shard from before the fence: such transactions finish where they began (a move waits for
//! them to end before it switches; after a manual `DATA IN PLACE` change the DBA's copy must
//! catch up their writes). Without that, a transaction that reached the old shard
//! only after the move's check could write there after the switch, and the write would be lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Session;
use crate::analyze::shard::Shape;
use crate::plan::shard::{self, Params, ShardPlan};
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::{Partitioning, ShardId, ShardMap};

/// The longest a statement waits for a fenced partition; a cutover takes well under a second.
pub(super) const FENCE_WAIT: Duration = Duration::from_secs(10);

fn owner(map: &ShardMap, group: &str, partition: u32) -> Option<ShardId> {
    let g = map.groups.iter().find(|g| g.name == group)?;
    match &g.partitioning {
        Partitioning::Hash { owner } => owner.get(partition as usize).copied(),
        _ => None,
    }
}

/// The name of the shard holding `partition` of `group` under `map`, unless it is fenced there.
fn serving_at<'m>(map: &'m ShardMap, group: &str, partition: u32) -> Option<&'m str> {
    let g = map.groups.iter().find(|g| g.name == group)?;
    if g.fenced(partition) {
        return None;
    }
    owner(map, group, partition).map(|s| map.shards[s].as_str())
}

impl Session {
    /// [`shard::plan`] under this session's snapshot `map`, or `Fenced` when the shared map has
    /// since fenced or moved a partition the statement touches (see the module docs).
    pub(super) fn plan_checked(&self, shape: &Shape, map: &ShardMap, params: &Params) -> ShardPlan {
        let plan = shard::plan(shape, map, params);
        // Checked without a connection held too: a statement planned again after reading rows
        // first (parts run first, INSERT ... SELECT) may have seen a move's switch meanwhile.
        if matches!(plan, ShardPlan::Fenced { .. } | ShardPlan::Refuse(_)) {
            return plan;
        }
        let current = self.shared.runtime.load();
        let now = &current.config.map;
        if std::ptr::eq(&**now, map) {
            return plan;
        }
        let Some((group, partition)) = shard::moved(shape, map, now, params) else {
            return plan;
        };
        let was = serving_at(map, &group, partition);
        let joined_before = |joined: &ShardMap| was.is_some() && serving_at(joined, &group, partition) == was;
        let before_fence = self
            .held
            .iter()
            .chain(&self.parked)
            .any(|h| Some(map.shards[h.shard].as_str()) == was && joined_before(&h.joined));
        if before_fence {
            return plan;
        }
        ShardPlan::Fenced { group, partition }
    }

    /// Waits until partition `partition` of `group` is no longer fenced in the shared map.
    pub(super) async fn wait_unfenced(&mut self, group: &str, partition: u32) -> Result<(), (SqlState, String)> {
        let started = Instant::now();
        loop {
            let current = self.shared.runtime.load_full();
            let map = &current.config.map;
            let fenced = map.groups.iter().any(|g| g.name == group && g.fenced(partition));
            if !fenced {
                let old = &self.runtime.config.map;
                // A transaction that has not reached any shard yet (a BEGIN waiting for its
                // first statement) left nothing behind: it simply starts on the new map.
                let touched = self.held.is_some() || !self.parked.is_empty() || self.implicit_multi;
                if touched && (owner(old, group, partition) != owner(map, group, partition) || old.shards != map.shards)
                {
                    return Err((
                        SqlState::SERIALIZATION_FAILURE,
                        format!(
                            "partition {partition} of group {group} moved to another shard while this transaction was open; \
                             roll back and run the transaction again"
                        ),
                    ));
                }
                if !Arc::ptr_eq(&current, &self.runtime) {
                    self.runtime = current;
                }
                return Ok(());
            }
            if started.elapsed() >= FENCE_WAIT {
                return Err((
                    SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "partition {partition} of group {group} is fenced for a move's cutover and stayed fenced for {} s; \
                         retry, or see SHOW MAP for the move's state",
                        FENCE_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
