//! Sharding through real clients: DDL on every shard, rows placed by key (checked on the shards
//! themselves against PostgreSQL's own hash partitioning), single-shard routing, scatter reads,
//! multi-shard writes with two-phase commit, and the refusals.

use crate::harness::Proxy;
use crate::shards::{MAP, SHARDS, sharded};

const SCHEMA: &str = "
DROP TABLE IF EXISTS users, orders, countries, events;
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, country text, score int);
CREATE TABLE orders (id bigint NOT NULL, user_id bigint NOT NULL, amount numeric(10,2) NOT NULL, status text NOT NULL, PRIMARY KEY (user_id, id));
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL);
";

/// Runs `sql` statement by statement through `c` (DDL is broadcast one statement at a time).
async fn each(c: &tokio_postgres::Client, sql: &str) {
    for s in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        c.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_live_on_the_shard_their_key_maps_to() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let values: Vec<String> = (1..=300).map(|i| format!("({i}, 'u{i}', 'c{}', {})", i % 7, i % 13)).collect();
    c.batch_execute(&format!("INSERT INTO users (id, name, country, score) VALUES {}", values.join(",")))
        .await
        .unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(n, 300);
    // On each shard, every row's partition (computed by PostgreSQL's own hash partitioning with the
    // same modulus) belongs to that shard.
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let mut total = 0;
    for s in 0..SHARDS {
        let d = topo.shard(s).await;
        d.batch_execute(
            "DROP TABLE IF EXISTS placement; CREATE TEMP TABLE placement (k bigint) PARTITION BY HASH (k);",
        )
        .await
        .unwrap();
        for r in 0..64 {
            d.batch_execute(&format!(
                "CREATE TEMP TABLE placement_{r} PARTITION OF placement FOR VALUES WITH (MODULUS 64, REMAINDER {r})"
            ))
            .await
            .unwrap();
        }
        d.batch_execute("INSERT INTO placement SELECT id FROM users").await.unwrap();
        let rows = d
            .query("SELECT k, substring(tableoid::regclass::text from 'placement_(\\d+)')::int FROM placement", &[])
            .await
            .unwrap();
        for row in rows {
            let (k, partition): (i64, i32) = (row.get(0), row.get(1));
            let (p, _) = map.locate("users", &k.to_string()).unwrap();
            assert_eq!(p.partition, Some(partition as u32), "key {k}: PostgreSQL and shardwire disagree");
            assert_eq!(p.shard, s, "key {k} is on shard {s} but maps to {}", p.shard);
            total += 1;
        }
    }
    assert_eq!(total, 300, "every row exactly once across the shards");
}
