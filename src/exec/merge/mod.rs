//! Merging the rows of a statement that ran on several shards: typed values, ordering as the
//! databases order them, and combining partial aggregates (COUNT and SUM add up, MIN and MAX
//! pick, AVG divides the summed SUM by the summed COUNT). Protocol-agnostic: a front end decodes
//! its backends' cells into [`Value`]s and encodes the results back ([`crate::exec::Cells`]); the
//! plan of what to merge is [`crate::analyze::shard::Merge`]; [`run`] merges shard streams.

pub mod decimal;
mod expr;
mod groups;
mod having;
#[cfg(test)]
mod run_tests;
mod stream;

use std::cmp::Ordering;

use crate::analyze::shard::{ColKind, SortKey};
pub use decimal::Decimal;

use crate::analyze::shard::Merge;
use crate::exec::{Cells, Failure, Params, RowSink, RowSource, Window};

/// Merges the shards' results of `m` into `sink`: grouped when `m` combines rows by group,
/// streamed otherwise. Returns the number of rows delivered.
pub async fn run<S: RowSource, K: RowSink>(
    sources: &mut [S],
    m: &Merge,
    cells: &impl Cells,
    params: &impl Params,
    window: Window,
    sink: &mut K,
) -> Result<u64, Failure<S::Error, K::Error>> {
    if m.grouped {
        groups::grouped(sources, m, cells, params, window, sink).await
    } else {
        stream::stream(sources, m, cells, window, sink).await
    }
}

/// A decoded cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer type.
    Int(i64),
    /// float4 and float8.
    Float(f64),
    /// numeric.
    Num(Decimal),
    /// Text types, compared byte by byte (the C collation); also ISO dates and times, uuids.
    Text(Vec<u8>),
    /// boolean.
    Bool(bool),
}

/// Why rows could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MergeError(pub String);

impl Value {
    /// Order of two non-null values of one column, as the database orders them.
    pub fn cmp_same(&self, o: &Value) -> Result<Ordering, MergeError> {
        Ok(match (self, o) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Num(a), Value::Num(b)) => a.cmp(b),
            (Value::Int(a), Value::Num(b)) => Decimal::int(*a as i128).cmp(b),
            (Value::Num(a), Value::Int(b)) => a.cmp(&Decimal::int(*b as i128)),
            // PostgreSQL orders NaN above every other float.
            (Value::Float(a), Value::Float(b)) => match (a.is_nan(), b.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            },
            (Value::Text(a), Value::Text(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (a, b) => return Err(MergeError(format!("cannot compare {a:?} with {b:?}"))),
        })
    }
}

/// Compares two rows' sort keys (`a[i]` is the value of `keys[i]`).
pub fn cmp_keys(a: &[Value], b: &[Value], keys: &[SortKey]) -> Result<Ordering, MergeError> {
    for (k, (x, y)) in keys.iter().zip(a.iter().zip(b)) {
        let o = match (x, y) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => {
                if k.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (_, Value::Null) => {
                if k.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (x, y) => {
                let o = x.cmp_same(y)?;
                if k.desc { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return Ok(o);
        }
    }
    Ok(Ordering::Equal)
}

/// Adds two partial sums or counts.
pub fn add(a: &Value, b: &Value) -> Result<Value, MergeError> {
    let overflow = || MergeError("sum out of range while merging shards".into());
    Ok(match (a, b) {
        (Value::Null, x) | (x, Value::Null) => x.clone(),
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_add(*y).ok_or_else(overflow)?),
        (Value::Num(x), Value::Num(y)) => Value::Num(x.checked_add(*y).map_err(|_| overflow())?),
        (Value::Int(x), Value::Num(y)) | (Value::Num(y), Value::Int(x)) => {
            Value::Num(Decimal::int(*x as i128).checked_add(*y).map_err(|_| overflow())?)
        }
        (Value::Float(x), Value::Float(y)) => Value::Float(x + y),
        (x, y) => return Err(MergeError(format!("cannot add {x:?} and {y:?}"))),
    })
}

/// Combines the partial aggregate `b` into `a` for a column of kind `kind`. MIN and MAX report
/// whether `b` replaces `a` (the caller keeps the winning cell's bytes).
pub fn combine(kind: ColKind, a: &Value, b: &Value) -> Result<(Value, bool), MergeError> {
    Ok(match kind {
        ColKind::Count | ColKind::Sum | ColKind::Avg { .. } => (add(a, b)?, false),
        ColKind::Min | ColKind::Max => {
            let replace = match (a, b) {
                (_, Value::Null) => false,
                (Value::Null, _) => true,
                (x, y) => {
                    let o = y.cmp_same(x)?;
                    if kind == ColKind::Min {
                        o == Ordering::Less
                    } else {
                        o == Ordering::Greater
                    }
                }
            };
            (if replace { b.clone() } else { a.clone() }, replace)
        }
        // Counted from the distinct values a group collects (see `groups`), not combined.
        ColKind::Plain | ColKind::CountDistinct | ColKind::Expr(_) => (a.clone(), false),
    })
}

/// The identity of a value for COUNT(DISTINCT): equal keys for values the database holds equal
/// (numerics whatever their scale, either zero, any NaN); `None` for NULL, which is not counted.
pub fn distinct_key(v: &Value) -> Option<Vec<u8>> {
    let mut k = Vec::with_capacity(17);
    match v {
        Value::Null => return None,
        Value::Int(i) => {
            k.push(b'i');
            k.extend_from_slice(&i.to_be_bytes());
        }
        Value::Float(f) => {
            let f = if f.is_nan() {
                f64::NAN
            } else if *f == 0.0 {
                0.0
            } else {
                *f
            };
            k.push(b'f');
            k.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Num(d) => {
            let (mut mant, mut scale) = (d.mant, d.scale);
            while scale > 0 && mant % 10 == 0 {
                mant /= 10;
                scale -= 1;
            }
            k.push(b'n');
            k.extend_from_slice(&mant.to_be_bytes());
            k.extend_from_slice(&scale.to_be_bytes());
        }
        Value::Text(t) => {
            k.push(b't');
            k.extend_from_slice(t);
        }
        Value::Bool(b) => k.extend_from_slice(&[b'b', *b as u8]),
    }
    Some(k)
}

/// AVG from the merged SUM and COUNT: numeric for exact sums (as PostgreSQL's avg of integers
/// and numerics), float for float sums.
pub fn average(sum: &Value, count: &Value) -> Result<Value, MergeError> {
    let overflow = || MergeError("average out of range while merging shards".into());
    let n = match count {
        Value::Int(n) => *n,
        _ => return Err(MergeError("AVG count is not an integer".into())),
    };
    if n == 0 {
        return Ok(Value::Null);
    }
    Ok(match sum {
        Value::Null => Value::Null,
        Value::Float(f) => Value::Float(f / n as f64),
        Value::Int(s) => Value::Num(
            Decimal::int(*s as i128)
                .div_pg(Decimal::int(n as i128))
                .map_err(|_| overflow())?
                .unwrap_or(Decimal::int(0)),
        ),
        Value::Num(s) => Value::Num(
            s.div_pg(Decimal::int(n as i128))
                .map_err(|_| overflow())?
                .unwrap_or(Decimal::int(0)),
        ),
        other => return Err(MergeError(format!("cannot average {other:?}"))),
    })
}

/// A literal's text as a value comparable with `like` (the value of the other side of a
/// comparison), or `None` when it is not of that kind.
pub fn coerce_literal(text: &str, like: &Value) -> Option<Value> {
    Some(match like {
        Value::Int(_) => match text.trim().parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Num(Decimal::parse(text)?),
        },
        Value::Num(_) => Value::Num(Decimal::parse(text)?),
        Value::Float(_) => Value::Float(text.trim().parse().ok()?),
        Value::Text(_) => Value::Text(text.as_bytes().to_vec()),
        Value::Bool(_) => Value::Bool(matches!(
            text.trim().to_ascii_lowercase().as_str(),
            "t" | "true" | "1" | "yes" | "on"
        )),
        Value::Null => return None,
    })
}

/// SQL comparison with three-valued logic: `None` when either side is NULL.
pub fn compare(a: &Value, op: crate::analyze::shard::CmpOp, b: &Value) -> Result<Option<bool>, MergeError> {
    use crate::analyze::shard::CmpOp;
    if *a == Value::Null || *b == Value::Null {
        return Ok(None);
    }
    let o = a.cmp_same(b)?;
    Ok(Some(match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    }))
}

/// Formats a float as PostgreSQL's float8out does by default: the shortest text that reads back
/// exactly, with an exponent outside 1e-4 .. 1e15.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        let s = format!("{f:e}"); // e.g. 1.5e20, 1e-5
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{f}");
    if s == "-0" { "-0".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(desc: bool, nulls_first: bool) -> SortKey {
        SortKey {
            col: 0,
            desc,
            nulls_first,
            byte_order: false,
        }
    }

    #[test]
    fn orders_with_nulls_and_direction() {
        let asc = [key(false, false)];
        let desc = [key(true, true)];
        assert_eq!(cmp_keys(&[Value::Int(1)], &[Value::Int(2)], &asc), Ok(Ordering::Less));
        assert_eq!(
            cmp_keys(&[Value::Int(1)], &[Value::Int(2)], &desc),
            Ok(Ordering::Greater)
        );
        assert_eq!(cmp_keys(&[Value::Null], &[Value::Int(2)], &asc), Ok(Ordering::Greater));
        assert_eq!(cmp_keys(&[Value::Null], &[Value::Int(2)], &desc), Ok(Ordering::Less));
        assert_eq!(
            cmp_keys(&[Value::Null], &[Value::Int(2)], &[key(false, true)]),
            Ok(Ordering::Less)
        );
        assert_eq!(
            cmp_keys(&[Value::Float(f64::NAN)], &[Value::Float(1e300)], &asc),
            Ok(Ordering::Greater)
        );
        assert_eq!(
            cmp_keys(&[Value::Text(b"B".to_vec())], &[Value::Text(b"a".to_vec())], &asc),
            Ok(Ordering::Less)
        );
        let two = [key(false, false), key(true, true)];
        assert_eq!(
            cmp_keys(&[Value::Int(1), Value::Int(5)], &[Value::Int(1), Value::Int(7)], &two),
            Ok(Ordering::Greater)
        );
        assert!(cmp_keys(&[Value::Int(1)], &[Value::Text(vec![])], &asc).is_err());
    }

    #[test]
    fn combines_partial_aggregates() {
        assert_eq!(
            combine(ColKind::Count, &Value::Int(3), &Value::Int(4)).unwrap().0,
            Value::Int(7)
        );
        assert_eq!(
            combine(ColKind::Sum, &Value::Null, &Value::Int(4)).unwrap().0,
            Value::Int(4)
        );
        let (v, replaced) = combine(ColKind::Min, &Value::Int(3), &Value::Int(2)).unwrap();
        assert_eq!((v, replaced), (Value::Int(2), true));
        let (v, replaced) = combine(ColKind::Max, &Value::Int(3), &Value::Null).unwrap();
        assert_eq!((v, replaced), (Value::Int(3), false));
        assert!(combine(ColKind::Sum, &Value::Int(i64::MAX), &Value::Int(1)).is_err());
        let n = |s: &str| Value::Num(Decimal::parse(s).unwrap());
        assert_eq!(combine(ColKind::Sum, &n("1.5"), &Value::Int(2)).unwrap().0, n("3.5"));
    }

    #[test]
    fn averages_like_postgres() {
        // avg(x) over 1, 2, 3, 4 is 2.5000000000000000 in PostgreSQL.
        assert_eq!(
            average(&Value::Int(10), &Value::Int(4)).unwrap(),
            Value::Num(Decimal::parse("2.5000000000000000").unwrap())
        );
        assert_eq!(average(&Value::Null, &Value::Int(0)).unwrap(), Value::Null);
        assert_eq!(average(&Value::Float(3.0), &Value::Int(2)).unwrap(), Value::Float(1.5));
    }

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(format_float(1.5), "1.5");
        assert_eq!(format_float(100.0), "100");
        assert_eq!(format_float(1e20), "1e+20");
        assert_eq!(format_float(1.25e-5), "1.25e-05");
        assert_eq!(format_float(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_float(f64::NAN), "NaN");
    }
}
