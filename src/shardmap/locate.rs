//! Key → partition → shard. Kept apart from the model because this is the one contract with
//! stored data: a key must land where earlier statements put its rows, so the partition hash
//! (`hash`) and its use here never change.

use super::ShardId;
use super::hash;
use super::key::{KeyType, KeyValue};
use super::model::{Group, Partitioning, ShardMap, TableRule};

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The hash partition, for hash-partitioned groups.
    pub partition: Option<u32>,
    /// The shard.
    pub shard: ShardId,
}

impl Group {
    /// The partition and shard of a key, or why it has none.
    pub fn locate(&self, key: &KeyValue) -> Result<Placement, String> {
        match (&self.partitioning, key) {
            (Partitioning::Hash { owner }, k) => {
                let h = match (self.key_type, k) {
                    (KeyType::Int, KeyValue::Int(i)) => hash::hash_int(*i, hash::PARTITION_SEED),
                    (KeyType::Text, KeyValue::Text(s)) => hash::hash_text(s, hash::PARTITION_SEED),
                    (KeyType::Uuid, KeyValue::Uuid(u)) => hash::hash_uuid(u, hash::PARTITION_SEED),
                    _ => return Err(format!("key {k} is not of the group's type {}", self.key_type)),
                };
                let p = hash::partition_of(h, owner.len() as u32);
                Ok(Placement {
                    partition: Some(p),
                    shard: owner[p as usize],
                })
            }
            (Partitioning::Range { starts }, KeyValue::Int(i)) => {
                let idx = starts.partition_point(|(from, _)| from.is_none_or(|f| f <= *i));
                // Validation makes the first range start unbounded, so idx >= 1.
                Ok(Placement {
                    partition: None,
                    shard: starts[idx.max(1) - 1].1,
                })
            }
            (Partitioning::Range { .. }, k) => Err(format!("key {k} is not an integer")),
            (Partitioning::List { values }, k) => values
                .get(k)
                .map(|&shard| Placement { partition: None, shard })
                .ok_or_else(|| format!("no shard holds key {k} of list-partitioned group {}", self.name)),
        }
    }
}

impl ShardMap {
    /// Where `key` of `table` lives.
    pub fn locate(&self, table: &str, key: &str) -> Result<(Placement, &Group), String> {
        match self.table(&table.to_ascii_lowercase()) {
            Some(TableRule::Sharded { group, .. }) => {
                let g = &self.groups[*group];
                let k = KeyValue::parse(g.key_type, key)
                    .ok_or_else(|| format!("`{key}` is not a valid {} key", g.key_type))?;
                Ok((g.locate(&k)?, g))
            }
            Some(TableRule::Reference) => Err(format!("{table} is a reference table: every shard holds it")),
            None => Err(format!(
                "{table} is not sharded: it lives on the default shard {}",
                self.shards[self.default_shard]
            )),
        }
    }
}
