//! A shard map swapped while statements run: a statement finishes on the map it started with,
//! the next one uses the new map, and clients stay connected.

use std::time::{Duration, Instant};

use crate::harness::Proxy;
use crate::shards::{MAP, sharded};

/// MAP plus `mapswap` in the users group; `moved` puts every users partition on s0.
fn map(moved: bool) -> String {
    let mut m = MAP.replace("version = 1", if moved { "version = 3" } else { "version = 2" });
    if moved {
        m = m.replace(
            r#"assignment = { s0 = "0-20", s1 = "21-41", s2 = "42-63" }"#,
            r#"assignment = { s0 = "0-63" }"#,
        );
    }
    m.push_str("[tables.mapswap]\ngroup = \"users\"\nkey = \"id\"\n");
    m
}

#[tokio::test]
async fn a_statement_finishes_on_the_map_it_started_with() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(&map(false))).await;
    let c = proxy.app().await;
    c.batch_execute("DROP TABLE IF EXISTS mapswap").await.unwrap();
    c.batch_execute("CREATE TABLE mapswap (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let values: Vec<String> = (1..=60).map(|i| format!("({i}, 'v{i}')")).collect();
    c.batch_execute(&format!("INSERT INTO mapswap (id, v) VALUES {}", values.join(",")))
        .await
        .unwrap();
    let mut on_shard = Vec::new();
    for s in 0..3 {
        let n: i64 = topo
            .shard(s)
            .await
            .query_one("SELECT count(*) FROM mapswap", &[])
            .await
            .unwrap()
            .get(0);
        on_shard.push(n);
    }
    assert!(on_shard.iter().all(|&n| n > 0), "rows on every shard: {on_shard:?}");

    // Hold the scatter on s1 behind a lock, so it is in flight when the map changes.
    let locker = topo.shard(1).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE mapswap IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let scatter = tokio::spawn(async move {
        let rows = c.query("SELECT id, v FROM mapswap ORDER BY id", &[]).await.unwrap();
        (c, rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
    });
    let watch = topo.shard(1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%mapswap%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the scatter never reached s1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&proxy.config_path, topo.config(&map(true))).unwrap();
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    // Every partition of s1 and s2 reassigned without the data: refused, the running map stays.
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    let m = e.as_db_error().unwrap().message().to_owned();
    assert!(
        m.contains("group users: partitions 21 (s1 → s0)")
            && m.contains("and 33 more")
            && m.contains("RELOAD DATA IN PLACE"),
        "{m}"
    );
    assert_eq!(proxy.shared.runtime.load().config.map.version, 2);
    // The DBA states the data is in place (here it is not: what s1 and s2 hold becomes
    // invisible, which shows the new map at work).
    admin.simple_query("RELOAD DATA IN PLACE").await.unwrap();
    assert_eq!(proxy.shared.runtime.load().config.map.version, 3);

    // A statement started after the swap uses the new map: every key is on s0 now, so it
    // counts only the rows s0 holds.
    let other = proxy.app().await;
    let count = other.query_one("SELECT count(*) FROM mapswap", &[]);
    let n: i64 = tokio::time::timeout(Duration::from_secs(10), count)
        .await
        .expect("a new statement does not wait for shards the new map does not use")
        .unwrap()
        .get(0);
    assert_eq!(n, on_shard[0], "the new map routes every key to s0");

    locker.batch_execute("COMMIT").await.unwrap();
    let (c, ids) = tokio::time::timeout(Duration::from_secs(10), scatter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids,
        (1..=60).collect::<Vec<i64>>(),
        "the in-flight scatter read every shard of its map"
    );
    // The session that ran it is on the new map for its next statement.
    let n: i64 = c.query_one("SELECT count(*) FROM mapswap", &[]).await.unwrap().get(0);
    assert_eq!(n, on_shard[0]);

    for s in 0..3 {
        topo.shard(s)
            .await
            .batch_execute("DROP TABLE IF EXISTS mapswap")
            .await
            .unwrap();
    }
}
