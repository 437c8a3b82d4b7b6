//! Shard key values and their types. A literal, a Bind parameter (text or binary) and a COPY field
//! all become a `KeyValue` of the group's `KeyType` before they are located, so every path agrees
//! on what one key is (the same integer whatever its width, a uuid in any accepted spelling).

use std::fmt;

/// Key type of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// smallint, integer, bigint: hashed as PostgreSQL hashes int8 (same value, same hash).
    Int,
    /// text and varchar.
    Text,
    /// uuid.
    Uuid,
}

impl KeyType {
    pub(super) fn parse(s: &str) -> Option<KeyType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bigint" | "int8" | "int" | "integer" | "int4" | "smallint" | "int2" => KeyType::Int,
            "text" | "varchar" | "character varying" => KeyType::Text,
            "uuid" => KeyType::Uuid,
            _ => return None,
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Int => "integer",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        })
    }
}

/// A shard key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    /// Any integer width.
    Int(i64),
    /// Text.
    Text(String),
    /// A uuid's 16 bytes.
    Uuid([u8; 16]),
}

impl KeyValue {
    /// Reads a value of `ty` from its text form (as in SQL literals and the text wire format).
    pub fn parse(ty: KeyType, s: &str) -> Option<KeyValue> {
        match ty {
            KeyType::Int => s.trim().parse().ok().map(KeyValue::Int),
            KeyType::Text => Some(KeyValue::Text(s.to_owned())),
            KeyType::Uuid => parse_uuid(s).map(KeyValue::Uuid),
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(i) => write!(f, "{i}"),
            KeyValue::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            KeyValue::Uuid(u) => {
                let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "'{}-{}-{}-{}-{}'",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
        }
    }
}

/// Parses a uuid in PostgreSQL's accepted forms (hyphens optional, braces allowed).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|&c| c != '-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
