//! Rows merged as they stream: shard results concatenated, or interleaved by ORDER BY keeping one
//! pending row per shard, with LIMIT stopping early (the rest of the shards' rows are never read),
//! and DISTINCT ON keeping the first row of each key.

use bytes::Bytes;

use super::{Value, cmp_keys};
use crate::analyze::shard::Merge;
use crate::exec::{Cells, Failure, Row, RowSink, RowSource, Window};

/// A row with its decoded sort keys.
type KeyedRow = (Vec<Value>, Row);

fn sort_values(m: &Merge, cells: &impl Cells, row: &[Option<Bytes>]) -> Result<Vec<Value>, String> {
    m.order
        .iter()
        .map(|k| cells.decode(k.col, row[k.col].as_deref()))
        .collect()
}

async fn keyed<S: RowSource, E>(
    source: &mut S,
    m: &Merge,
    cells: &impl Cells,
) -> Result<Option<KeyedRow>, Failure<S::Error, E>> {
    match source.next_row().await.map_err(Failure::Source)? {
        Some(r) => match sort_values(m, cells, &r) {
            Ok(k) => Ok(Some((k, r))),
            Err(e) => Err(Failure::Unmergeable(e)),
        },
        None => Ok(None),
    }
}

/// Concatenates or merges sorted streams; returns the number of rows delivered.
pub async fn stream<S: RowSource, K: RowSink>(
    sources: &mut [S],
    m: &Merge,
    cells: &impl Cells,
    window: Window,
    sink: &mut K,
) -> Result<u64, Failure<S::Error, K::Error>> {
    let mut sent = 0u64;
    let mut skipped = 0u64;
    let done = |sent: u64| window.limit.is_some_and(|l| sent >= l);
    if done(0) {
        return Ok(0);
    }
    if m.order.is_empty() {
        for source in sources.iter_mut() {
            while let Some(row) = source.next_row().await.map_err(Failure::Source)? {
                if skipped < window.offset {
                    skipped += 1;
                    continue;
                }
                sink.row(&row, m.visible).await.map_err(Failure::Sink)?;
                sent += 1;
                if done(sent) {
                    return Ok(sent);
                }
            }
        }
        return Ok(sent);
    }
    // DISTINCT ON: the key of the last row taken; a row with the same key comes after it in the
    // merged order and is not the first of its key.
    let on = m.distinct_on.min(m.order.len());
    let mut last_on: Option<Vec<Value>> = None;
    let mut heads: Vec<Option<KeyedRow>> = Vec::with_capacity(sources.len());
    for source in sources.iter_mut() {
        heads.push(keyed(source, m, cells).await?);
    }
    loop {
        let mut best: Option<usize> = None;
        for (i, h) in heads.iter().enumerate() {
            let Some((k, _)) = h else { continue };
            best = match best.and_then(|b| heads[b].as_ref().map(|x| (b, &x.0))) {
                None => Some(i),
                Some((b, bk)) => match cmp_keys(k, bk, &m.order) {
                    Ok(std::cmp::Ordering::Less) => Some(i),
                    Ok(_) => Some(b),
                    Err(e) => return Err(Failure::Unmergeable(e.to_string())),
                },
            };
        }
        let Some(b) = best else { return Ok(sent) };
        let (keys, row) = heads[b].take().unwrap_or_default();
        let first_of_key = on == 0
            || match &last_on {
                Some(prev) => !cmp_keys(&keys[..on], prev, &m.order[..on])
                    .map_err(|e| Failure::Unmergeable(e.to_string()))?
                    .is_eq(),
                None => true,
            };
        if first_of_key {
            if on > 0 {
                last_on = Some(keys[..on].to_vec());
            }
            if skipped < window.offset {
                skipped += 1;
            } else {
                sink.row(&row, m.visible).await.map_err(Failure::Sink)?;
                sent += 1;
                if done(sent) {
                    return Ok(sent);
                }
            }
        }
        heads[b] = keyed(&mut sources[b], m, cells).await?;
    }
}
