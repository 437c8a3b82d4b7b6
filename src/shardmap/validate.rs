//! Map text → [`ShardMap`]. Every check a map must pass is here, run alike by `serve`, `check`,
//! reload and the admin map commands, and every error names the field it is about.

use std::collections::HashMap;
use std::path::Path;

use super::key::{KeyType, KeyValue, parse_uuid};
use super::model::{Group, IdColumn, Partitioning, ShardMap, TableRule};
use super::raw::{self, RawGroup, RawMap, RawTable};
use super::{MapError, ShardId, err, states};

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
