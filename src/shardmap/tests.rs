use super::*;

const BASE: &str = r#"
    version = 3
    shards = ["a", "b"]
    default_shard = "a"
    [groups.g]
    key_type = "bigint"
    partitioning = { kind = "hash", partitions = 8 }
    assignment = { a = "0-3", b = "4-7" }
    [tables.users]
    group = "g"
    key = "id"
    [tables.Orders]
    group = "g"
    key = "User_Id"
    [tables.countries]
    reference = true
"#;

fn rejects(text: &str, path: &str, needle: &str) {
    let e = parse(text).expect_err("map should be rejected");
    assert!(e.path.contains(path), "{e}");
    assert!(e.message.contains(needle), "{e}");
}

#[test]
fn example_map_is_valid() {
    let text = include_str!("../../shard-maps/example.toml");
    let m = parse(text).unwrap();
    assert_eq!(m.shards, ["s0", "s1", "s2"]);
    assert_eq!(
        m.table("orders"),
        Some(&TableRule::Sharded {
            group: 0,
            key: "customer_id".into()
        })
    );
    assert_eq!(m.table("countries"), Some(&TableRule::Reference));
    let (p, _) = m.locate("audit_log", "1500000").unwrap();
    assert_eq!(p.shard, 1);
    let (p, _) = m.locate("stores", "apac").unwrap();
    assert_eq!(p.shard, 2);
}

#[test]
fn locates_hash_keys_like_postgres() {
    let m = parse(BASE).unwrap();
    // Partitions under MODULUS 8 as PostgreSQL places them (see hash.rs).
    assert_eq!(
        m.locate("users", "42").unwrap().0,
        Placement {
            partition: Some(2),
            shard: 0
        }
    );
    assert_eq!(
        m.locate("ORDERS", "-1").unwrap().0,
        Placement {
            partition: Some(5),
            shard: 1
        }
    );
    assert!(m.locate("users", "x").unwrap_err().contains("not a valid integer key"));
    assert!(m.locate("countries", "1").unwrap_err().contains("reference"));
    assert!(m.locate("other", "1").unwrap_err().contains("default shard a"));
}

#[test]
fn hash_assignment_must_cover_each_partition_once() {
    rejects(
        &BASE.replace("\"4-7\"", "\"4-6\""),
        "groups.g.assignment",
        "1 partition(s) not assigned",
    );
    rejects(
        &BASE.replace("\"4-7\"", "\"3-7\""),
        "groups.g.assignment.b",
        "partition 3 is already assigned",
    );
    rejects(
        &BASE.replace("\"4-7\"", "\"4-8\""),
        "groups.g.assignment.b",
        "outside partitions 0-7",
    );
    rejects(
        &BASE.replace("b = \"4-7\"", "c = \"4-7\""),
        "groups.g.assignment.c",
        "not one of the shards",
    );
    rejects(
        &BASE.replace("\"0-3\"", "\"zero\""),
        "groups.g.assignment.a",
        "not a partition number",
    );
}

#[test]
fn ranges_cover_without_overlap() {
    let ranged = |ranges: &str| {
        format!(
            r#"version = 1
            shards = ["a", "b"]
            default_shard = "a"
            [groups.r]
            key_type = "int"
            partitioning = {{ kind = "range" }}
            ranges = [{ranges}]"#
        )
    };
    let ok = parse(&ranged(r#"{ to = 10, shard = "a" }, { from = 10, shard = "b" }"#)).unwrap();
    let g = &ok.groups[0];
    assert_eq!(g.locate(&KeyValue::Int(9)).unwrap().shard, 0);
    assert_eq!(g.locate(&KeyValue::Int(10)).unwrap().shard, 1);
    assert_eq!(g.locate(&KeyValue::Int(i64::MIN)).unwrap().shard, 0);
    rejects(
        &ranged(r#"{ to = 10, shard = "a" }, { from = 11, shard = "b" }"#),
        "ranges[1]",
        "gap",
    );
    rejects(
        &ranged(r#"{ to = 10, shard = "a" }, { from = 9, shard = "b" }"#),
        "ranges[1]",
        "overlaps",
    );
    rejects(
        &ranged(r#"{ from = 0, to = 10, shard = "a" }, { from = 10, shard = "b" }"#),
        "ranges[0]",
        "keys below 0",
    );
    rejects(
        &ranged(r#"{ to = 10, shard = "a" }, { from = 10, to = 20, shard = "b" }"#),
        "ranges",
        "keys from 20 up",
    );
    rejects(
        &ranged(r#"{ to = 10, shard = "a" }, { from = 10, to = 5, shard = "b" }"#),
        "ranges[1]",
        "not below",
    );
}

#[test]
fn lists_hold_each_value_once() {
    let listed = |lists: &str| {
        format!(
            r#"version = 1
            shards = ["a", "b"]
            default_shard = "a"
            [groups.l]
            key_type = "text"
            partitioning = {{ kind = "list" }}
            lists = {{ {lists} }}"#
        )
    };
    let ok = parse(&listed(r#"a = ["x", "y"], b = ["z"]"#)).unwrap();
    assert_eq!(ok.groups[0].locate(&KeyValue::Text("z".into())).unwrap().shard, 1);
    assert!(ok.groups[0].locate(&KeyValue::Text("w".into())).is_err());
    rejects(&listed(r#"a = ["x"], b = ["x"]"#), "lists.b", "listed twice");
    rejects(&listed(r#"a = [1]"#), "lists.a", "not a text value");
}

#[test]
fn tables_name_groups_and_keys() {
    rejects(
        &BASE.replace("group = \"g\"\n    key = \"id\"", "group = \"h\"\n    key = \"id\""),
        "tables.users.group",
        "no group `h`",
    );
    rejects(
        &BASE.replace("    key = \"id\"\n", ""),
        "tables.users.key",
        "needs its key column",
    );
    rejects(
        &BASE.replace("reference = true", "reference = true\n    key = \"x\""),
        "tables.countries",
        "no group or key",
    );
    rejects(
        &BASE.replace("key_type = \"bigint\"", "key_type = \"float\""),
        "groups.g.key_type",
        "not one of",
    );
    rejects(
        &BASE.replace("default_shard = \"a\"", "default_shard = \"z\""),
        "default_shard",
        "not one of the shards",
    );
    rejects(
        &BASE.replace("[\"a\", \"b\"]", "[\"a\", \"a\"]"),
        "shards[1]",
        "repeated",
    );
    rejects(
        &BASE.replace("version = 3", "version = 3\n    extra = 1"),
        "map",
        "unknown field",
    );
}

#[test]
fn id_columns_are_validated() {
    let with = |extra: &str| {
        BASE.replace(
            "    [tables.users]\n    group = \"g\"\n    key = \"id\"",
            &format!("    [tables.users]\n    group = \"g\"\n    key = \"id\"\n    {extra}"),
        )
    };
    let m = parse(&with("id_column = \"ID\"\n    supplied_ids = \"refuse\"")).unwrap();
    assert_eq!(
        m.id_columns["users"],
        IdColumn {
            column: "id".into(),
            refuse_supplied: true
        }
    );
    rejects(
        &with("supplied_ids = \"refuse\""),
        "tables.users.supplied_ids",
        "only meaningful with id_column",
    );
    rejects(
        &with("id_column = \"id\"\n    supplied_ids = \"maybe\""),
        "tables.users.supplied_ids",
        "not one of",
    );
    rejects(
        &BASE.replace("reference = true", "reference = true\n    id_column = \"id\""),
        "tables.countries.id_column",
        "sharded tables",
    );
    rejects(
        &with("id_column = \"id\"").replace("key_type = \"bigint\"", "key_type = \"text\""),
        "tables.users.id_column",
        "integer key_type",
    );
}
