//! The partition hash: PostgreSQL's own hash-partitioning function (`PARTITION BY HASH`), so a
//! shard can compute a row's partition in SQL and rows can be checked in place. This is an
//! on-disk contract: it must never change. Specified with test vectors in `docs/shard-maps.md`.
//!
//! PostgreSQL hashes a key with the type's extended hash function and the seed
//! `HASH_PARTITION_SEED`, folds it into the row hash with `hash_combine64(0, h)`, and takes the
//! remainder by the number of partitions. The byte hash is Bob Jenkins' lookup3 as in
//! PostgreSQL's `hashfn.c`, reading words little-endian (PostgreSQL on big-endian machines
//! computes other values; shardwire always uses the little-endian ones).
//!
//! Written here rather than taken from a crate: no maintained crate exposes PostgreSQL's
//! partition hash, and the function is the product's contract.

/// PostgreSQL's `HASH_PARTITION_SEED`.
pub const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;
/// The constant `hash_combine64` adds.
pub const COMBINE: u64 = 0x49a0_f4dd_15e5_a8e3;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

fn seeded(len: u32, seed: u64) -> (u32, u32, u32) {
    let init = 0x9e37_79b9u32.wrapping_add(len).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

/// PostgreSQL's `hash_bytes_extended`.
pub fn hash_bytes_extended(k: &[u8], seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(k.len() as u32, seed);
    let word = |s: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        w[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(w)
    };
    let mut chunks = k.chunks_exact(12);
    for ch in &mut chunks {
        a = a.wrapping_add(word(&ch[0..4]));
        b = b.wrapping_add(word(&ch[4..8]));
        c = c.wrapping_add(word(&ch[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    let rest = chunks.remainder();
    // The tail: a gets bytes 0-3, b bytes 4-7, c bytes 8-10 shifted up one byte (the lowest byte
    // of c is reserved for the length in the original design).
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]) << 8);
    }
    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// PostgreSQL's `hash_bytes_uint32_extended`.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let (mut a, mut b, mut c) = seeded(4, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    ((b as u64) << 32) | c as u64
}

/// `hashint8extended` (also what `hashint4extended` and `hashint2extended` give for values in
/// their range, so a key hashes alike whatever its integer width).
pub fn hash_int(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    hash_uint32_extended(lo ^ if v >= 0 { hi } else { !hi }, seed)
}

/// `hashtextextended` under a deterministic collation: the bytes of the string.
pub fn hash_text(v: &str, seed: u64) -> u64 {
    hash_bytes_extended(v.as_bytes(), seed)
}

/// `uuid_hash_extended`: the 16 bytes of the uuid.
pub fn hash_uuid(v: &[u8; 16], seed: u64) -> u64 {
    hash_bytes_extended(v, seed)
}

/// The partition of a key hash among `partitions`, as `PARTITION BY HASH` with
/// `MODULUS partitions` computes it.
pub fn partition_of(key_hash: u64, partitions: u32) -> u32 {
    (key_hash.wrapping_add(COMBINE) % partitions as u64) as u32
}

/// The partition of `key` (an SQL expression of the group's key type) among `partitions`, as an
/// SQL expression PostgreSQL computes with the same hash as [`partition_of`]:
/// `hash_combine64(0, h) % partitions` in unsigned arithmetic. Written in int8 (numeric
/// arithmetic made a filter five times slower on a million rows, and it runs in every move's
/// copy, check and published change, and in every statement reading past a move's copies): with
/// `u = h + C` wrapping at 2^64, `u mod n = (h mod n + C mod n + (2^64 mod n if h + C wrapped
/// below zero, i.e. h < -C)) mod n`, every term small and non-negative. NULL for a NULL key.
pub fn partition_sql(key_type: super::KeyType, key: &str, partitions: u32) -> String {
    let seed = PARTITION_SEED as i64;
    let h = match key_type {
        super::KeyType::Int => format!("hashint8extended({key}::int8, {seed})"),
        super::KeyType::Text => format!("hashtextextended({key}::text, {seed})"),
        super::KeyType::Uuid => format!("uuid_hash_extended({key}, {seed})"),
    };
    let n = u64::from(partitions.max(1));
    // hash_combine64(0, h) is h plus this constant, modulo 2^64; it is below 2^63.
    let c_signed = COMBINE as i64;
    let c_mod = COMBINE % n;
    let wrap_mod = ((1u128 << 64) % u128::from(n)) as u64;
    format!("((({h}) % {n} + {n}) % {n} + {c_mod} + CASE WHEN ({h}) < -{c_signed} THEN {wrap_mod} ELSE 0 END) % {n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed by PostgreSQL 15: hashint8extended(k, 8816678312871386365) etc.
    const INT_VECTORS: &[(i64, i64)] = &[
        (0, -4403592609991167795),
        (1, 5968994663651403477),
        (-1, -5017072347659237694),
        (42, 7363975540656877951),
        (2147483648, 4938542303000433043),
        (-2147483649, -6050265599104649060),
        (i64::MAX, 4938542303000433043),
    ];
    const TEXT_VECTORS: &[(&str, i64)] = &[
        ("", -5700645584453517373),
        ("a", -6705225459120232837),
        ("hello", -2635279551741001039),
        ("abcdefghijk", -2046435308545367432),
        ("abcdefghijkl", -7876791541613377658),
        ("abcdefghijklmnopqrstuvwxyz", -7171292135076916904),
        ("日本語", -8050275759738715173),
    ];

    #[test]
    fn integer_keys_match_postgres() {
        for &(k, h) in INT_VECTORS {
            assert_eq!(hash_int(k, PARTITION_SEED), h as u64, "key {k}");
        }
    }

    #[test]
    fn text_keys_match_postgres() {
        for &(k, h) in TEXT_VECTORS {
            assert_eq!(hash_text(k, PARTITION_SEED), h as u64, "key {k:?}");
        }
    }

    #[test]
    fn uuid_keys_match_postgres() {
        let u: [u8; 16] = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11,
        ];
        assert_eq!(hash_uuid(&u, PARTITION_SEED), 424513190990560493);
    }

    #[test]
    fn partitions_match_postgres_hash_partitioning() {
        // Partitions of a PARTITION BY HASH table with MODULUS 8, as PostgreSQL 15 placed them.
        let ints: &[(i64, u32)] = &[(-2147483649, 7), (-1, 5), (0, 0), (1, 0), (42, 2), (2147483648, 6)];
        for &(k, p) in ints {
            assert_eq!(partition_of(hash_int(k, PARTITION_SEED), 8), p, "key {k}");
        }
        let texts: &[(&str, u32)] = &[
            ("", 6),
            ("a", 6),
            ("abcdefghijk", 3),
            ("abcdefghijkl", 1),
            ("hello", 4),
            ("日本語", 6),
        ];
        for &(k, p) in texts {
            assert_eq!(partition_of(hash_text(k, PARTITION_SEED), 8), p, "key {k:?}");
        }
    }
}
