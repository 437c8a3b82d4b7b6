//! The interfaces rows cross between a front end and the executor: shard rows in ([`RowSource`]),
//! merged rows out ([`RowSink`]), cells ⇄ values ([`Cells`]) and the client's parameters
//! ([`Params`]). Each front end implements them for its own protocol.

use bytes::Bytes;

/// One row as a backend sent it: a cell per column (`None` is NULL) in that backend's encoding.
pub type Row = Vec<Option<Bytes>>;

/// One shard's rows of a statement, in the order the shard returns them.
pub trait RowSource {
    /// Why the next row could not be read (a shard error, a lost connection).
    type Error;
    /// The next row, or `None` once the shard's result is complete.
    fn next_row(&mut self) -> impl Future<Output = Result<Option<Row>, Self::Error>> + Send;
}

/// Where merged rows go (the client of a front end).
pub trait RowSink {
    /// Why a row could not be delivered (the client is gone).
    type Error;
    /// Delivers the first `visible` cells of a merged row (later ones are helpers the client did
    /// not ask for).
    fn row(&mut self, cells: &[Option<Bytes>], visible: usize) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The codec of a result's cells: the backend's encoding of column `col` to a
/// [`merge::Value`](crate::exec::merge::Value) and back, in the encoding the client asked for.
pub trait Cells {
    /// Decodes a cell of input column `col`.
    fn decode(&self, col: usize, cell: Option<&[u8]>) -> Result<crate::exec::merge::Value, String>;
    /// Encodes a computed value of output column `col` (an aggregate's merged value).
    fn encode(&self, col: usize, value: &crate::exec::merge::Value) -> Result<Option<Bytes>, String>;
}

/// The client's statement parameters, as text (`None` is NULL), for HAVING comparisons.
pub trait Params {
    /// Parameter `i` (0-based) as text.
    fn text(&self, i: usize) -> Result<Option<String>, String>;
}

/// A statement without parameters.
pub struct NoParams;

impl Params for NoParams {
    fn text(&self, _: usize) -> Result<Option<String>, String> {
        Err("a parameter without values".into())
    }
}

/// LIMIT and OFFSET of the merged result, resolved by the front end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Rows skipped first.
    pub offset: u64,
}

/// Why a merge stopped: whose fault decides what the front end reports.
#[derive(Debug)]
pub enum Failure<S, K> {
    /// A shard failed (its error or its connection).
    Source(S),
    /// The client could not take the rows.
    Sink(K),
    /// The rows cannot be merged as one database would (a type without known ordering, an
    /// overflow): nothing wrong was sent, the statement is refused.
    Unmergeable(String),
}
