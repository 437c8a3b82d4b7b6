//! The SQL a partition move runs on the shards: which rows of a table belong to a hash partition,
//! computed by PostgreSQL itself with the same hash the map uses (`shardmap::hash`), and a
//! comparison of a partition's rows on two shards.

use crate::shardmap::{KeyType, hash};

/// `true` for the rows of `key` (a column, quoted) in partition `partition` of `partitions`.
pub fn in_partition(key_type: KeyType, key: &str, partition: u32, partitions: u32) -> String {
    format!("{} = {partition}", hash::partition_sql(key_type, key, partitions))
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
