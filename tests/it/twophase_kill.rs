//! `shardwire serve` killed with SIGKILL between a cross-shard transaction's commit decision and
//! its COMMIT PREPARED: the prepared part waits on its shard, and the instance started again
//! commits it from the decision record, so the transfer ends committed on every shard.

use std::time::{Duration, Instant};

use crate::cluster::free_port;
use crate::harness::rand_suffix;
use crate::sharding::keys_on;
use crate::shards::{MAP, SHARDS, sharded};
use crate::topology_reload::Serve;

async fn serve(config: &std::path::Path, port: u16, pause_ms: Option<u64>) -> Serve {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"));
    cmd.args(["serve", "--config"]).arg(config);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(ms) = pause_ms {
        cmd.env("SHARDWIRE_PAUSE_AFTER_DECISION_MS", ms.to_string());
    }
    let child = Serve(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "shardwire serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

async fn prepared(shards: &[tokio_postgres::Client]) -> i64 {
    let mut n = 0;
    for d in shards {
        n += d
            .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'sw:%'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    n
}

/// Decision records over the shards.
async fn decisions(shards: &[tokio_postgres::Client]) -> i64 {
    let mut n = 0;
    for d in shards {
        if let Ok(r) = d.query_one("SELECT count(*) FROM shardwire_2pc", &[]).await {
            n += r.get::<_, i64>(0);
        }
    }
    n
}

async fn balances(shards: &[tokio_postgres::Client], keys: [i64; 2]) -> Vec<i32> {
    let mut out = Vec::new();
    for k in keys {
        let mut found = None;
        for d in shards {
            if let Some(r) = d
                .query_opt("SELECT score FROM users WHERE id = $1", &[&k])
                .await
                .unwrap()
            {
                found = Some(r.get::<_, i32>(0));
            }
        }
        out.push(found.expect("the account exists"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_killed_after_the_decision_commits_on_every_shard_after_restart() {
    let (topo, _guard) = sharded().await;
    let port = free_port();
    let config = topo
        .config(MAP)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""));
    let path = std::env::temp_dir().join(format!("shardwire-2pc-kill-{}.toml", rand_suffix()));
    std::fs::write(&path, config).unwrap();
    let mut direct = Vec::new();
    for p in &topo.shard_ports {
        direct.push(crate::harness::direct(*p).await);
    }
    assert_eq!(direct.len(), SHARDS);
    let (a, b) = (keys_on(0, 1, 1)[0], keys_on(1, 1, 1)[0]);

    let proxy = serve(&path, port, Some(4000)).await;
    let url = format!("host=127.0.0.1 port={port} user=app password=app dbname=app");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("DROP TABLE IF EXISTS users").await.unwrap();
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int)")
        .await
        .unwrap();
    // Two rows on two shards: a split INSERT, itself two-phase (and paused after its decision).
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES ({a}, 'a', 1000), ({b}, 'b', 1000)"
    ))
    .await
    .unwrap();
    let decisions_before = decisions(&direct).await;
    // The transfer, one string as `psql -c` sends it; its COMMIT pauses after the decision.
    let transfer = tokio::spawn(async move {
        c.batch_execute(&format!(
            "BEGIN; UPDATE users SET score = score - 100 WHERE id = {a}; \
             UPDATE users SET score = score + 100 WHERE id = {b}; COMMIT"
        ))
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while prepared(&direct).await == 0 {
        assert!(Instant::now() < deadline, "the transfer never reached PREPARE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The decision is committed on the coordinator before the pause begins.
    while decisions(&direct).await == decisions_before {
        assert!(Instant::now() < deadline, "no decision recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy); // SIGKILL, in the pause between the decision and COMMIT PREPARED.
    let outcome = tokio::time::timeout(Duration::from_secs(10), transfer)
        .await
        .expect("the client is told")
        .unwrap();
    assert!(outcome.is_err(), "the client saw the connection go");
    assert_eq!(prepared(&direct).await, 1, "the second shard's part waits prepared");
    let half = balances(&direct, [a, b]).await;
    assert!(
        half == [900, 1000] || half == [1000, 1100],
        "the coordinator committed, the other part is still prepared: {half:?}"
    );

    // Started again: recovery commits the prepared part from the decision record.
    let _proxy = serve(&path, port, None).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while prepared(&direct).await > 0 {
        assert!(Instant::now() < deadline, "recovery did not finish the prepared part");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(balances(&direct, [a, b]).await, [900, 1100], "committed on every shard");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let total: i64 = c
        .query_one("SELECT sum(score)::int8 FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2000);
    c.batch_execute("DROP TABLE users").await.unwrap();
    std::fs::remove_file(&path).ok();
}
