//! Shard planning: a statement's [`Shape`] plus its parameter values → which shards run it and
//! how: one shard (bytes forwarded untouched), a scatter with a merge, the same write on several
//! shards, an INSERT split into one statement per shard, or a refusal. Pure, no I/O.

use sqlparser::ast::{SetExpr, Statement};
use std::collections::{BTreeMap, BTreeSet};

use crate::analyze::fingerprint::LITERAL_PARAM_BASE;
use crate::analyze::shard::{KeyCond, Merge, Operand, Shape};
use crate::shardmap::{Group, KeyType, KeyValue, ShardId, ShardMap};

/// Parameter values of an extended-protocol Bind.
#[derive(Debug, Default, Clone)]
pub struct Params<'a> {
    /// Format code per parameter (already expanded from the 0/1/n form).
    pub formats: Vec<i16>,
    /// Values; `None` is NULL.
    pub values: Vec<Option<&'a [u8]>>,
    /// The parameter types the client declared, as the Parse message carries them (a count,
    /// then one type OID each; 0, or none: the server's choice). A binary value is read as a key
    /// only when its type is the key's: 8 bytes of a float8 are not an int8.
    pub types: &'a [u8],
    /// Literals taken out of a simple-protocol text by
    /// [`crate::analyze::fingerprint::parameterize`], as parameters from
    /// [`LITERAL_PARAM_BASE`](crate::analyze::fingerprint::LITERAL_PARAM_BASE) on.
    pub literals: &'a [String],
}

/// What runs where.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardPlan {
    /// One shard: forwarded as is.
    One(ShardId),
    /// A read on several shards, merged.
    Scatter {
        /// Shards, ascending.
        shards: Vec<ShardId>,
        /// How to merge.
        merge: std::sync::Arc<Merge>,
    },
    /// The same write on several shards, committed atomically.
    Write {
        /// Shards, ascending.
        shards: Vec<ShardId>,
        /// Every shard holds the same copy (reference tables, DDL): one shard's answer is the answer.
        replicated: bool,
    },
    /// An INSERT whose rows go to several shards.
    InsertSplit {
        /// One statement per shard.
        parts: Vec<InsertPart>,
    },
    /// `COPY ... FROM STDIN`: rows split by key over every shard.
    CopySplit {
        /// Shards, ascending.
        shards: Vec<ShardId>,
    },
    /// An INSERT that needs generated IDs first (the session fills them, then plans again).
    GenerateIds {
        /// The ID column.
        column: String,
        /// Rows.
        rows: usize,
    },
    /// An INSERT without a column list: the session reads the table's columns, names them in the
    /// statement and plans it again.
    NeedColumns {
        /// The table as the statement names it.
        table: String,
    },
    /// `COPY table TO STDOUT`: each shard's rows streamed in turn.
    CopyOut {
        /// Shards, ascending.
        shards: Vec<ShardId>,
        /// Skip the header line of every shard but the first.
        header: bool,
        /// Binary format: one header and one trailer for all the shards' rows.
        binary: bool,
    },
    /// An INSERT ... SELECT: the session reads the SELECT's rows, then plans the INSERT of
    /// them.
    InsertSelect {
        /// The source query.
        select: String,
    },
    /// It touches a partition in a move's cutover: the session waits for the map to change.
    Fenced {
        /// The group.
        group: String,
        /// The partition.
        partition: u32,
    },
    /// A query string whose statements need different shards: the session runs them one at a
    /// time, each on its own shards, in the string's transaction.
    Statements,
    /// Not run; the reason.
    Refuse(String),
}

/// The rows of a split INSERT for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    /// The shard.
    pub shard: ShardId,
    /// The statement, parameters renumbered from $1.
    pub sql: String,
    /// For each parameter of `sql`, the index of the client's parameter it carries.
    pub params: Vec<usize>,
}

impl ShardPlan {
    /// The shards the plan touches.
    pub fn shards(&self) -> Vec<ShardId> {
        match self {
            ShardPlan::One(s) => vec![*s],
            ShardPlan::Scatter { shards, .. } | ShardPlan::Write { shards, .. } | ShardPlan::CopySplit { shards } => {
                shards.clone()
            }
            ShardPlan::InsertSplit { parts } => parts.iter().map(|p| p.shard).collect(),
            ShardPlan::CopyOut { shards, .. } => shards.clone(),
            ShardPlan::Refuse(_)
            | ShardPlan::GenerateIds { .. }
            | ShardPlan::NeedColumns { .. }
            | ShardPlan::InsertSelect { .. }
            | ShardPlan::Statements
            | ShardPlan::Fenced { .. } => Vec::new(),
        }
    }

    /// Short name of the plan kind, for statistics and SHOW ROUTE.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardPlan::One(_) => "single-shard",
            ShardPlan::Scatter { .. } | ShardPlan::CopyOut { .. } => "scatter",
            ShardPlan::Write { .. } => "broadcast",
            ShardPlan::InsertSplit { .. } | ShardPlan::CopySplit { .. } => "insert-split",
            ShardPlan::Refuse(_) | ShardPlan::Fenced { .. } => "refused",
            ShardPlan::Statements => "statements",
            ShardPlan::GenerateIds { .. } | ShardPlan::NeedColumns { .. } | ShardPlan::InsertSelect { .. } => {
                "insert-split"
            }
        }
    }
}

fn key_value(group: &Group, op: &Operand, params: &Params) -> Option<KeyValue> {
    match op {
        Operand::Lit(s) => KeyValue::parse(group.key_type, s),
        Operand::Null => None,
        Operand::Param(i) if *i >= LITERAL_PARAM_BASE => {
            KeyValue::parse(group.key_type, params.literals.get(i - LITERAL_PARAM_BASE)?)
        }
        Operand::Param(i) => {
            let raw = (*params.values.get(*i)?)?;
            let format = params.formats.get(*i).copied().unwrap_or(0);
            if format == 0 {
                return KeyValue::parse(group.key_type, std::str::from_utf8(raw).ok()?);
            }
            let declared = params
                .types
                .get(2 + 4 * i..6 + 4 * i)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            match group.key_type {
                // int8, int2, int4 (or the server's choice, the key column's own type).
                KeyType::Int if ![0, 20, 21, 23].contains(&declared) => None,
                KeyType::Int => Some(KeyValue::Int(match raw.len() {
                    2 => i16::from_be_bytes(raw.try_into().ok()?) as i64,
                    4 => i32::from_be_bytes(raw.try_into().ok()?) as i64,
                    8 => i64::from_be_bytes(raw.try_into().ok()?),
                    _ => return None,
                })),
                KeyType::Text => Some(KeyValue::Text(std::str::from_utf8(raw).ok()?.to_owned())),
                KeyType::Uuid => Some(KeyValue::Uuid(raw.try_into().ok()?)),
            }
        }
    }
}

/// The shards rows satisfying `cond` can be on. A value that is not a valid key (or a NULL,
/// which matches no row) narrows to no shard; one the plan cannot read widens to every shard
/// holding part of the group.
fn shards_of(cond: &KeyCond, group: &Group, params: &Params) -> BTreeSet<ShardId> {
    match cond {
        KeyCond::All => group.holders(),
        KeyCond::Values(vs) => {
            let mut out = BTreeSet::new();
            for v in vs {
                match v {
                    Operand::Null => {}
                    _ => match key_value(group, v, params).map(|k| group.locate(&k)) {
                        Some(Ok(p)) => {
                            out.insert(p.shard);
                        }
                        // A list value no shard holds: no row can have it.
                        Some(Err(_)) => {}
                        None => return group.holders(),
                    },
                }
            }
            out
        }
        KeyCond::And(cs) => {
            let mut acc: Option<BTreeSet<ShardId>> = None;
            for c in cs {
                let s = shards_of(c, group, params);
                acc = Some(match acc {
                    None => s,
                    Some(a) => a.intersection(&s).copied().collect(),
                });
            }
            acc.unwrap_or_else(|| group.holders())
        }
        KeyCond::Or(cs) => cs.iter().flat_map(|c| shards_of(c, group, params)).collect(),
    }
}

/// The one shard a condition allows, found without building shard sets: every value of a list on
/// one shard, or, for AND, any part that allows one shard (the rest can only narrow it to none, and
/// that shard answers "no rows" correctly). `None` when it takes the general path.
fn one_shard(cond: &KeyCond, group: &Group, params: &Params) -> Option<ShardId> {
    match cond {
        KeyCond::Values(vs) => {
            let mut shard = None;
            for v in vs {
                let s = group.locate(&key_value(group, v, params)?).ok()?.shard;
                if shard.is_some_and(|x| x != s) {
                    return None;
                }
                shard = Some(s);
            }
            shard
        }
        KeyCond::And(cs) => cs.iter().find_map(|c| one_shard(c, group, params)),
        _ => None,
    }
}

/// Plans a statement of shape `shape`.
pub fn plan(shape: &Shape, map: &ShardMap, params: &Params) -> ShardPlan {
    if let Some(fenced) = fence::check(shape, map, params) {
        return fenced;
    }
    match shape {
        Shape::Unparsed | Shape::Neutral | Shape::Unsharded | Shape::ReferenceRead => ShardPlan::One(map.default_shard),
        Shape::Several(shapes) => {
            // One shard for all: the string goes there whole. Otherwise each statement runs on
            // its own shards, unless one is refused (then none runs).
            let mut shard = None;
            let mut several = false;
            for s in shapes.iter().filter(|s| **s != Shape::Neutral) {
                match plan(s, map, params) {
                    ShardPlan::One(x) if shard.is_none_or(|y| y == x) => shard = Some(x),
                    ShardPlan::Refuse(m) => return ShardPlan::Refuse(m),
                    f @ ShardPlan::Fenced { .. } => return f,
                    _ => several = true,
                }
            }
            if several {
                return ShardPlan::Statements;
            }
            ShardPlan::One(shard.unwrap_or(map.default_shard))
        }
        Shape::ReferenceWrite | Shape::Broadcast if map.shards.len() == 1 => ShardPlan::One(0),
        Shape::ReferenceWrite | Shape::Broadcast => ShardPlan::Write {
            shards: map.all_shards(),
            replicated: true,
        },
        Shape::Refuse(m) => ShardPlan::Refuse(m.clone()),
        Shape::CopyIn { .. } => ShardPlan::CopySplit {
            shards: map.all_shards(),
        },
        Shape::InsertNoColumns { table } => ShardPlan::NeedColumns { table: table.clone() },
        Shape::InsertSelect { select } => ShardPlan::InsertSelect { select: select.clone() },
        Shape::CopyQuery {
            group,
            cond,
            header,
            binary,
            plain,
        } => {
            let g = &map.groups[*group];
            if let Some(s) = one_shard(cond, g, params) {
                return ShardPlan::One(s);
            }
            let shards: Vec<ShardId> = shards_of(cond, g, params).into_iter().collect();
            match shards[..] {
                [] => ShardPlan::One(map.default_shard),
                [one] => ShardPlan::One(one),
                _ if !plain => ShardPlan::Refuse(
                    "COPY (SELECT ...) TO STDOUT over several shards copies plain rows only (no ORDER BY, LIMIT, DISTINCT \
                     or aggregates): filter by the shard key to stay on one shard, or run the SELECT itself"
                        .into(),
                ),
                _ => ShardPlan::CopyOut {
                    shards,
                    header: *header,
                    binary: *binary,
                },
            }
        }
        Shape::CopyOut { group, header, binary } => ShardPlan::CopyOut {
            shards: map.groups[*group].holders().into_iter().collect(),
            header: *header,
            binary: *binary,
        },
        Shape::InsertFill { id_column, rows, .. } => ShardPlan::GenerateIds {
            column: id_column.clone(),
            rows: *rows,
        },
        Shape::Group {
            group,
            cond,
            write,
            merge,
        } => {
            let g = &map.groups[*group];
            if let Some(s) = one_shard(cond, g, params) {
                return ShardPlan::One(s);
            }
            let mut shards: Vec<ShardId> = shards_of(cond, g, params).into_iter().collect();
            if shards.is_empty() {
                // No shard can hold a matching row; any one answers correctly (with no rows).
                shards.push(map.default_shard);
            }
            if let [one] = shards[..] {
                return ShardPlan::One(one);
            }
            if *write {
                if map.refuse_scatter_writes && *cond == KeyCond::All {
                    return ShardPlan::Refuse(
                        "UPDATE or DELETE without the shard key would run on every shard, and the shard map sets scatter_writes = \"refuse\""
                            .into(),
                    );
                }
                return ShardPlan::Write {
                    shards,
                    replicated: false,
                };
            }
            match merge {
                Ok(m) => ShardPlan::Scatter {
                    shards,
                    merge: m.clone(),
                },
                Err(why) => ShardPlan::Refuse(format!("{why}; this query would need rows from several shards")),
            }
        }
        Shape::Insert { group, keys, stmt } => {
            let g = &map.groups[*group];
            let mut rows_by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
            for (row, k) in keys.iter().enumerate() {
                let Some(kv) = key_value(g, k, params) else {
                    return ShardPlan::Refuse(format!(
                        "row {} of the INSERT has no valid {} shard key",
                        row + 1,
                        g.key_type
                    ));
                };
                match g.locate(&kv) {
                    Ok(p) => rows_by_shard.entry(p.shard).or_default().push(row),
                    Err(e) => return ShardPlan::Refuse(e),
                }
            }
            if rows_by_shard.len() == 1 {
                return ShardPlan::One(*rows_by_shard.keys().next().unwrap_or(&map.default_shard));
            }
            ShardPlan::InsertSplit {
                parts: rows_by_shard
                    .into_iter()
                    .map(|(shard, rows)| insert_part(stmt, shard, &rows))
                    .collect(),
            }
        }
    }
}

fn insert_part(stmt: &Statement, shard: ShardId, rows: &[usize]) -> InsertPart {
    let mut s = stmt.clone();
    if let Statement::Insert(ins) = &mut s
        && let Some(src) = &mut ins.source
        && let SetExpr::Values(v) = src.body.as_mut()
    {
        let all = std::mem::take(&mut v.rows);
        v.rows = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| rows.contains(i))
            .map(|(_, r)| r)
            .collect();
    }
    // Renumber the parameters left, in order of first use.
    let params = crate::analyze::shard::renumber_params(&mut s);
    InsertPart {
        shard,
        sql: s.to_string(),
        params,
    }
}

mod fence;
pub use fence::moved;
#[cfg(test)]
mod tests;

/// The plan in words, for admin `SHOW ROUTE FOR` and the golden files in `tests/plans/`.
pub fn explain(plan: &ShardPlan, map: &ShardMap) -> String {
    let names = |s: &[ShardId]| s.iter().map(|&i| map.shards[i].as_str()).collect::<Vec<_>>().join(",");
    match plan {
        ShardPlan::One(s) => format!("single-shard {}", map.shards[*s]),
        ShardPlan::Scatter { shards, merge } => {
            let cols: Vec<String> = merge
                .cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let hidden = if i >= merge.visible { "hidden " } else { "" };
                    format!("{hidden}{c:?}").to_lowercase()
                })
                .collect();
            let order: Vec<String> = merge
                .order
                .iter()
                .map(|k| {
                    format!(
                        "col{} {} nulls {}",
                        k.col + 1,
                        if k.desc { "desc" } else { "asc" },
                        if k.nulls_first { "first" } else { "last" }
                    )
                })
                .collect();
            let op = |o: &Option<Operand>| match o {
                None => "-".to_string(),
                Some(Operand::Lit(l)) => l.clone(),
                Some(Operand::Param(p)) => format!("${}", p + 1),
                Some(Operand::Null) => "null".into(),
            };
            format!(
                "scatter {} merge cols=[{}] grouped={}{}{} order=[{}] limit={} offset={}\n  each shard runs: {}",
                names(shards),
                cols.join(", "),
                merge.grouped,
                if merge.having.is_some() { " having" } else { "" },
                match merge.distinct_on {
                    0 => String::new(),
                    n => format!(" distinct_on={n}"),
                },
                order.join(", "),
                op(&merge.limit),
                op(&merge.offset),
                merge.sql
            )
        }
        ShardPlan::Write { shards, replicated } => format!(
            "broadcast {}{} (two-phase commit)",
            names(shards),
            if *replicated { ", one copy's answer" } else { "" }
        ),
        ShardPlan::InsertSplit { parts } => {
            let mut s = format!(
                "insert-split {}",
                names(&parts.iter().map(|p| p.shard).collect::<Vec<_>>())
            );
            for p in parts {
                s.push_str(&format!("\n  {}: {}", map.shards[p.shard], p.sql));
                if !p.params.is_empty() {
                    let ps: Vec<String> = p.params.iter().map(|i| format!("${}", i + 1)).collect();
                    s.push_str(&format!(" -- params {}", ps.join(",")));
                }
            }
            s
        }
        ShardPlan::CopySplit { shards } => {
            format!("copy-split {} (rows routed by key, two-phase commit)", names(shards))
        }
        ShardPlan::GenerateIds { column, rows } => {
            format!("generate {rows} id(s) for column {column}, then route each row by its shard key")
        }
        ShardPlan::NeedColumns { table } => {
            format!(
                "read the columns of {table} from the catalog, name them in the INSERT, then route each row by its key"
            )
        }
        ShardPlan::CopyOut { shards, binary, .. } => format!(
            "copy-out {} (each shard's rows in turn{})",
            names(shards),
            if *binary { ", binary" } else { "" }
        ),
        ShardPlan::InsertSelect { select } => {
            format!("read the rows of `{select}` where it runs, then insert them as VALUES, each row routed by its key")
        }
        ShardPlan::Fenced { group, partition } => {
            format!("waits: partition {partition} of group {group} is fenced (a move's cutover)")
        }
        ShardPlan::Statements => "statements: each statement of the string on its own shards, one after another, \
                                   in the string's transaction"
            .to_string(),
        ShardPlan::Refuse(m) => format!("refused (0A000): {m}"),
    }
}
