//! Shard maps: which shard holds which rows. A map lists the shards, table groups with their key
//! type and partitioning (hash into fixed partitions, integer ranges, value lists) and the
//! assignment of partitions to shards, the sharded tables of each group with their key column,
//! reference tables (a copy on every shard), and the default shard for everything else.
//!
//! Owns the file format (`raw`), its full validation (`validate`) into the map's model (`model`),
//! key values (`key`) and key → partition → shard (`locate`; `hash` holds the partition hash, a
//! contract that never changes). Protocol-agnostic.
#![warn(missing_docs)]

pub mod diff;
pub mod edit;
pub mod hash;
mod key;
mod locate;
mod model;
pub mod raw;
pub mod states;
mod validate;

pub use key::{KeyType, KeyValue, parse_uuid};
pub use locate::Placement;
pub use model::{Group, IdColumn, Partitioning, ShardMap, TableRule, describe};
pub use states::PartitionState;
pub use validate::{load, parse, validate};

/// Index of a shard in [`ShardMap::shards`].
pub type ShardId = usize;

/// Why a map was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MapError {
    /// Dotted path of the field (prefixed with the file when loaded from one).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> MapError {
    MapError {
        path: path.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests;
