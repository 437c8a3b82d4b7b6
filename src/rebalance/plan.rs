//! `shardwire rebalance plan`: the partition moves that even out hash partitions per shard, for
//! a goal: even (every shard of the map), drain one shard (its partitions go to the others), or
//! a new shard (listed in the map with no partitions yet). Pure: the map in, moves out, printed
//! one per line as `move <group> <partition> <from> <to>`, which `apply` reads back.

use crate::shardmap::{Partitioning, ShardMap};

/// One partition to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    /// The group.
    pub group: String,
    /// The hash partition.
    pub partition: u32,
    /// The shard holding it now.
    pub from: String,
    /// The shard to hold it.
    pub to: String,
}

impl std::fmt::Display for PlannedMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "move {} {} {} {}", self.group, self.partition, self.from, self.to)
    }
}

impl std::str::FromStr for PlannedMove {
    type Err = String;
    fn from_str(line: &str) -> Result<PlannedMove, String> {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["move", group, partition, from, to] => Ok(PlannedMove {
                group: group.to_string(),
                partition: partition
                    .parse()
                    .map_err(|_| format!("`{partition}` is not a partition number"))?,
                from: from.to_string(),
                to: to.to_string(),
            }),
            _ => Err(format!("`{line}` is not `move <group> <partition> <from> <to>`")),
        }
    }
}

/// What the plan aims at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// Every shard of the map holds about as many partitions of each group.
    Even,
    /// This shard holds none; the others share its partitions.
    Drain(String),
}

/// The moves that reach `goal`, group by group (hash groups only), fewest partitions moved.
pub fn plan(map: &ShardMap, goal: &Goal) -> Result<Vec<PlannedMove>, String> {
    let drained = match goal {
        Goal::Even => None,
        Goal::Drain(s) => Some(
            map.shards
                .iter()
                .position(|x| x == s)
                .ok_or_else(|| format!("no shard `{s}` in the map ({})", map.shards.join(", ")))?,
        ),
    };
    let targets: Vec<usize> = (0..map.shards.len()).filter(|&s| Some(s) != drained).collect();
    if targets.is_empty() {
        return Err("no shard would be left to hold the partitions".into());
    }
    let mut moves = Vec::new();
    for g in &map.groups {
        let Partitioning::Hash { owner } = &g.partitioning else {
            continue;
        };
        let mut owner = owner.clone();
        let p = owner.len();
        // The share of each target: p / n, the first p % n targets one more.
        let quota = |i: usize| p / targets.len() + usize::from(i < p % targets.len());
        let held = |owner: &[usize], s: usize| owner.iter().filter(|&&o| o == s).count();
        // Targets that hold the most keep the larger quotas, so fewer partitions move.
        let mut order = targets.clone();
        order.sort_by_key(|&s| std::cmp::Reverse(held(&owner, s)));
        let want: Vec<(usize, usize)> = order.iter().enumerate().map(|(i, &s)| (s, quota(i))).collect();
        let quota_of = |s: usize| want.iter().find(|(x, _)| *x == s).map_or(0, |(_, q)| *q);
        // Partitions to give away: all of a drained shard's, and any over a target's quota
        // (highest numbers first).
        let mut spare = Vec::new();
        for s in 0..map.shards.len() {
            let mine: Vec<usize> = (0..p).filter(|&x| owner[x] == s).collect();
            let keep = quota_of(s);
            if mine.len() > keep {
                spare.extend(mine[keep..].iter().copied());
            }
        }
        for (s, q) in &want {
            while held(&owner, *s) < *q {
                let Some(x) = spare.pop() else { break };
                moves.push(PlannedMove {
                    group: g.name.clone(),
                    partition: x as u32,
                    from: map.shards[owner[x]].clone(),
                    to: map.shards[*s].clone(),
                });
                owner[x] = *s;
            }
        }
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(assignment: &str, shards: &str) -> ShardMap {
        crate::shardmap::parse(&format!(
            r#"
version = 1
shards = [{shards}]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = {{ kind = "hash", partitions = 8 }}
assignment = {{ {assignment} }}
"#
        ))
        .unwrap()
    }

    fn per_shard(m: &ShardMap, moves: &[PlannedMove]) -> Vec<usize> {
        let Partitioning::Hash { owner } = &m.groups[0].partitioning else {
            unreachable!()
        };
        let mut owner = owner.clone();
        for mv in moves {
            assert_eq!(m.shards[owner[mv.partition as usize]], mv.from, "{mv}");
            owner[mv.partition as usize] = m.shards.iter().position(|s| *s == mv.to).unwrap();
        }
        (0..m.shards.len())
            .map(|s| owner.iter().filter(|&&o| o == s).count())
            .collect()
    }

    #[test]
    fn a_new_shard_gets_its_share_and_no_more_moves_than_needed() {
        let m = map(r#"s0 = "0-3", s1 = "4-7""#, r#""s0", "s1", "s2""#);
        let moves = plan(&m, &Goal::Even).unwrap();
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert_eq!(per_shard(&m, &moves), vec![3, 3, 2]);
        // Already even: nothing to do.
        let m = map(r#"s0 = "0-3", s1 = "4-7""#, r#""s0", "s1""#);
        assert!(plan(&m, &Goal::Even).unwrap().is_empty());
    }

    #[test]
    fn a_drained_shard_ends_empty() {
        let m = map(r#"s0 = "0-2", s1 = "3-5", s2 = "6-7""#, r#""s0", "s1", "s2""#);
        let moves = plan(&m, &Goal::Drain("s1".into())).unwrap();
        assert_eq!(per_shard(&m, &moves), vec![4, 0, 4]);
        assert!(plan(&m, &Goal::Drain("s9".into())).is_err());
        let line = moves[0].to_string();
        assert_eq!(line.parse::<PlannedMove>().unwrap(), moves[0]);
        assert!("move users x s0 s1".parse::<PlannedMove>().is_err());
    }
}
