//! Rows combined by group (GROUP BY, aggregates without GROUP BY, DISTINCT): every shard's rows
//! are read, partial aggregates combined per group, HAVING applied to the merged groups, then
//! the groups sorted and windowed. Memory grows with the number of groups, not of rows.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::having::eval_having;
use super::{Value, average, cmp_keys, combine, distinct_key};
use crate::analyze::shard::{ColKind, Merge};
use crate::exec::{Cells, Failure, Params, Row, RowSink, RowSource, Window};

/// A merged group: the cells of its first row (MIN/MAX cells replaced by the winners'), the
/// accumulated values of its aggregate columns, and per COUNT(DISTINCT) column the distinct
/// values it counts (empty for other columns).
pub(super) struct Group {
    pub cells: Row,
    pub acc: Vec<Value>,
    pub distinct: Vec<HashSet<Vec<u8>>>,
}

/// The distinct values of a row's COUNT(DISTINCT) columns, added to `sets`.
fn note_distinct(m: &Merge, vals: &[Value], sets: &mut [HashSet<Vec<u8>>]) {
    for (i, k) in m.cols.iter().enumerate() {
        if *k == ColKind::CountDistinct
            && let Some(v) = distinct_key(&vals[i])
        {
            sets[i].insert(v);
        }
    }
}

/// Group keys → index into `rows`. A key cell is the value as the database compares it when it
/// can be decoded (numerics whatever their scale, either zero: the shards grouped them as equal,
/// and so must the merge), its bytes otherwise; `None` is NULL.
struct Groups {
    index: HashMap<Vec<Option<Vec<u8>>>, usize>,
    rows: Vec<Group>,
}

fn key_cell(cells: &impl Cells, col: usize, cell: Option<&Bytes>) -> Option<Vec<u8>> {
    let raw = cell?;
    match cells.decode(col, Some(raw)) {
        Ok(v) => distinct_key(&v),
        Err(_) => {
            let mut k = Vec::with_capacity(raw.len() + 1);
            k.push(b'r');
            k.extend_from_slice(raw);
            Some(k)
        }
    }
}

/// Decodes a row's aggregate columns (plain ones stay bytes and make the group key).
fn aggregates(m: &Merge, cells: &impl Cells, row: &[Option<Bytes>]) -> Result<Vec<Value>, String> {
    m.cols
        .iter()
        .enumerate()
        .map(|(i, k)| match k {
            ColKind::Plain => Ok(Value::Null),
            _ => cells.decode(i, row[i].as_deref()),
        })
        .collect()
}

impl Groups {
    fn add(
        &mut self,
        m: &Merge,
        cells: &impl Cells,
        key_cols: &[usize],
        row: Row,
        vals: Vec<Value>,
    ) -> Result<(), String> {
        let key: Vec<Option<Vec<u8>>> = key_cols.iter().map(|&i| key_cell(cells, i, row[i].as_ref())).collect();
        let Some(&g) = self.index.get(&key) else {
            let mut distinct = vec![HashSet::new(); m.cols.len()];
            note_distinct(m, &vals, &mut distinct);
            self.index.insert(key, self.rows.len());
            self.rows.push(Group {
                cells: row,
                acc: vals,
                distinct,
            });
            return Ok(());
        };
        let group = &mut self.rows[g];
        note_distinct(m, &vals, &mut group.distinct);
        for (i, k) in m.cols.iter().enumerate() {
            if *k == ColKind::Plain {
                continue;
            }
            let (v, replaced) = combine(*k, &group.acc[i], &vals[i]).map_err(|e| e.to_string())?;
            group.acc[i] = v;
            if replaced {
                group.cells[i] = row[i].clone();
            }
        }
        Ok(())
    }
}

/// The value of result column `i` of a merged group.
pub(super) fn group_value(m: &Merge, cells: &impl Cells, g: &Group, i: usize) -> Result<Value, String> {
    match m.cols.get(i) {
        Some(ColKind::Count | ColKind::Sum | ColKind::Min | ColKind::Max) => Ok(g.acc[i].clone()),
        Some(ColKind::Avg { count_col }) => average(&g.acc[i], &g.acc[*count_col]).map_err(|e| e.to_string()),
        Some(ColKind::CountDistinct) => Ok(Value::Int(g.distinct.get(i).map_or(0, HashSet::len) as i64)),
        Some(ColKind::Expr(k)) => {
            let e = m.exprs.get(*k).ok_or("an expression over aggregates is missing")?;
            super::expr::eval(e, &mut |c| group_value(m, cells, g, c)).map_err(|e| e.to_string())
        }
        _ => cells.decode(i, g.cells.get(i).and_then(|c| c.as_deref())),
    }
}

/// Combines rows by group, then sorts and windows; returns the number of rows delivered.
pub async fn grouped<S: RowSource, K: RowSink>(
    sources: &mut [S],
    m: &Merge,
    cells: &impl Cells,
    params: &impl Params,
    window: Window,
    sink: &mut K,
) -> Result<u64, Failure<S::Error, K::Error>> {
    let unmergeable = Failure::Unmergeable;
    let mut groups = Groups {
        index: HashMap::new(),
        rows: Vec::new(),
    };
    let key_cols: Vec<usize> = (0..m.visible).filter(|&i| m.cols[i] == ColKind::Plain).collect();
    for source in sources.iter_mut() {
        while let Some(row) = source.next_row().await.map_err(Failure::Source)? {
            let vals = aggregates(m, cells, &row).map_err(unmergeable)?;
            groups.add(m, cells, &key_cols, row, vals).map_err(unmergeable)?;
        }
    }
    let mut rows = groups.rows;
    if rows.is_empty() && m.one_row {
        // Aggregates without GROUP BY answer one row even over no rows: counts 0, the rest NULL.
        let mut acc = vec![Value::Null; m.cols.len()];
        for (i, k) in m.cols.iter().enumerate() {
            if *k == ColKind::Count {
                acc[i] = Value::Int(0);
            }
        }
        rows.push(Group {
            cells: vec![None; m.cols.len()],
            acc,
            distinct: vec![HashSet::new(); m.cols.len()],
        });
    }
    if let Some(h) = &m.having {
        let mut kept = Vec::with_capacity(rows.len());
        for g in rows {
            if eval_having(h, m, cells, &g, params).map_err(unmergeable)? == Some(true) {
                kept.push(g);
            }
        }
        rows = kept;
    }
    // Final cells: sums and counts encoded for the client, averages divided; then sort keys.
    let mut finished: Vec<(Vec<Value>, Row)> = Vec::with_capacity(rows.len());
    for mut g in rows {
        for i in 0..m.visible {
            if matches!(
                m.cols[i],
                ColKind::Count | ColKind::Sum | ColKind::Avg { .. } | ColKind::CountDistinct | ColKind::Expr(_)
            ) {
                let v = group_value(m, cells, &g, i).map_err(unmergeable)?;
                g.cells[i] = cells.encode(i, &v).map_err(unmergeable)?;
            }
        }
        let keys = m
            .order
            .iter()
            .map(|k| group_value(m, cells, &g, k.col))
            .collect::<Result<Vec<Value>, String>>()
            .map_err(unmergeable)?;
        finished.push((keys, g.cells));
    }
    if !m.order.is_empty() {
        let mut err = None;
        finished.sort_by(|a, b| {
            cmp_keys(&a.0, &b.0, &m.order).unwrap_or_else(|e| {
                err.get_or_insert(e.to_string());
                std::cmp::Ordering::Equal
            })
        });
        if let Some(e) = err {
            return Err(unmergeable(e));
        }
    }
    let mut sent = 0;
    for (_, cells) in finished.into_iter().skip(window.offset as usize) {
        if window.limit.is_some_and(|l| sent >= l) {
            break;
        }
        sink.row(&cells, m.visible).await.map_err(Failure::Sink)?;
        sent += 1;
    }
    Ok(sent)
}
