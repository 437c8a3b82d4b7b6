//! Fenced partitions: a statement that touches a partition in a move's cutover waits instead of
//! running on a shard that is about to stop (or has not yet started) holding it. Which
//! partitions a statement touches comes from its key values; one whose keys are unknown (a scan,
//! an INSERT whose IDs are not generated yet, a COPY) touches them all.

use super::{Params, ShardPlan, key_value};
use crate::analyze::shard::{KeyCond, Operand, Shape};
use crate::shardmap::{Group, Partitioning, ShardMap};

/// `Some(ShardPlan::Fenced)` when `shape` touches a fenced partition under `map`.
pub(super) fn check(shape: &Shape, map: &ShardMap, params: &Params) -> Option<ShardPlan> {
    let (group, keys): (usize, Option<Vec<&Operand>>) = match shape {
        Shape::Group { group, cond, .. } | Shape::CopyQuery { group, cond, .. } => (*group, values_of(cond)),
        Shape::Insert { group, keys, .. } => (*group, Some(keys.iter().collect())),
        Shape::InsertFill { group, .. } | Shape::CopyIn { group, .. } => (*group, None),
        _ => return None,
    };
    let g = map.groups.get(group)?;
    let first = g.first_fenced()?;
    let touched = match keys {
        Some(ops) => ops
            .into_iter()
            .map(|o| partition_of(g, o, params))
            .find(|p| p.is_none_or(|p| g.fenced(p)))
            .map(|p| p.unwrap_or(first)),
        None => Some(first),
    }?;
    Some(ShardPlan::Fenced {
        group: g.name.clone(),
        partition: touched,
    })
}

/// The first partition `shape` touches that `new` fences or gives to another shard than `old`
/// (the map a session's open transaction planned by): (group name, partition). A statement
/// whose keys are unknown touches every partition of its group.
pub fn moved(shape: &Shape, old: &ShardMap, new: &ShardMap, params: &Params) -> Option<(String, u32)> {
    let (group, keys): (usize, Option<Vec<&Operand>>) = match shape {
        Shape::Group { group, cond, .. } | Shape::CopyQuery { group, cond, .. } => (*group, values_of(cond)),
        Shape::Insert { group, keys, .. } => (*group, Some(keys.iter().collect())),
        Shape::InsertFill { group, .. } | Shape::CopyIn { group, .. } => (*group, None),
        _ => return None,
    };
    let g_old = old.groups.get(group)?;
    let g_new = new.groups.iter().find(|g| g.name == g_old.name)?;
    let (Partitioning::Hash { owner: was }, Partitioning::Hash { owner: is }) =
        (&g_old.partitioning, &g_new.partitioning)
    else {
        return None;
    };
    let changed = |p: u32| {
        g_new.fenced(p) || was.get(p as usize).map(|s| &old.shards[*s]) != is.get(p as usize).map(|s| &new.shards[*s])
    };
    let any = || (0..is.len() as u32).find(|p| changed(*p));
    let touched = match keys {
        Some(ops) => ops.into_iter().find_map(|o| match partition_of(g_new, o, params) {
            Some(u32::MAX) => None,
            Some(p) => changed(p).then_some(p),
            None => any(),
        }),
        None => any(),
    }?;
    Some((g_new.name.clone(), touched))
}

/// The key values a condition narrows to, when it is a plain list (or an AND holding one).
fn values_of(cond: &KeyCond) -> Option<Vec<&Operand>> {
    match cond {
        KeyCond::Values(vs) => Some(vs.iter().collect()),
        KeyCond::And(cs) => cs.iter().find_map(values_of),
        _ => None,
    }
}

/// The partition of one key; `None` when it cannot be read (then it may be any).
fn partition_of(g: &Group, o: &Operand, params: &Params) -> Option<u32> {
    if *o == Operand::Null {
        // Matches no row: touches nothing, which no fenced partition is.
        return Some(u32::MAX);
    }
    g.locate(&key_value(g, o, params)?).ok()?.partition
}
