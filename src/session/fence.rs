//! Statements that touch a fenced partition (a move's cutover, see `shardmap::states`) wait for
//! the map to say where it serves, polling the shared snapshot, for at most [`FENCE_WAIT`]. A
//! session outside a transaction then takes the new map; one inside a transaction goes on only
//! if the partition stayed where it was: otherwise its earlier work there would be left behind on
//! the old shard, so it gets 40001 and runs again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Session;
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

impl Session {
    /// Waits until partition `partition` of `group` is no longer fenced in the shared map.
    pub(super) async fn wait_unfenced(&mut self, group: &str, partition: u32) -> Result<(), (SqlState, String)> {
        let started = Instant::now();
        loop {
            let current = self.shared.runtime.load_full();
            let map = &current.config.map;
            let fenced = map.groups.iter().any(|g| g.name == group && g.fenced(partition));
            if !fenced {
                let old = &self.runtime.config.map;
                if (self.held.is_some() || self.in_transaction())
                    && (owner(old, group, partition) != owner(map, group, partition) || old.shards != map.shards)
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
