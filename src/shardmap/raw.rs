//! The shard map file as written (serde, unknown fields rejected). `mod.rs` validates it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole map file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// Version of the map, raised with every change.
    pub version: u64,
    /// Shard names, in order; the configuration gives each one its nodes.
    pub shards: Vec<String>,
    /// Shard holding unsharded tables.
    pub default_shard: String,
    /// "allow" (default) or "refuse": UPDATE/DELETE on a sharded table without its key.
    pub scatter_writes: Option<String>,
    /// Table groups by name.
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroup>,
    /// Tables by name.
    #[serde(default)]
    pub tables: BTreeMap<String, RawTable>,
}

/// `[groups.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// "bigint" (also int, integer, smallint, int2/4/8), "text" (varchar) or "uuid".
    pub key_type: String,
    /// How keys map to partitions.
    pub partitioning: RawPartitioning,
    /// Hash: shard name → partition ranges such as "0-63,128-191".
    #[serde(default)]
    pub assignment: BTreeMap<String, String>,
    /// Range: ranges of integer keys, `from` inclusive, `to` exclusive, open where absent.
    #[serde(default)]
    pub ranges: Vec<RawRange>,
    /// List: shard name → the key values it holds.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<toml::Value>>,
    /// Hash: partition number → state ("serving", "moving", "fenced"); partitions left out serve.
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

/// `partitioning = { kind = ..., partitions = ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartitioning {
    /// "hash", "range" or "list".
    pub kind: String,
    /// Hash: number of partitions, fixed for the life of the group.
    pub partitions: Option<u32>,
}

/// One range of a range-partitioned group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    /// Lowest key, inclusive; absent: unbounded.
    pub from: Option<i64>,
    /// Key after the highest, exclusive; absent: unbounded.
    pub to: Option<i64>,
    /// Shard holding the range.
    pub shard: String,
}

/// `[tables.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Group of a sharded table.
    pub group: Option<String>,
    /// Shard key column of a sharded table.
    pub key: Option<String>,
    /// A reference table: a copy on every shard.
    #[serde(default)]
    pub reference: bool,
    /// A column shardwire fills with a generated ID when an INSERT leaves it out.
    pub id_column: Option<String>,
    /// "keep" (default): an INSERT that gives the ID column keeps its value; "refuse": refused.
    pub supplied_ids: Option<String>,
}
