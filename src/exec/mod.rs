//! Execution of statements that run on several shards, knowing no wire protocol. A front end
//! hands a plan's legs (one [`RowSource`] per shard), a codec for their cells ([`Cells`]) and a
//! place for the merged rows ([`RowSink`]) to [`merge::run`]; the single-shard byte relay stays in
//! the front end (it forwards bytes untouched and needs no merging).
//!
//! Owned here: combining partial results (ORDER BY across streams, LIMIT/OFFSET after merging,
//! GROUP BY and aggregates, HAVING on merged groups) and the typed values they compute with.
//! Cells stay in the backend's encoding from source to sink; only the columns a merge computes
//! with are decoded, so a passthrough column costs no conversion.

pub mod copy_join;
pub mod merge;
mod rows;

pub use rows::{Cells, Failure, NoParams, Params, Row, RowSink, RowSource, Window};
