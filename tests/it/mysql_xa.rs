//! Transactions and writes over MySQL shards (XA, its recovery) and generated IDs, on the three
//! MariaDB shards of `mysql_sharding`.

use mysql_async::prelude::Queryable;
use shardwire::sandbox_mysql::MariaSandbox;

use crate::harness::Proxy;
use crate::mysql_sharding::{LOCK, SCHEMA, config, direct, topo};
use crate::shards::MAP;

/// The sum of users' scores on one shard, read there directly.
async fn shard_sum(sb: &MariaSandbox, ids: &str) -> i64 {
    let v: Option<i64> = direct(sb)
        .await
        .query_first(format!(
            "SELECT CAST(COALESCE(SUM(score), 0) AS SIGNED) FROM users WHERE id IN ({ids})"
        ))
        .await
        .unwrap();
    v.unwrap()
}

#[tokio::test]
async fn transactions_and_writes_over_shards_are_atomic_by_xa() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let p = Proxy::start(&config(t)).await;
    let mut c = crate::mysql::connect(&p).await;
    for s in SCHEMA {
        c.query_drop(*s).await.unwrap();
    }
    let map = p.shared.runtime.load().config.map.clone();
    let shard_of = |k: i64| map.locate("users", &k.to_string()).unwrap().0.shard;
    // One key per shard.
    let keys: Vec<i64> = (0..3).map(|s| (1..1000).find(|k| shard_of(*k) == s).unwrap()).collect();
    let list = keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
    let rows: Vec<String> = keys.iter().map(|k| format!("({k}, 'u{k}', NULL, 100)")).collect();
    c.query_drop(format!(
        "INSERT INTO users (id, name, country, score) VALUES {}",
        rows.join(", ")
    ))
    .await
    .unwrap();
    let total_sql = format!("SELECT SUM(score) FROM users WHERE id IN ({list})");
    let total: Option<i64> = c.query_first(&total_sql).await.unwrap();
    assert_eq!(total, Some(300));
    // A transfer over two shards, committed.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!("UPDATE users SET score = score - 30 WHERE id = {}", keys[0]))
        .await
        .unwrap();
    c.query_drop(format!("UPDATE users SET score = score + 30 WHERE id = {}", keys[1]))
        .await
        .unwrap();
    let inside: Option<i64> = c
        .query_first(format!("SELECT score FROM users WHERE id = {}", keys[1]))
        .await
        .unwrap();
    assert_eq!(inside, Some(130), "own write on the joined shard");
    c.query_drop("COMMIT").await.unwrap();
    let mut sum = 0;
    for sb in &t.shards {
        sum += shard_sum(sb, &list).await;
    }
    assert_eq!(sum, 300);
    let v: Option<i64> = c
        .query_first(format!("SELECT score FROM users WHERE id = {}", keys[0]))
        .await
        .unwrap();
    assert_eq!(v, Some(70));
    // Over three shards, rolled back: nothing stays.
    c.query_drop("START TRANSACTION").await.unwrap();
    for k in &keys {
        c.query_drop(format!("UPDATE users SET score = 0 WHERE id = {k}"))
            .await
            .unwrap();
    }
    c.query_drop("ROLLBACK").await.unwrap();
    let total: Option<i64> = c.query_first(&total_sql).await.unwrap();
    assert_eq!(total, Some(300));
    // A write over several shards fails on one: nothing of it stays anywhere.
    let dup = format!(
        "INSERT INTO users (id, name) VALUES ({}, 'new'), ({}, 'new'), ({}, 'dup')",
        keys[0] + 3000,
        keys[1] + 3000,
        keys[2]
    );
    let e = c.query_drop(&dup).await.unwrap_err();
    assert!(e.to_string().contains("1062"), "{e}");
    let left: Option<i64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM users WHERE id IN ({}, {})",
            keys[0] + 3000,
            keys[1] + 3000
        ))
        .await
        .unwrap();
    assert_eq!(left, Some(0), "a failed write over shards left rows");
    // Nothing is left prepared on any shard.
    for sb in &t.shards {
        let prepared: Vec<mysql_async::Row> = direct(sb).await.query("XA RECOVER").await.unwrap();
        assert!(prepared.is_empty(), "a branch left prepared");
    }
}

#[tokio::test]
async fn recovery_commits_decided_branches_and_rolls_back_the_others() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let p = Proxy::start(&config(t)).await;
    let mut c = crate::mysql::connect(&p).await;
    c.query_drop("CREATE TABLE IF NOT EXISTS xa_r (id INT PRIMARY KEY)")
        .await
        .unwrap();
    c.query_drop("DELETE FROM xa_r").await.unwrap();
    // The decision of one id, on the default shard.
    let mut d = direct(t.shards[0]).await;
    d.query_drop(
        "CREATE TABLE IF NOT EXISTS shardwire_xa_decisions (xid VARCHAR(64) PRIMARY KEY, decided_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))",
    )
    .await
    .unwrap();
    d.query_drop("INSERT IGNORE INTO shardwire_xa_decisions (xid) VALUES ('sw-1000-decided')")
        .await
        .unwrap();
    // Branches a crashed proxy left prepared on shard 1: one decided, one not (and old).
    for (xid, id) in [("sw-1000-decided", 1), ("sw-1000-undecided", 2)] {
        let mut b = direct(t.shards[1]).await;
        b.query_drop(format!("XA START '{xid}'")).await.unwrap();
        b.query_drop(format!("INSERT INTO xa_r VALUES ({id})")).await.unwrap();
        b.query_drop(format!("XA END '{xid}'")).await.unwrap();
        b.query_drop(format!("XA PREPARE '{xid}'")).await.unwrap();
        b.disconnect().await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let prepared: Vec<mysql_async::Row> = direct(t.shards[1]).await.query("XA RECOVER").await.unwrap();
        if prepared.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recovery did not finish the branches"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let ids: Vec<i64> = direct(t.shards[1])
        .await
        .query("SELECT id FROM xa_r ORDER BY id")
        .await
        .unwrap();
    assert_eq!(ids, vec![1], "the decided branch committed, the other rolled back");
}

#[tokio::test]
async fn generated_ids_fill_inserts_and_last_insert_id() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let map = MAP.replace(
        "[tables.events]\ngroup = \"events\"\nkey = \"id\"",
        "[tables.events]\ngroup = \"events\"\nkey = \"id\"\nid_column = \"id\"",
    );
    assert!(map.contains("id_column"));
    let text = config(t).replace(MAP, &map);
    let path = crate::shards::map_path(&text);
    std::fs::write(&path, &map).unwrap();
    let p = Proxy::start(&format!("{text}\n[ids]\nworker_id = 7\n")).await;
    let mut c = crate::mysql::connect(&p).await;
    c.query_drop("DROP TABLE IF EXISTS events").await.unwrap();
    c.query_drop(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, kind VARCHAR(10) COLLATE utf8mb4_bin NOT NULL, weight DOUBLE)",
    )
    .await
    .unwrap();
    c.query_drop("INSERT INTO events (kind, weight) VALUES ('gen', 1.5)")
        .await
        .unwrap();
    let first = c.last_insert_id().expect("the OK packet carries the generated id");
    assert!(first > 1 << 22, "a snowflake id: {first}");
    let seen: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(seen, Some(first));
    let kind: Option<String> = c
        .query_first("SELECT kind FROM events WHERE id = LAST_INSERT_ID()")
        .await
        .unwrap();
    assert_eq!(kind.as_deref(), Some("gen"), "routed by the session's id");
    c.query_drop("INSERT INTO events (kind) VALUES ('x'), ('y'), ('z')")
        .await
        .unwrap();
    let next = c.last_insert_id().unwrap();
    assert!(next > first);
    let rows: Vec<(u64, String)> = c
        .query("SELECT id, kind FROM events WHERE kind IN ('x', 'y', 'z') ORDER BY id")
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].0, next, "the first generated id of the statement");
}

#[tokio::test]
async fn under_autocommit_off_begin_reaches_several_shards_and_ddl_runs() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let p = Proxy::start(&config(t)).await;
    let mut c = crate::mysql::connect(&p).await;
    // PyMySQL's and mysqlclient's default.
    c.query_drop("SET autocommit = 0").await.unwrap();
    for s in SCHEMA {
        c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let map = p.shared.runtime.load().config.map.clone();
    let shard_of = |k: i64| map.locate("users", &k.to_string()).unwrap().0.shard;
    let a = (1..1000).find(|k| shard_of(*k) == 0).unwrap();
    let b = (1..1000).find(|k| shard_of(*k) == 1).unwrap();
    c.query_drop(format!("INSERT INTO users (id, name, score) VALUES ({a}, 'a', 10)"))
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop(format!("INSERT INTO users (id, name, score) VALUES ({b}, 'b', 10)"))
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    // An implicit transaction stays on its shard.
    c.query_drop(format!("UPDATE users SET score = 0 WHERE id = {a}"))
        .await
        .unwrap();
    let e = c
        .query_drop(format!("UPDATE users SET score = 0 WHERE id = {b}"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("BEGIN"), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
    // BEGIN makes it one over shards.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!("UPDATE users SET score = score - 3 WHERE id = {a}"))
        .await
        .unwrap();
    c.query_drop(format!("UPDATE users SET score = score + 3 WHERE id = {b}"))
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let mut check = crate::mysql::connect(&p).await;
    let scores: Vec<(i64, i64)> = check
        .query(format!(
            "SELECT id, score FROM users WHERE id IN ({a}, {b}) ORDER BY id"
        ))
        .await
        .unwrap();
    let mut want = vec![(a, 7), (b, 13)];
    want.sort();
    assert_eq!(scores, want);
    // A setting made on one shard of the transaction holds on the others too.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop(format!("UPDATE users SET score = 1 WHERE id = {a}"))
        .await
        .unwrap();
    c.query_drop(format!("UPDATE users SET score = 1 WHERE id = {b}"))
        .await
        .unwrap();
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES'").await.unwrap();
    let mode: Option<String> = c
        .query_first(format!("SELECT @@sql_mode FROM users WHERE id = {a}"))
        .await
        .unwrap();
    assert_eq!(
        mode.as_deref(),
        Some("ANSI_QUOTES"),
        "the setting reached the first shard"
    );
    c.query_drop("ROLLBACK").await.unwrap();
}
