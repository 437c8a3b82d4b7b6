//! The SQL a partition move runs on the shards: which rows of a table belong to a hash partition,
//! computed by PostgreSQL itself with the same hash the map uses (`shardmap::hash`), and a
//! comparison of a partition's rows on two shards.

use crate::shardmap::{KeyType, hash};

/// `true` for the rows of `key` (a column, quoted) in partition `partition` of `partitions`:
/// PostgreSQL's partition hash, `hash_combine64(0, h) % partitions`, in unsigned arithmetic.
/// Written in int8 (numeric arithmetic made the filter five times slower on a million rows, and
/// it runs in every copy, check and published change): with `u = h + C` wrapping at 2^64,
/// `u mod n = (h mod n + C mod n + (2^64 mod n if h + C wrapped below zero, i.e. h < -C)) mod n`,
/// every term small and non-negative.
pub fn in_partition(key_type: KeyType, key: &str, partition: u32, partitions: u32) -> String {
    let seed = hash::PARTITION_SEED as i64;
    let h = match key_type {
        KeyType::Int => format!("hashint8extended({key}::int8, {seed})"),
        KeyType::Text => format!("hashtextextended({key}::text, {seed})"),
        KeyType::Uuid => format!("uuid_hash_extended({key}, {seed})"),
    };
    let n = u64::from(partitions.max(1));
    let c = hash::COMBINE;
    // hash_combine64(0, h) is h plus this constant, modulo 2^64; it is below 2^63.
    let c_signed = c as i64;
    let c_mod = c % n;
    let wrap_mod = ((1u128 << 64) % u128::from(n)) as u64;
    format!(
        "((({h}) % {n} + {n}) % {n} + {c_mod} + CASE WHEN ({h}) < -{c_signed} THEN {wrap_mod} ELSE 0 END) % {n} = {partition}"
    )
}

/// A table or column name as an identifier (quoted unless plain lower case).
pub fn ident(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Count and checksum of a table's rows in a partition: equal on two shards when they hold the
/// same rows. The checksum is the sum (exact, in numeric) of each row's 64-bit hash of its text:
/// it needs no sort (it runs inside the cutover's hold; an md5 of the rows in order took twice as
/// long), and a missing, extra or duplicated row changes the count or the sum.
pub fn fingerprint(table: &str, filter: &str) -> String {
    let t = ident(table);
    format!(
        "SELECT count(*)::int8, coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)::text FROM {t} x WHERE {filter}"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partition_predicate_is_postgresql_s_hash() {
        let p = super::in_partition(crate::shardmap::KeyType::Int, "id", 5, 64);
        assert_eq!(
            p,
            "(((hashint8extended(id::int8, 8816678312871386365)) % 64 + 64) % 64 + 35 + \
             CASE WHEN (hashint8extended(id::int8, 8816678312871386365)) < -5305509591434766563 THEN 0 ELSE 0 END) % 64 = 5"
        );
    }
}
