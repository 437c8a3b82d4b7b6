//! Which nodes hold a copy of the shard's data as its writer has it, beyond lag: a node of
//! another cluster (another system identifier: a logical subscriber, a re-initialised server, a
//! wrong URL) is never followed in a failover and never serves reads; after a failover, a replica
//! serves reads again only once it streams the new writer's timeline. A replica still replaying
//! the old primary's timeline may hold writes the new writer never had (they were lost with the
//! old primary) or miss every write made since: either way not the database the writer is.
//!
//! Pure rules; the monitor (`monitor.rs`) gathers the observations.

/// What the monitor knows of a node's lineage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// `pg_control_system().system_identifier`, if it could be read.
    pub system_id: Option<u64>,
    /// Its WAL receiver (`pg_stat_wal_receiver`).
    pub receiver: Receiver,
}

/// What the monitor sees of a replica's WAL receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Receiver {
    /// No receiver runs: the replica streams from nothing (its upstream is gone, or it only
    /// restores from an archive).
    #[default]
    None,
    /// One runs, but the monitor's user may not see its details (no `pg_read_all_stats`).
    Hidden,
    /// Streaming this timeline.
    Timeline(u32),
}

/// The shard's cluster: the writer's system identifier once seen; before that, the one most
/// replicas in recovery share (they are copies of the cluster by construction), or none on a tie.
pub fn cluster_id(writer: Option<u64>, replicas: impl IntoIterator<Item = u64>) -> Option<u64> {
    if writer.is_some() {
        return writer;
    }
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for id in replicas {
        match counts.iter_mut().find(|(i, _)| *i == id) {
            Some((_, n)) => *n += 1,
            None => counts.push((id, 1)),
        }
    }
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    match counts.as_slice() {
        [(id, _)] => Some(*id),
        [(id, a), (_, b), ..] if a > b => Some(*id),
        _ => None,
    }
}

/// Whether `node` is of another cluster than `cluster`, as far as can be told.
pub fn foreign(node: Option<u64>, cluster: Option<u64>) -> bool {
    matches!((node, cluster), (Some(n), Some(c)) if n != c)
}

/// Why a replica in recovery must not serve reads for the shard, if it must not.
///
/// `writer_timeline`: the writer's timeline, when known; `after_failover`: this monitor followed
/// a promotion, so a replica must show it streams the new timeline (it may have been left
/// streaming from, or replaying what it had of, the old primary).
pub fn replica_refusal(
    node: Lineage,
    cluster: Option<u64>,
    writer_timeline: Option<u32>,
    after_failover: bool,
) -> Option<String> {
    if foreign(node.system_id, cluster) {
        return Some(format!(
            "system identifier {} is not the shard's ({}): not a physical replica of its primary",
            node.system_id.unwrap_or_default(),
            cluster.unwrap_or_default()
        ));
    }
    let w = writer_timeline?;
    match node.receiver {
        Receiver::Timeline(r) if r != w => Some(format!("streams timeline {r}, the primary is on timeline {w}")),
        Receiver::None if after_failover => Some(format!(
            "not streaming since the failover to timeline {w}: point it at the new primary"
        )),
        // Hidden: which timeline cannot be told; lag decides, as before any failover.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(system_id: Option<u64>, received_tli: Option<u32>) -> Lineage {
        Lineage {
            system_id,
            receiver: received_tli.map_or(Receiver::None, Receiver::Timeline),
        }
    }

    #[test]
    fn the_cluster_is_the_writers_or_the_replicas_majority() {
        assert_eq!(cluster_id(Some(7), [8, 8]), Some(7));
        assert_eq!(cluster_id(None, [8, 9, 8]), Some(8));
        assert_eq!(cluster_id(None, [8, 9]), None, "a tie names no cluster");
        assert_eq!(cluster_id(None, [9]), Some(9));
        assert_eq!(cluster_id(None, []), None);
    }

    #[test]
    fn a_node_of_another_cluster_never_serves() {
        let why = replica_refusal(node(Some(2), Some(1)), Some(1), Some(1), false).unwrap();
        assert!(why.contains("system identifier 2"), "{why}");
        assert!(foreign(Some(2), Some(1)));
        // Unknown on either side: nothing can be told, the other rules decide.
        assert!(!foreign(None, Some(1)) && !foreign(Some(2), None));
        assert_eq!(replica_refusal(node(None, Some(1)), Some(1), Some(1), false), None);
    }

    #[test]
    fn after_a_failover_only_replicas_streaming_the_new_timeline_serve() {
        let id = Some(5);
        // Streaming the writer's timeline: fine, before or after a failover.
        assert_eq!(replica_refusal(node(id, Some(2)), id, Some(2), true), None);
        assert_eq!(replica_refusal(node(id, Some(1)), id, Some(1), false), None);
        // Still on the old primary's timeline (it came back, or the replica lags the switch).
        let why = replica_refusal(node(id, Some(1)), id, Some(2), true).unwrap();
        assert!(why.contains("timeline 1"), "{why}");
        assert!(replica_refusal(node(id, Some(1)), id, Some(2), false).is_some());
        // No receiver: before any failover it is judged by lag as always; after one it must
        // first show it follows the new writer.
        assert_eq!(replica_refusal(node(id, None), id, Some(2), false), None);
        assert!(replica_refusal(node(id, None), id, Some(2), true).is_some());
        // The writer's timeline unknown: nothing to compare.
        assert_eq!(replica_refusal(node(id, Some(1)), id, None, true), None);
        // A receiver the monitor may not look into: lag decides, even after a failover.
        let hidden = Lineage {
            system_id: id,
            receiver: Receiver::Hidden,
        };
        assert_eq!(replica_refusal(hidden, id, Some(2), true), None);
    }
}
