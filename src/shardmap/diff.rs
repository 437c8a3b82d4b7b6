//! What a map change does to rows already stored: the changes that send existing keys to another
//! shard (a partition reassigned, the partition count, a range or a list value changed, a table
//! moved between groups, made sharded, reference or unsharded, the default shard changed). Served
//! before the data is where the new map says, such a change makes rows invisible and sends new
//! writes where the old rows are not; reloads refuse it unless the DBA states that the data is in
//! place. Shards are compared by name: a change that only renumbers them moves nothing.

use std::collections::BTreeMap;

use super::{Group, Partitioning, ShardMap, TableRule};

/// At most this many partitions are listed per group; the rest are counted.
const LISTED: usize = 10;

/// The changes from `old` to `new` that send existing keys to another shard, one line each,
/// in a stable order. Empty when every stored row stays where the new map looks for it.
pub fn moves(old: &ShardMap, new: &ShardMap) -> Vec<String> {
    let mut out = Vec::new();
    let (old_default, new_default) = (&old.shards[old.default_shard], &new.shards[new.default_shard]);
    if old_default != new_default {
        out.push(format!(
            "the default shard changes from {old_default} to {new_default}: tables the map does not name move"
        ));
    }
    let old_tables: BTreeMap<&String, &TableRule> = old.tables.iter().collect();
    for (name, rule) in old_tables {
        let was = describe(old, rule);
        match new.tables.get(name) {
            None if *rule == TableRule::Reference => {}
            None => out.push(format!(
                "table {name} is {was} and would be unsharded (on {new_default} only)"
            )),
            Some(now) => {
                let is = describe(new, now);
                if was != is {
                    out.push(format!("table {name} is {was} and would be {is}"));
                }
            }
        }
    }
    let new_tables: BTreeMap<&String, &TableRule> = new.tables.iter().collect();
    for (name, rule) in new_tables {
        if !old.tables.contains_key(name) {
            out.push(format!(
                "table {name} was unsharded (any rows it has are on {old_default}) and would be {}",
                describe(new, rule)
            ));
        }
    }
    let mut groups: Vec<&Group> = old.groups.iter().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    for g in groups {
        if let Some(n) = new.groups.iter().find(|n| n.name == g.name) {
            group_moves(old, g, new, n, &mut out);
        }
    }
    out
}

/// A table's rule in words, with group and shard names (not indexes).
fn describe(map: &ShardMap, rule: &TableRule) -> String {
    match rule {
        TableRule::Reference => "a reference table".into(),
        TableRule::Sharded { group, key } => format!("sharded in group {} by {key}", map.groups[*group].name),
    }
}

fn group_moves(old_map: &ShardMap, old: &Group, new_map: &ShardMap, new: &Group, out: &mut Vec<String>) {
    let name = &old.name;
    let old_shard = |s: usize| old_map.shards[s].as_str();
    let new_shard = |s: usize| new_map.shards[s].as_str();
    if old.key_type != new.key_type {
        out.push(format!(
            "group {name}: key type changes from {} to {}",
            old.key_type, new.key_type
        ));
        return;
    }
    match (&old.partitioning, &new.partitioning) {
        (Partitioning::Hash { owner: a }, Partitioning::Hash { owner: b }) if a.len() != b.len() => {
            out.push(format!(
                "group {name}: the partition count changes from {} to {} (every key's partition changes)",
                a.len(),
                b.len()
            ));
        }
        (Partitioning::Hash { owner: a }, Partitioning::Hash { owner: b }) => {
            let moved: Vec<String> = a
                .iter()
                .zip(b)
                .enumerate()
                .filter(|(_, (x, y))| old_shard(**x) != new_shard(**y))
                .map(|(p, (x, y))| format!("{p} ({} → {})", old_shard(*x), new_shard(*y)))
                .collect();
            if !moved.is_empty() {
                let more = moved.len().saturating_sub(LISTED);
                let mut listed = moved[..moved.len().min(LISTED)].join(", ");
                if more > 0 {
                    listed.push_str(&format!(" and {more} more"));
                }
                out.push(format!("group {name}: partitions {listed} change shard"));
            }
        }
        (Partitioning::Range { starts: a }, Partitioning::Range { starts: b }) => {
            let a: Vec<(Option<i64>, String)> = a.iter().map(|(f, x)| (*f, old_shard(*x).to_owned())).collect();
            let b: Vec<(Option<i64>, String)> = b.iter().map(|(f, x)| (*f, new_shard(*x).to_owned())).collect();
            if a != b {
                out.push(format!(
                    "group {name}: ranges change from {} to {}",
                    ranges(&a),
                    ranges(&b)
                ));
            }
        }
        (Partitioning::List { values: a }, Partitioning::List { values: b }) => {
            let mut moved: Vec<String> = a
                .iter()
                .filter_map(|(v, x)| {
                    let to = b.get(v).map(|y| new_shard(*y));
                    (to != Some(old_shard(*x)))
                        .then(|| format!("{v} ({} → {})", old_shard(*x), to.unwrap_or("no shard")))
                })
                .collect();
            moved.sort();
            if !moved.is_empty() {
                out.push(format!("group {name}: values {} change shard", moved.join(", ")));
            }
        }
        _ => out.push(format!("group {name}: the partitioning kind changes")),
    }
}

fn ranges(r: &[(Option<i64>, String)]) -> String {
    let parts: Vec<String> = r
        .iter()
        .map(|(from, s)| match from {
            Some(f) => format!("{f}..: {s}"),
            None => format!("..: {s}"),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::moves;
    use crate::shardmap::parse;

    const BASE: &str = r#"
version = 1
shards = ["s0", "s1", "s2"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 8 }
assignment = { s0 = "0-2", s1 = "3-5", s2 = "6-7" }
[groups.events]
key_type = "bigint"
partitioning = { kind = "range" }
ranges = [{ to = 1000, shard = "s0" }, { from = 1000, shard = "s1" }]
[groups.regions]
key_type = "text"
partitioning = { kind = "list" }
lists = { s0 = ["eu"], s1 = ["us"] }
[tables.users]
group = "users"
key = "id"
[tables.events]
group = "events"
key = "id"
[tables.stores]
group = "regions"
key = "region"
[tables.countries]
reference = true
"#;

    fn changed(from: &str, to: &str) -> Vec<String> {
        let new = BASE.replace(from, to);
        assert_ne!(new, BASE, "the edit {from:?} applies");
        moves(&parse(BASE).unwrap(), &parse(&new).unwrap())
    }

    #[test]
    fn changes_that_keep_every_key_in_place_move_nothing() {
        let base = parse(BASE).unwrap();
        assert!(moves(&base, &base).is_empty());
        // A new shard with nothing on it, a new version, shards renumbered.
        let grown = BASE
            .replace("version = 1", "version = 2")
            .replace(r#"shards = ["s0", "s1", "s2"]"#, r#"shards = ["s3", "s2", "s1", "s0"]"#);
        assert_eq!(moves(&base, &parse(&grown).unwrap()), Vec::<String>::new());
        // A table new to the map may already hold rows, all on the default shard.
        let m = moves(
            &base,
            &parse(&(BASE.to_owned() + "[tables.orders]\ngroup = \"users\"\nkey = \"user_id\"\n")).unwrap(),
        );
        assert_eq!(
            m,
            ["table orders was unsharded (any rows it has are on s0) and would be sharded in group users by user_id"]
        );
    }

    #[test]
    fn reassigned_partitions_are_named() {
        let m = changed(r#"s1 = "3-5", s2 = "6-7""#, r#"s1 = "3-4", s2 = "5-7""#);
        assert_eq!(m, ["group users: partitions 5 (s1 → s2) change shard"]);
        let m = changed(
            r#"partitions = 8 }
assignment = { s0 = "0-2", s1 = "3-5", s2 = "6-7" }"#,
            r#"partitions = 16 }
assignment = { s0 = "0-5", s1 = "6-10", s2 = "11-15" }"#,
        );
        assert!(m[0].contains("partition count changes from 8 to 16"), "{m:?}");
    }

    #[test]
    fn ranges_lists_tables_and_the_default_shard() {
        let m = changed("{ from = 1000, shard = \"s1\" }", "{ from = 1000, shard = \"s2\" }");
        assert_eq!(m.len(), 1);
        assert!(m[0].starts_with("group events: ranges change"), "{m:?}");
        let m = changed(r#"s1 = ["us"]"#, r#"s2 = ["us"]"#);
        assert_eq!(m, ["group regions: values 'us' (s1 → s2) change shard"]);
        let m = changed("[tables.countries]\nreference = true\n", "");
        assert!(
            m.is_empty(),
            "a reference table left out keeps its copy on the default shard: {m:?}"
        );
        let m = changed(
            "[tables.events]\ngroup = \"events\"",
            "[tables.events]\ngroup = \"users\"",
        );
        assert_eq!(
            m,
            ["table events is sharded in group events by id and would be sharded in group users by id"]
        );
        let m = changed(r#"default_shard = "s0""#, r#"default_shard = "s1""#);
        assert!(m[0].starts_with("the default shard changes from s0 to s1"), "{m:?}");
    }
}
