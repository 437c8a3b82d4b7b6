//! A MySQL client's prepared statements, by the ids it was given (the commands that use them
//! are `prepared`'s).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::analyze::mysql::MyFacts;
use crate::analyze::shard::Shape;
use crate::shardmap::ShardMap;

/// A client's statement.
pub(super) struct Prepared {
    pub(super) sql: Bytes,
    pub(super) params: u16,
    pub(super) facts: MyFacts,
    /// Parameter types (2 bytes each) from the last execute that sent them.
    pub(super) types: Option<Bytes>,
    /// Long data per parameter, in the order sent.
    pub(super) long: Vec<(u16, Bytes)>,
    /// `SELECT LAST_INSERT_ID()`: answered by the session, with this column name.
    pub(super) last_id_column: Option<String>,
    /// Its shape under the map it was computed with (parsed once per map, not per execute).
    pub(super) shape: Option<(Arc<ShardMap>, Arc<Shape>)>,
}

/// The client's statements by the ids it was given.
#[derive(Default)]
pub(super) struct Statements {
    pub(super) next: u32,
    pub(super) by_id: HashMap<u32, Prepared>,
}
