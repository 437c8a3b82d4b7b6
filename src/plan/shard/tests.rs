//! Golden plans: every `tests/plans/*.plans` file names a shard map and holds queries (`> SQL`,
//! parameters as `-- params: a, b` in text format) each followed by its printed plan. The test
//! fails on any difference; `UPDATE_PLANS=1 cargo test --lib golden` rewrites the files, to be
//! reviewed as a diff.

use super::*;
use crate::analyze::shard::shape;

/// The plan a simple-protocol text gets from its literal-free analysis when that path takes it
/// (a scatter whose merge its literals do not shape), to be compared with the exact text's.
fn literal_free_scatter(sql: &str, map: &ShardMap) -> Option<ShardPlan> {
    let lf = crate::analyze::fingerprint::parameterize(sql)?;
    let params = Params {
        literals: &lf.values,
        ..Params::default()
    };
    match plan(&shape(&lf.text, map), map, &params) {
        ShardPlan::Scatter { shards, merge } => Some(ShardPlan::Scatter {
            shards,
            merge: std::sync::Arc::new(merge.with_literals(sql, &lf)?),
        }),
        _ => None,
    }
}

/// Statements of the golden files planned both ways (exact text, literal-free with the literals
/// put back) that must print the same plan; how many took the literal-free path.
fn same_without_parsing(path: &std::path::Path) -> (Vec<String>, usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut map, mut diffs, mut taken) = (None, Vec::new(), 0);
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(m) = line.strip_prefix("-- map: ") {
            map = Some(crate::shardmap::load(&root.join(m.trim())).unwrap());
        } else if let Some(sql) = line.strip_prefix("> ")
            && !lines.peek().is_some_and(|l| l.starts_with("-- params: "))
        {
            let map = map.as_ref().expect("a `-- map:` line comes first");
            if let Some(fast) = literal_free_scatter(sql, map) {
                taken += 1;
                let exact = explain(&plan(&shape(sql, map), map, &Params::default()), map);
                if explain(&fast, map) != exact {
                    diffs.push(format!("{sql}\n  exact: {exact}\n  fast:  {}", explain(&fast, map)));
                }
            }
        }
    }
    (diffs, taken)
}

#[test]
fn scatters_planned_without_parsing_the_text_are_the_exact_texts_plans() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans");
    let (mut diffs, mut taken) = (Vec::new(), 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "plans") {
            let (d, t) = same_without_parsing(&path);
            diffs.extend(d);
            taken += t;
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    eprintln!("{taken} golden statements took the literal-free path");
    assert!(taken >= 10, "only {taken} golden statements took the literal-free path");
}

fn run_file(path: &std::path::Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = String::new();
    let mut map = None;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(m) = line.strip_prefix("-- map: ") {
            map = Some(crate::shardmap::load(&root.join(m.trim())).unwrap());
            out.push_str(line);
            out.push('\n');
        } else if let Some(sql) = line.strip_prefix("> ") {
            let map = map.as_ref().expect("a `-- map:` line comes first");
            out.push_str(line);
            out.push('\n');
            let mut params_text = Vec::new();
            if let Some(p) = lines.peek().and_then(|l| l.strip_prefix("-- params: ")) {
                params_text = p.split(',').map(|s| s.trim().to_owned()).collect();
                out.push_str(lines.next().unwrap_or_default());
                out.push('\n');
            }
            // Skip the old plan text.
            while lines.peek().is_some_and(|l| !l.starts_with("> ") && !l.is_empty()) {
                lines.next();
            }
            let params = Params {
                formats: vec![0; params_text.len()],
                values: params_text.iter().map(|s| Some(s.as_bytes())).collect(),
                types: &[],
                literals: &[],
            };
            out.push_str(&explain(&plan(&shape(sql, map), map, &params), map));
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (text, out)
}

#[test]
fn golden_plans() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plans");
    let mut failures = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "plans") {
            continue;
        }
        files += 1;
        let (old, new) = run_file(&path);
        if old != new {
            if std::env::var_os("UPDATE_PLANS").is_some() {
                std::fs::write(&path, &new).unwrap();
            } else {
                failures.push(format!("{}:\n{}", path.display(), first_difference(&old, &new)));
            }
        }
    }
    assert!(files > 0, "no golden plan files in {}", dir.display());
    assert!(
        failures.is_empty(),
        "plans changed (UPDATE_PLANS=1 rewrites):\n{}",
        failures.join("\n")
    );
}

fn first_difference(old: &str, new: &str) -> String {
    for (i, (a, b)) in old.lines().zip(new.lines()).enumerate() {
        if a != b {
            return format!("line {}:\n  was: {a}\n  now: {b}", i + 1);
        }
    }
    format!(
        "length differs ({} vs {} lines)",
        old.lines().count(),
        new.lines().count()
    )
}

#[test]
fn a_binary_key_parameter_is_read_by_its_declared_type() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = crate::shardmap::load(&root.join("shard-maps/example.toml")).unwrap();
    let s = shape("SELECT * FROM customers WHERE id = $1", &map);
    let int8 = 42i64.to_be_bytes();
    let float8 = 42f64.to_be_bytes();
    let bind = |value: &'static [u8], oid: u32| {
        let mut types = vec![0, 1];
        types.extend_from_slice(&oid.to_be_bytes());
        Params {
            formats: vec![1],
            values: vec![Some(value)],
            types: Box::leak(types.into_boxed_slice()),
            literals: &[],
        }
    };
    let leak = |b: [u8; 8]| -> &'static [u8] { Box::leak(Box::new(b)) };
    assert!(matches!(plan(&s, &map, &bind(leak(int8), 20)), ShardPlan::One(_)));
    assert!(matches!(plan(&s, &map, &bind(leak(int8), 0)), ShardPlan::One(_)));
    // 8 bytes of a float8 are not an int8: every shard, where PostgreSQL compares the values.
    assert!(matches!(
        plan(&s, &map, &bind(leak(float8), 701)),
        ShardPlan::Scatter { .. }
    ));
}
