//! Shard maps: which shard holds which rows. A map lists the shards, table groups with their key
//! type and partitioning (hash into fixed partitions, integer ranges, value lists) and the
//! assignment of partitions to shards, the sharded tables of each group with their key column,
//! reference tables (a copy on every shard), and the default shard for everything else.
//!
//! Owns the file format (`raw`), its full validation, and key → partition → shard (`hash` holds
//! the partition hash, a contract that never changes). Protocol-agnostic.
#![warn(missing_docs)]

pub mod diff;
pub mod edit;
pub mod hash;
pub mod raw;
pub mod states;

pub use states::PartitionState;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use raw::{RawGroup, RawMap, RawTable};

/// Index of a shard in [`ShardMap::shards`].
pub type ShardId = usize;

/// Why a map was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MapError {
    /// Dotted path of the field (prefixed with the file when loaded from one).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> MapError {
    MapError {
        path: path.into(),
        message: message.into(),
    }
}

/// A validated shard map.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMap {
    /// Version, logged on every change.
    pub version: u64,
    /// Shard names; a [`ShardId`] indexes this list.
    pub shards: Vec<String>,
    /// Shard of unsharded tables.
    pub default_shard: ShardId,
    /// Refuse UPDATE/DELETE of a sharded table that would run on every shard.
    pub refuse_scatter_writes: bool,
    /// Table groups.
    pub groups: Vec<Group>,
    /// Sharded and reference tables by lower-case name (without schema).
    pub tables: HashMap<String, TableRule>,
    /// Tables whose ID column shardwire fills, by table name.
    pub id_columns: HashMap<String, IdColumn>,
}

/// A column filled with generated IDs when an INSERT leaves it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdColumn {
    /// Column name, lower case.
    pub column: String,
    /// An INSERT that supplies the column is refused (else its values are kept).
    pub refuse_supplied: bool,
}

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
    fn parse(s: &str) -> Option<KeyType> {
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

/// A table group: tables sharded alike, so rows with one key live on one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Key → shard.
    pub partitioning: Partitioning,
    /// Hash partitions that do not simply serve (moving, fenced), by partition.
    pub states: BTreeMap<u32, PartitionState>,
}

/// How a group's keys map to shards.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitioning {
    /// PostgreSQL's partition hash into `owner.len()` partitions; `owner[p]` holds partition p.
    Hash {
        /// Shard of each partition.
        owner: Vec<ShardId>,
    },
    /// Integer ranges, sorted, covering every value without overlap.
    Range {
        /// `(from, shard)`: keys from `from` (inclusive) up to the next entry's `from`.
        starts: Vec<(Option<i64>, ShardId)>,
    },
    /// Values listed per shard; a value not listed has no shard.
    List {
        /// Value → shard.
        values: HashMap<KeyValue, ShardId>,
    },
}

/// Where a key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The hash partition, for hash-partitioned groups.
    pub partition: Option<u32>,
    /// The shard.
    pub shard: ShardId,
}

impl Group {
    /// The partition and shard of a key, or why it has none.
    pub fn locate(&self, key: &KeyValue) -> Result<Placement, String> {
        match (&self.partitioning, key) {
            (Partitioning::Hash { owner }, k) => {
                let h = match (self.key_type, k) {
                    (KeyType::Int, KeyValue::Int(i)) => hash::hash_int(*i, hash::PARTITION_SEED),
                    (KeyType::Text, KeyValue::Text(s)) => hash::hash_text(s, hash::PARTITION_SEED),
                    (KeyType::Uuid, KeyValue::Uuid(u)) => hash::hash_uuid(u, hash::PARTITION_SEED),
                    _ => return Err(format!("key {k} is not of the group's type {}", self.key_type)),
                };
                let p = hash::partition_of(h, owner.len() as u32);
                Ok(Placement {
                    partition: Some(p),
                    shard: owner[p as usize],
                })
            }
            (Partitioning::Range { starts }, KeyValue::Int(i)) => {
                let idx = starts.partition_point(|(from, _)| from.is_none_or(|f| f <= *i));
                // Validation makes the first range start unbounded, so idx >= 1.
                Ok(Placement {
                    partition: None,
                    shard: starts[idx.max(1) - 1].1,
                })
            }
            (Partitioning::Range { .. }, k) => Err(format!("key {k} is not an integer")),
            (Partitioning::List { values }, k) => values
                .get(k)
                .map(|&shard| Placement { partition: None, shard })
                .ok_or_else(|| format!("no shard holds key {k} of list-partitioned group {}", self.name)),
        }
    }

    /// The shards that hold some of the group's keys: where a statement over every row of the
    /// group runs. A shard the group has no partition on may still hold stale rows (left behind
    /// by a move), which must not be read.
    pub fn holders(&self) -> BTreeSet<ShardId> {
        match &self.partitioning {
            Partitioning::Hash { owner } => owner.iter().copied().collect(),
            Partitioning::Range { starts } => starts.iter().map(|&(_, s)| s).collect(),
            Partitioning::List { values } => values.values().copied().collect(),
        }
    }

    /// Whether statements touching partition `p` wait (a move's cutover).
    pub fn fenced(&self, p: u32) -> bool {
        self.states.get(&p) == Some(&PartitionState::Fenced)
    }

    /// The first fenced partition, if any.
    pub fn first_fenced(&self) -> Option<u32> {
        self.states
            .iter()
            .find(|(_, s)| **s == PartitionState::Fenced)
            .map(|(p, _)| *p)
    }

    /// Number of partitions per shard, for display.
    pub fn partitions_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut n = vec![0; shards];
        match &self.partitioning {
            Partitioning::Hash { owner } => owner.iter().for_each(|&s| n[s] += 1),
            Partitioning::Range { starts } => starts.iter().for_each(|&(_, s)| n[s] += 1),
            Partitioning::List { values } => values.values().for_each(|&s| n[s] += 1),
        }
        n
    }
}

/// What the map says about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRule {
    /// Sharded by `key` in group `group`.
    Sharded {
        /// Index into [`ShardMap::groups`].
        group: usize,
        /// Key column, lower case.
        key: String,
    },
    /// A copy on every shard.
    Reference,
}

impl ShardMap {
    /// The rule for a table name (any schema prefix is ignored), or `None` for an unsharded table.
    pub fn table(&self, name: &str) -> Option<&TableRule> {
        self.tables.get(name)
    }

    /// A map with one shard and no sharded tables: what an unsharded configuration serves.
    pub fn single(shard: &str) -> ShardMap {
        ShardMap {
            version: 0,
            shards: vec![shard.to_owned()],
            default_shard: 0,
            refuse_scatter_writes: false,
            groups: Vec::new(),
            tables: HashMap::new(),
            id_columns: HashMap::new(),
        }
    }

    /// Every shard id.
    pub fn all_shards(&self) -> Vec<ShardId> {
        (0..self.shards.len()).collect()
    }

    /// Where `key` of `table` lives.
    pub fn locate(&self, table: &str, key: &str) -> Result<(Placement, &Group), String> {
        match self.table(&table.to_ascii_lowercase()) {
            Some(TableRule::Sharded { group, .. }) => {
                let g = &self.groups[*group];
                let k = KeyValue::parse(g.key_type, key)
                    .ok_or_else(|| format!("`{key}` is not a valid {} key", g.key_type))?;
                Ok((g.locate(&k)?, g))
            }
            Some(TableRule::Reference) => Err(format!("{table} is a reference table: every shard holds it")),
            None => Err(format!(
                "{table} is not sharded: it lives on the default shard {}",
                self.shards[self.default_shard]
            )),
        }
    }
}

/// Reads and validates a map file.
pub fn load(path: &Path) -> Result<ShardMap, MapError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path.display().to_string(), e.to_string()))?;
    parse(&text).map_err(|e| err(format!("{}: {}", path.display(), e.path), e.message))
}

/// Parses and validates a map text.
pub fn parse(text: &str) -> Result<ShardMap, MapError> {
    let raw: RawMap = toml::from_str(text).map_err(|e| err("map", e.to_string()))?;
    validate(raw)
}

/// Validates a map in full: shards named and unique, every hash partition assigned exactly once,
/// ranges covering every key without overlap, list values held once, key types known, tables
/// naming existing groups with a key column.
pub fn validate(raw: RawMap) -> Result<ShardMap, MapError> {
    if raw.shards.is_empty() {
        return Err(err("shards", "list at least one shard"));
    }
    let mut shard_ids = HashMap::new();
    for (i, s) in raw.shards.iter().enumerate() {
        if s.is_empty() || shard_ids.insert(s.as_str(), i).is_some() {
            return Err(err(
                format!("shards[{i}]"),
                format!("shard name `{s}` is empty or repeated"),
            ));
        }
    }
    let shard = |path: &str, name: &str| {
        shard_ids.get(name).copied().ok_or_else(|| {
            err(
                path,
                format!("`{name}` is not one of the shards ({})", raw.shards.join(", ")),
            )
        })
    };
    let default_shard = shard("default_shard", &raw.default_shard)?;
    let refuse_scatter_writes = match raw.scatter_writes.as_deref() {
        None | Some("allow") => false,
        Some("refuse") => true,
        Some(o) => return Err(err("scatter_writes", format!("`{o}` is not one of allow, refuse"))),
    };
    let mut groups = Vec::new();
    let mut group_ids = HashMap::new();
    for (name, g) in &raw.groups {
        group_ids.insert(name.as_str(), groups.len());
        groups.push(group(name, g, &shard)?);
    }
    let mut tables = HashMap::new();
    let mut id_columns = HashMap::new();
    for (name, t) in &raw.tables {
        let rule = table(name, t, &group_ids)?;
        let path = format!("tables.{name}");
        let refuse_supplied = match t.supplied_ids.as_deref() {
            None | Some("keep") => false,
            Some("refuse") => true,
            Some(o) => {
                return Err(err(
                    format!("{path}.supplied_ids"),
                    format!("`{o}` is not one of keep, refuse"),
                ));
            }
        };
        match &t.id_column {
            Some(c) if c.is_empty() => return Err(err(format!("{path}.id_column"), "must not be empty")),
            Some(c) => {
                match &rule {
                    TableRule::Reference => {
                        return Err(err(format!("{path}.id_column"), "ID columns are for sharded tables"));
                    }
                    TableRule::Sharded { group, key }
                        if key.eq_ignore_ascii_case(c) && groups[*group].key_type != KeyType::Int =>
                    {
                        return Err(err(
                            format!("{path}.id_column"),
                            "a generated ID as shard key needs an integer key_type",
                        ));
                    }
                    _ => {}
                }
                id_columns.insert(
                    name.to_ascii_lowercase(),
                    IdColumn {
                        column: c.to_ascii_lowercase(),
                        refuse_supplied,
                    },
                );
            }
            None if t.supplied_ids.is_some() => {
                return Err(err(format!("{path}.supplied_ids"), "only meaningful with id_column"));
            }
            None => {}
        }
        if tables.insert(name.to_ascii_lowercase(), rule).is_some() {
            return Err(err(
                format!("tables.{name}"),
                "table named twice (names are case-insensitive)",
            ));
        }
    }
    Ok(ShardMap {
        version: raw.version,
        shards: raw.shards,
        default_shard,
        refuse_scatter_writes,
        groups,
        tables,
        id_columns,
    })
}

fn group(name: &str, g: &RawGroup, shard: &dyn Fn(&str, &str) -> Result<ShardId, MapError>) -> Result<Group, MapError> {
    let path = format!("groups.{name}");
    let key_type = KeyType::parse(&g.key_type).ok_or_else(|| {
        err(
            format!("{path}.key_type"),
            format!(
                "`{}` is not one of bigint, integer, smallint, text, varchar, uuid",
                g.key_type
            ),
        )
    })?;
    let kind = g.partitioning.kind.as_str();
    let unused = |field: &str, empty: bool| {
        if empty {
            Ok(())
        } else {
            Err(err(
                format!("{path}.{field}"),
                format!("not used by `{kind}` partitioning"),
            ))
        }
    };
    let partitioning = match kind {
        "hash" => {
            unused("ranges", g.ranges.is_empty())?;
            unused("lists", g.lists.is_empty())?;
            hash_assignment(&path, g, shard)?
        }
        "range" => {
            unused("assignment", g.assignment.is_empty())?;
            unused("lists", g.lists.is_empty())?;
            if key_type != KeyType::Int {
                return Err(err(
                    format!("{path}.partitioning"),
                    "range partitioning needs an integer key_type",
                ));
            }
            ranges(&path, g, shard)?
        }
        "list" => {
            unused("assignment", g.assignment.is_empty())?;
            unused("ranges", g.ranges.is_empty())?;
            lists(&path, g, key_type, shard)?
        }
        o => {
            return Err(err(
                format!("{path}.partitioning.kind"),
                format!("`{o}` is not one of hash, range, list"),
            ));
        }
    };
    if kind != "hash" && g.partitioning.partitions.is_some() {
        return Err(err(
            format!("{path}.partitioning.partitions"),
            "only hash partitioning has a partition count",
        ));
    }
    let partitions = match &partitioning {
        Partitioning::Hash { owner } => Some(owner.len() as u32),
        _ => None,
    };
    let states = states::validate(&path, &g.states, partitions)?;
    Ok(Group {
        name: name.to_owned(),
        key_type,
        partitioning,
        states,
    })
}

fn hash_assignment(
    path: &str,
    g: &RawGroup,
    shard: &dyn Fn(&str, &str) -> Result<ShardId, MapError>,
) -> Result<Partitioning, MapError> {
    let n = g.partitioning.partitions.ok_or_else(|| {
        err(
            format!("{path}.partitioning.partitions"),
            "hash partitioning needs a partition count",
        )
    })?;
    if !(1..=65536).contains(&n) {
        return Err(err(
            format!("{path}.partitioning.partitions"),
            "must be between 1 and 65536",
        ));
    }
    let mut owner: Vec<Option<ShardId>> = vec![None; n as usize];
    for (s, spec) in &g.assignment {
        let apath = format!("{path}.assignment.{s}");
        let id = shard(&apath, s)?;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
                None => (part.parse::<u32>(), part.parse::<u32>()),
            };
            let (Ok(lo), Ok(hi)) = (lo, hi) else {
                return Err(err(
                    apath,
                    format!("`{part}` is not a partition number or a range like 0-63"),
                ));
            };
            if lo > hi || hi >= n {
                return Err(err(apath, format!("`{part}` is outside partitions 0-{}", n - 1)));
            }
            for p in lo..=hi {
                if let Some(prev) = owner[p as usize] {
                    return Err(err(
                        apath,
                        format!("partition {p} is already assigned (to shard index {prev})"),
                    ));
                }
                owner[p as usize] = Some(id);
            }
        }
    }
    let missing: Vec<usize> = owner
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_none())
        .map(|(i, _)| i)
        .collect();
    if let Some(first) = missing.first() {
        return Err(err(
            format!("{path}.assignment"),
            format!(
                "{} partition(s) not assigned to any shard, starting with {first}",
                missing.len()
            ),
        ));
    }
    Ok(Partitioning::Hash {
        owner: owner.into_iter().map(|o| o.unwrap_or_default()).collect(),
    })
}

fn ranges(
    path: &str,
    g: &RawGroup,
    shard: &dyn Fn(&str, &str) -> Result<ShardId, MapError>,
) -> Result<Partitioning, MapError> {
    if g.ranges.is_empty() {
        return Err(err(
            format!("{path}.ranges"),
            "range partitioning needs at least one range",
        ));
    }
    let mut rs: Vec<(usize, &raw::RawRange)> = g.ranges.iter().enumerate().collect();
    rs.sort_by_key(|(_, r)| r.from.map_or(i128::MIN, i128::from));
    let mut starts = Vec::new();
    let mut prev_to: Option<Option<i64>> = None; // None: before the first range
    for (i, r) in &rs {
        let rpath = format!("{path}.ranges[{i}]");
        if let (Some(f), Some(t)) = (r.from, r.to)
            && f >= t
        {
            return Err(err(rpath, format!("from {f} is not below to {t}")));
        }
        match prev_to {
            None if r.from.is_some() => {
                return Err(err(
                    rpath,
                    format!(
                        "keys below {} have no range: the lowest range must have no `from`",
                        r.from.unwrap_or_default()
                    ),
                ));
            }
            Some(None) => return Err(err(rpath, "overlaps the range before it, which has no `to`")),
            Some(Some(t)) if r.from != Some(t) => {
                let what = if r.from.is_some_and(|f| f < t) {
                    "overlaps"
                } else {
                    "leaves a gap after"
                };
                return Err(err(rpath, format!("{what} the range ending at {t}: start it at {t}")));
            }
            _ => {}
        }
        starts.push((r.from, shard(&format!("{rpath}.shard"), &r.shard)?));
        prev_to = Some(r.to);
    }
    if let Some(Some(t)) = prev_to {
        return Err(err(
            format!("{path}.ranges"),
            format!("keys from {t} up have no range: the highest range must have no `to`"),
        ));
    }
    Ok(Partitioning::Range { starts })
}

fn lists(
    path: &str,
    g: &RawGroup,
    key_type: KeyType,
    shard: &dyn Fn(&str, &str) -> Result<ShardId, MapError>,
) -> Result<Partitioning, MapError> {
    let mut values = HashMap::new();
    for (s, vs) in &g.lists {
        let lpath = format!("{path}.lists.{s}");
        let id = shard(&lpath, s)?;
        for v in vs {
            let parsed = match (key_type, v) {
                (KeyType::Int, toml::Value::Integer(i)) => Some(KeyValue::Int(*i)),
                (KeyType::Text, toml::Value::String(t)) => Some(KeyValue::Text(t.clone())),
                (KeyType::Uuid, toml::Value::String(t)) => parse_uuid(t).map(KeyValue::Uuid),
                _ => None,
            };
            let k = parsed.ok_or_else(|| err(&lpath, format!("{v} is not a {key_type} value")))?;
            if values.insert(k, id).is_some() {
                return Err(err(&lpath, format!("value {v} is listed twice")));
            }
        }
    }
    if values.is_empty() {
        return Err(err(
            format!("{path}.lists"),
            "list partitioning needs at least one value",
        ));
    }
    Ok(Partitioning::List { values })
}

fn table(name: &str, t: &RawTable, group_ids: &HashMap<&str, usize>) -> Result<TableRule, MapError> {
    let path = format!("tables.{name}");
    if t.reference {
        if t.group.is_some() || t.key.is_some() {
            return Err(err(path, "a reference table has no group or key"));
        }
        return Ok(TableRule::Reference);
    }
    let g = t.group.as_deref().ok_or_else(|| {
        err(
            format!("{path}.group"),
            "a sharded table needs a group (or reference = true)",
        )
    })?;
    let group = *group_ids.get(g).ok_or_else(|| {
        let known: Vec<&str> = group_ids.keys().copied().collect();
        err(
            format!("{path}.group"),
            format!("no group `{g}` (groups: {})", known.join(", ")),
        )
    })?;
    let key = t
        .key
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| err(format!("{path}.key"), "a sharded table needs its key column"))?;
    Ok(TableRule::Sharded {
        group,
        key: key.to_ascii_lowercase(),
    })
}

/// Human-readable summary for `SHOW MAP` and `check`: one line per group.
pub fn describe(map: &ShardMap) -> Vec<(String, String, String, String)> {
    let mut by_group: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (t, r) in &map.tables {
        if let TableRule::Sharded { group, .. } = r {
            by_group.entry(*group).or_default().push(t);
        }
    }
    map.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let mut tables = by_group.remove(&i).unwrap_or_default();
            tables.sort();
            let kind = match &g.partitioning {
                Partitioning::Hash { owner } => format!("hash/{}", owner.len()),
                Partitioning::Range { starts } => format!("range/{}", starts.len()),
                Partitioning::List { values } => format!("list/{}", values.len()),
            };
            let per: Vec<String> = g
                .partitions_per_shard(map.shards.len())
                .iter()
                .zip(&map.shards)
                .map(|(n, s)| format!("{s}={n}"))
                .collect();
            (g.name.clone(), kind, per.join(" "), tables.join(","))
        })
        .collect()
}

#[cfg(test)]
mod tests;
