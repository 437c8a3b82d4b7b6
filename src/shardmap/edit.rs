//! Edits of a map file's text for the admin commands (`SET PARTITION ... TO`, `... STATE`): the
//! document is edited in place with `toml_edit` (comments and layout stay as the DBA wrote
//! them), its `version` raised by one, and the result validated in full before anyone uses it.
//! A change names the version it was based on; one based on another version is refused, so two
//! DBAs editing at once cannot overwrite each other.

use toml_edit::{DocumentMut, InlineTable, Item, Value};

use super::{MapError, PartitionState, Partitioning, ShardMap, err};

/// A change to the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEdit {
    /// Hash partition `partition` of `group` is held by `shard` from now on.
    Assign {
        /// Group name.
        group: String,
        /// Partition number.
        partition: u32,
        /// Shard name.
        shard: String,
        /// Its state from now on, in the same change (a move's switch lifts its fence with it).
        state: Option<PartitionState>,
    },
    /// Hash partition `partition` of `group` is in `state`.
    State {
        /// Group name.
        group: String,
        /// Partition number.
        partition: u32,
        /// Its new state.
        state: PartitionState,
    },
}

impl std::fmt::Display for MapEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapEdit::Assign {
                group,
                partition,
                shard,
                state,
            } => {
                write!(f, "partition {partition} of group {group} to shard {shard}")?;
                match state {
                    Some(s) => write!(f, ", {s}"),
                    None => Ok(()),
                }
            }
            MapEdit::State {
                group,
                partition,
                state,
            } => write!(f, "partition {partition} of group {group} {state}"),
        }
    }
}

/// Applies `edit` to the map text `text` (whose validated form is `map`), if `based_on` (when
/// given) is its version. Returns the new text and its map.
pub fn apply(
    text: &str,
    map: &ShardMap,
    edit: &MapEdit,
    based_on: Option<u64>,
) -> Result<(String, ShardMap), MapError> {
    if let Some(v) = based_on
        && v != map.version
    {
        return Err(err(
            "version",
            format!(
                "the change is based on version {v}, but the map is at version {}: someone else changed it; look at SHOW MAP and try again",
                map.version
            ),
        ));
    }
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| err("map", e.to_string()))?;
    let (group, partition) = match edit {
        MapEdit::Assign { group, partition, .. } | MapEdit::State { group, partition, .. } => (group, *partition),
    };
    let g = map
        .groups
        .iter()
        .find(|g| &g.name == group)
        .ok_or_else(|| err("groups", format!("no group `{group}`")))?;
    let Partitioning::Hash { owner } = &g.partitioning else {
        return Err(err(
            format!("groups.{group}"),
            "partitions are moved one by one in hash-partitioned groups only; edit the ranges or lists in the file",
        ));
    };
    if partition as usize >= owner.len() {
        return Err(err(
            format!("groups.{group}"),
            format!("partition {partition} is outside 0-{}", owner.len() - 1),
        ));
    }
    let table = doc["groups"][group.as_str()]
        .as_table_like_mut()
        .ok_or_else(|| err(format!("groups.{group}"), "not a table in the file"))?;
    match edit {
        MapEdit::Assign { shard, state, .. } => {
            let id = map
                .shards
                .iter()
                .position(|s| s == shard)
                .ok_or_else(|| err("shards", format!("no shard `{shard}` ({})", map.shards.join(", "))))?;
            let mut owner = owner.clone();
            owner[partition as usize] = id;
            let mut assignment = InlineTable::new();
            for (i, name) in map.shards.iter().enumerate() {
                let spec = ranges(
                    owner
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| **o == i)
                        .map(|(p, _)| p as u32),
                );
                if !spec.is_empty() {
                    assignment.insert(name, Value::from(spec));
                }
            }
            table.insert("assignment", Item::Value(Value::InlineTable(assignment)));
            if let Some(state) = state {
                set_state(table, partition, *state);
            }
        }
        MapEdit::State { state, .. } => set_state(table, partition, *state),
    }
    doc["version"] = toml_edit::value((map.version + 1) as i64);
    let text = doc.to_string();
    let new = super::parse(&text)?;
    Ok((text, new))
}

fn set_state(table: &mut dyn toml_edit::TableLike, partition: u32, state: PartitionState) {
    let mut states = table
        .get("states")
        .and_then(|i| i.as_inline_table().cloned())
        .unwrap_or_default();
    states.remove(&partition.to_string());
    if state != PartitionState::Serving {
        states.insert(partition.to_string(), Value::from(state.to_string()));
    }
    if states.is_empty() {
        table.remove("states");
    } else {
        table.insert("states", Item::Value(Value::InlineTable(states)));
    }
}

/// Partition numbers as compact ranges: `0-20,25,30-31`.
fn ranges(parts: impl Iterator<Item = u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for p in parts {
        run = match run {
            Some((a, b)) if p == b + 1 => Some((a, p)),
            Some((a, b)) => {
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((p, p))
            }
            None => Some((p, p)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"# the DBA's comment stays
version = 4
shards = ["s0", "s1"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 8 }
assignment = { s0 = "0-3", s1 = "4-7" }
[tables.users]
group = "users"
key = "id"
"#;

    #[test]
    fn a_partition_moves_and_the_version_goes_up() {
        let map = super::super::parse(MAP).unwrap();
        let edit = MapEdit::Assign {
            group: "users".into(),
            partition: 2,
            shard: "s1".into(),
            state: None,
        };
        let (text, new) = apply(MAP, &map, &edit, Some(4)).unwrap();
        assert!(text.starts_with("# the DBA's comment stays"), "{text}");
        assert!(
            text.contains(r#"assignment = { s0 = "0-1,3", s1 = "2,4-7" }"#),
            "{text}"
        );
        assert_eq!(new.version, 5);
        assert_eq!(
            new.locate("users", "1").unwrap().0.shard,
            map.locate("users", "1").unwrap().0.shard
        );
        // Based on an old version: refused.
        let e = apply(&text, &new, &edit, Some(4)).unwrap_err();
        assert!(e.message.contains("based on version 4"), "{e}");
        for bad in [
            MapEdit::Assign {
                group: "users".into(),
                partition: 8,
                shard: "s1".into(),
                state: None,
            },
            MapEdit::Assign {
                group: "users".into(),
                partition: 1,
                shard: "s9".into(),
                state: None,
            },
            MapEdit::Assign {
                group: "orders".into(),
                partition: 1,
                shard: "s1".into(),
                state: None,
            },
        ] {
            assert!(apply(MAP, &map, &bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_are_set_and_cleared() {
        let map = super::super::parse(MAP).unwrap();
        let fence = |state| MapEdit::State {
            group: "users".into(),
            partition: 5,
            state,
        };
        let (text, fenced) = apply(MAP, &map, &fence(PartitionState::Fenced), None).unwrap();
        assert!(fenced.groups[0].fenced(5), "{text}");
        let (text, serving) = apply(&text, &fenced, &fence(PartitionState::Serving), None).unwrap();
        assert!(!text.contains("states"), "{text}");
        assert_eq!(serving.version, 6);
        assert!(!serving.groups[0].fenced(5));
    }

    #[test]
    fn partition_lists_are_compact() {
        assert_eq!(ranges([0, 1, 2, 5, 7, 8].into_iter()), "0-2,5,7-8");
        assert_eq!(ranges(std::iter::empty()), "");
    }
}
