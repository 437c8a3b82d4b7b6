//! The validated map as the planner, the sessions and the admin console read it: shards, table
//! groups and how their keys are partitioned, the rule for each table. What validation
//! guarantees (every hash partition owned once, ranges covering every key) is assumed here, not
//! checked again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::key::{KeyType, KeyValue};
use super::{PartitionState, ShardId};

/// A validated shard map.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMap {
    /// Version, logged on every change.
    pub version: u64,
    /// Shard names; a [`ShardId`] indexes this list.
    pub shards: Vec<String>,
    /// Shard of unsharded tables.
    pub default_shard: ShardId,
    /// Refuse UPDATE/DELETE of a sharded table that would run on every shard.
    pub refuse_scatter_writes: bool,
    /// Table groups.
    pub groups: Vec<Group>,
    /// Sharded and reference tables by lower-case name (without schema).
    pub tables: HashMap<String, TableRule>,
    /// Tables whose ID column shardwire fills, by table name.
    pub id_columns: HashMap<String, IdColumn>,
}

/// A column filled with generated IDs when an INSERT leaves it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdColumn {
    /// Column name, lower case.
    pub column: String,
    /// An INSERT that supplies the column is refused (else its values are kept).
    pub refuse_supplied: bool,
}

/// A table group: tables sharded alike, so rows with one key live on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Key → shard.
    pub partitioning: Partitioning,
    /// Hash partitions that do not simply serve (moving, fenced), by partition.
    pub states: BTreeMap<u32, PartitionState>,
}

/// How a group's keys map to shards.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitioning {
    /// PostgreSQL's partition hash into `owner.len()` partitions; `owner[p]` holds partition p.
    Hash {
        /// Shard of each partition.
        owner: Vec<ShardId>,
    },
    /// Integer ranges, sorted, covering every value without overlap.
    Range {
        /// `(from, shard)`: keys from `from` (inclusive) up to the next entry's `from`.
        starts: Vec<(Option<i64>, ShardId)>,
    },
    /// Values listed per shard; a value not listed has no shard.
    List {
        /// Value → shard.
        values: HashMap<KeyValue, ShardId>,
    },
}

impl Group {
    /// The shards that hold some of the group's keys: where a statement over every row of the
    /// group runs. A shard the group has no partition on may still hold stale rows (left behind
    /// by a move), which must not be read.
    pub fn holders(&self) -> BTreeSet<ShardId> {
        match &self.partitioning {
            Partitioning::Hash { owner } => owner.iter().copied().collect(),
            Partitioning::Range { starts } => starts.iter().map(|&(_, s)| s).collect(),
            Partitioning::List { values } => values.values().copied().collect(),
        }
    }

    /// Whether statements touching partition `p` wait (a move's cutover).
    pub fn fenced(&self, p: u32) -> bool {
        self.states.get(&p) == Some(&PartitionState::Fenced)
    }

    /// The first fenced partition, if any.
    pub fn first_fenced(&self) -> Option<u32> {
        self.states
            .iter()
            .find(|(_, s)| **s == PartitionState::Fenced)
            .map(|(p, _)| *p)
    }

    /// Number of partitions per shard, for display.
    pub fn partitions_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut n = vec![0; shards];
        match &self.partitioning {
            Partitioning::Hash { owner } => owner.iter().for_each(|&s| n[s] += 1),
            Partitioning::Range { starts } => starts.iter().for_each(|&(_, s)| n[s] += 1),
            Partitioning::List { values } => values.values().for_each(|&s| n[s] += 1),
        }
        n
    }
}

/// What the map says about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRule {
    /// Sharded by `key` in group `group`.
    Sharded {
        /// Index into [`ShardMap::groups`].
        group: usize,
        /// Key column, lower case.
        key: String,
    },
    /// A copy on every shard.
    Reference,
}

impl ShardMap {
    /// The rule for a table name (any schema prefix is ignored), or `None` for an unsharded table.
    pub fn table(&self, name: &str) -> Option<&TableRule> {
        self.tables.get(name)
    }

    /// A map with one shard and no sharded tables: what an unsharded configuration serves.
    pub fn single(shard: &str) -> ShardMap {
        ShardMap {
            version: 0,
            shards: vec![shard.to_owned()],
            default_shard: 0,
            refuse_scatter_writes: false,
            groups: Vec::new(),
            tables: HashMap::new(),
            id_columns: HashMap::new(),
        }
    }

    /// Every shard id.
    pub fn all_shards(&self) -> Vec<ShardId> {
        (0..self.shards.len()).collect()
    }
}

/// Human-readable summary for `SHOW MAP` and `check`: one line per group.
pub fn describe(map: &ShardMap) -> Vec<(String, String, String, String)> {
    let mut by_group: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (t, r) in &map.tables {
        if let TableRule::Sharded { group, .. } = r {
            by_group.entry(*group).or_default().push(t);
        }
    }
    map.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut tables = by_group.remove(&i).unwrap_or_default();
            tables.sort();
            let kind = match &g.partitioning {
                Partitioning::Hash { owner } => format!("hash/{}", owner.len()),
                Partitioning::Range { starts } => format!("range/{}", starts.len()),
                Partitioning::List { values } => format!("list/{}", values.len()),
            };
            let per: Vec<String> = g
                .partitions_per_shard(map.shards.len())
                .iter()
                .zip(&map.shards)
                .map(|(n, s)| format!("{s}={n}"))
                .collect();
            (g.name.clone(), kind, per.join(" "), tables.join(","))
        })
        .collect()
}
