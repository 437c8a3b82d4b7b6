//! The SQL a partition move runs on the shards: which rows of a table belong to a hash partition,
//! computed by PostgreSQL itself with the same hash the map uses (`shardmap::hash`), and a
//! comparison of a partition's rows on two shards.

use crate::shardmap::{KeyType, hash};

/// `true` for the rows of `key` (a column, quoted) in partition `partition` of `partitions`:
/// PostgreSQL's partition hash, `hash_combine64(0, h) % partitions`, in unsigned arithmetic.
pub fn in_partition(key_type: KeyType, key: &str, partition: u32, partitions: u32) -> String {
    let seed = hash::PARTITION_SEED as i64;
    let h = match key_type {
        KeyType::Int => format!("hashint8extended({key}::int8, {seed})"),
        KeyType::Text => format!("hashtextextended({key}::text, {seed})"),
        KeyType::Uuid => format!("uuid_hash_extended({key}, {seed})"),
    };
    // hash_combine64(0, h) is h plus this constant, modulo 2^64.
    format!(
        "(({h})::numeric + {} + 18446744073709551616) % 18446744073709551616 % {partitions} = {partition}",
        hash::COMBINE
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
/// same rows.
pub fn fingerprint(table: &str, filter: &str) -> String {
    let t = ident(table);
    format!(
        "SELECT count(*)::int8, coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x WHERE {filter}"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partition_predicate_is_postgresql_s_hash() {
        let p = super::in_partition(crate::shardmap::KeyType::Int, "id", 5, 64);
        assert_eq!(
            p,
            "((hashint8extended(id::int8, 8816678312871386365))::numeric + 5305509591434766563 + 18446744073709551616) \
             % 18446744073709551616 % 64 = 5"
        );
    }
}
