//! Where two copies of a partition differ: the partition's rows of a table cut by key into
//! chunks of about a thousand rows (boundaries read from the source), and each chunk's row count
//! and checksum compared on both sides, so a missing, duplicated or changed row is named by the
//! key range it falls in rather than by the table alone.

use anyhow::Result;
use tokio_postgres::Client;

use super::sql;
use crate::shardmap::KeyType;

/// Rows per chunk.
const CHUNK: i64 = 1000;

/// The first key range whose rows differ between `source` and `target`, as
/// `keys [lo, hi)` (open at either end for the first and last chunk).
pub(super) async fn differing_range(
    source: &Client,
    target: &Client,
    table: &str,
    key: &str,
    key_type: KeyType,
    filter: &str,
) -> Result<String> {
    let (t, k) = (sql::ident(table), sql::ident(key));
    let cast = match key_type {
        KeyType::Int => "int8",
        KeyType::Text => "text",
        KeyType::Uuid => "uuid",
    };
    let bounds: Vec<String> = source
        .query(
            &format!(
                "SELECT k::text FROM (SELECT {k} AS k, row_number() OVER (ORDER BY {k}) AS n FROM {t} WHERE {filter}) s \
                 WHERE n % {CHUNK} = 0 ORDER BY n"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let quoted: Vec<String> = bounds.iter().map(|b| format!("'{}'", b.replace('\'', "''"))).collect();
    let chunks = format!(
        "SELECT width_bucket({k}, ARRAY[{}]::{cast}[]) AS b, count(*)::int8, md5(string_agg(x::text, '|' ORDER BY x::text)) \
         FROM {t} x WHERE {filter} GROUP BY b ORDER BY b",
        quoted.join(",")
    );
    let mut sides = Vec::with_capacity(2);
    for c in [source, target] {
        let rows = c.query(&chunks, &[]).await?;
        sides.push(
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<Vec<(i32, i64, String)>>(),
        );
    }
    let (a, b) = (&sides[0], &sides[1]);
    let bucket = (0..=bounds.len() as i32)
        .find(|n| a.iter().find(|r| r.0 == *n) != b.iter().find(|r| r.0 == *n))
        .unwrap_or(0);
    let count = |v: &[(i32, i64, String)]| v.iter().find(|r| r.0 == bucket).map_or(0, |r| r.1);
    let lo = usize::try_from(bucket - 1).ok().and_then(|i| bounds.get(i));
    let hi = bounds.get(bucket as usize);
    Ok(format!(
        "in keys [{}, {}) ({} rows there on the source, {} on the target)",
        lo.map_or("-inf", String::as_str),
        hi.map_or("+inf", String::as_str),
        count(a),
        count(b)
    ))
}
