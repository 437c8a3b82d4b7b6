//! Partition states: a hash partition serves (the default), is being moved (its data is being
//! copied to another shard; DDL on the group waits for the move), or is fenced (the move's
//! cutover: statements that touch it wait, for a bounded time, until the map says where it
//! serves). Written in the map as `states = { "17" = "fenced" }` under the group.

use std::collections::BTreeMap;
use std::fmt;

use super::{MapError, err};

/// The state of one hash partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Reads and writes as usual.
    Serving,
    /// A move copies its rows to another shard; it still serves from its shard.
    Moving,
    /// Statements that touch it wait until it serves again (bounded).
    Fenced,
}

impl PartitionState {
    /// Reads a state name.
    pub fn parse(s: &str) -> Option<PartitionState> {
        Some(match s.to_ascii_lowercase().as_str() {
            "serving" => PartitionState::Serving,
            "moving" => PartitionState::Moving,
            "fenced" => PartitionState::Fenced,
            _ => return None,
        })
    }
}

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionState::Serving => "serving",
            PartitionState::Moving => "moving",
            PartitionState::Fenced => "fenced",
        })
    }
}

/// Validates a group's `states` for `partitions` hash partitions (`None`: not hash-partitioned,
/// which has no partitions to give states to). Partitions left out serve.
pub(super) fn validate(
    path: &str,
    raw: &BTreeMap<String, String>,
    partitions: Option<u32>,
) -> Result<BTreeMap<u32, PartitionState>, MapError> {
    let mut out = BTreeMap::new();
    if raw.is_empty() {
        return Ok(out);
    }
    let Some(n) = partitions else {
        return Err(err(format!("{path}.states"), "only hash partitions have states"));
    };
    for (p, s) in raw {
        let spath = format!("{path}.states.{p}");
        let part = p
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&x| x < n)
            .ok_or_else(|| err(&spath, format!("`{p}` is not a partition number 0-{}", n - 1)))?;
        let state = PartitionState::parse(s)
            .ok_or_else(|| err(&spath, format!("`{s}` is not one of serving, moving, fenced")))?;
        if state != PartitionState::Serving {
            out.insert(part, state);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_name_existing_partitions_and_known_states() {
        let raw = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        let ok = validate(
            "groups.g",
            &raw(&[("3", "fenced"), ("4", "MOVING"), ("5", "serving")]),
            Some(8),
        )
        .unwrap();
        assert_eq!(
            ok.into_iter().collect::<Vec<_>>(),
            vec![(3, PartitionState::Fenced), (4, PartitionState::Moving)]
        );
        let e = validate("groups.g", &raw(&[("8", "fenced")]), Some(8)).unwrap_err();
        assert_eq!(e.path, "groups.g.states.8");
        let e = validate("groups.g", &raw(&[("1", "frozen")]), Some(8)).unwrap_err();
        assert!(e.message.contains("serving, moving, fenced"), "{e}");
        assert!(validate("groups.g", &raw(&[("1", "fenced")]), None).is_err());
    }
}
