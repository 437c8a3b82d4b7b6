//! Read-your-writes positions: where each shard's primary was when the session's last write on it
//! committed. Positions of different shards are not comparable (each primary has its own WAL), so
//! there is one per shard, kept by shard name (a reload that renumbers shards keeps them right).

use super::Session;
use crate::shardmap::ShardId;

/// The query that reads the position, as a number of bytes.
pub(super) const POSITION_SQL: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";

/// Commit positions by shard name.
#[derive(Default)]
pub(super) struct Positions(Vec<(String, u64)>);

impl Positions {
    /// The position a replica of `shard` must have replayed to serve this session.
    pub(super) fn get(&self, shard: &str) -> Option<u64> {
        self.0.iter().find(|(s, _)| s == shard).map(|&(_, p)| p)
    }

    /// Records a commit position; a later write never moves it back.
    pub(super) fn record(&mut self, shard: &str, position: u64) {
        match self.0.iter_mut().find(|(s, _)| s == shard) {
            Some((_, p)) => *p = (*p).max(position),
            None => self.0.push((shard.to_owned(), position)),
        }
    }
}

impl Session {
    /// The session's read-your-writes position on `shard`.
    pub(super) fn ryw_position(&self, shard: ShardId) -> Option<u64> {
        self.ryw.get(self.runtime.config.map.shards.get(shard)?)
    }

    /// Records a commit position on `shard`.
    pub(super) fn record_position(&mut self, shard: ShardId, position: u64) {
        if let Some(name) = self.runtime.config.map.shards.get(shard) {
            self.ryw.record(name, position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Positions;

    #[test]
    fn positions_are_per_shard_and_only_advance() {
        let mut p = Positions::default();
        assert_eq!(p.get("s0"), None);
        p.record("s1", 500);
        assert_eq!(p.get("s0"), None, "a write on s1 says nothing about s0");
        assert_eq!(p.get("s1"), Some(500));
        p.record("s1", 300);
        assert_eq!(p.get("s1"), Some(500));
        p.record("s0", 10);
        assert_eq!((p.get("s0"), p.get("s1")), (Some(10), Some(500)));
    }
}
