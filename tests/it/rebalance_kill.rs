//! `shardwire rebalance move` killed with SIGKILL right after each step it records, then run
//! again: the move resumes to completion, while a client keeps writing to the partitions, and
//! no acknowledged write is lost. A move kept with its way back (`--keep-way-back`) and rolled
//! back after the cutover (`--abort`, itself killed once midway) brings the partition back with
//! the writes made on the new shard in between; another is finished with `complete`.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each};
use crate::shards::{MAP, sharded};

const STEPS: [&str; 7] = [
    "started",
    "syncing",
    "caught_up",
    "verified",
    "switched",
    "reversing",
    "completing",
];

/// Runs the tool to the end; its stdout (or the failure with stderr).
async fn tool(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?} failed: {stdout}{stderr}");
    stdout
}

/// Runs the tool until it has recorded `step`, then kills it with SIGKILL.
async fn kill_at(args: &[&str], step: &str) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("SHARDWIRE_MOVE_PAUSE_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let wanted = format!("paused at {step}");
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains(&wanted) {
                return true;
            }
            seen.push(l);
        }
        false
    })
    .await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(
        found == Ok(true),
        "{args:?} never reached {step} ({status}): {}",
        seen.join("\n")
    );
}

/// SHOW MOVES through the admin console.
async fn show_moves(proxy: &Proxy) -> Vec<Vec<String>> {
    let (admin, conn) = tokio_postgres::connect(
        &proxy.url("admin", "admin").replace("/app", "/shardwire"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .simple_query("SHOW MOVES")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

/// The shard holding partition `p` of `users`.
fn owner(map: &shardwire::shardmap::ShardMap, p: u32) -> Option<usize> {
    let g = map.groups.iter().find(|g| g.name == "users")?;
    match &g.partitioning {
        shardwire::shardmap::Partitioning::Hash { owner } => owner.get(p as usize).copied(),
        _ => None,
    }
}

async fn in_partition(c: &tokio_postgres::Client, p: u32) -> (i64, i64) {
    let filter = shardwire::rebalance::sql::in_partition(shardwire::shardmap::KeyType::Int, "id", p, 64);
    let r = c
        .query_one(
            &format!("SELECT count(*), coalesce(sum(score), 0)::int8 FROM users WHERE {filter}"),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_at_each_step_resumes_and_a_rollback_after_the_cutover_keeps_the_writes() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let part = |k: i64| map.locate("users", &k.to_string()).unwrap().0.partition.unwrap();
    // Partitions 0-8 are on s0: one per killed step, one rolled back, one completed later.
    let parts: Vec<u32> = (0..9).collect();
    let keys: Vec<i64> = (1..20_000i64).filter(|k| parts.contains(&part(*k))).collect();
    let values: Vec<String> = keys.iter().map(|k| format!("({k}, 'u', 0)")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();

    // A client adding to scores on every one of these partitions the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicI64::new(0));
    let writer = {
        let (stop, acked, keys, url) = (stop.clone(), acked.clone(), keys.clone(), proxy.url("app", "app"));
        tokio::spawn(async move {
            let (w, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut errors = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let k = keys[(i * 7919) % keys.len()];
                i += 1;
                match w
                    .execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&k])
                    .await
                {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.push(format!("{e:?}"));
                        if w.is_closed() || errors.len() >= 5 {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            errors
        })
    };

    let config = proxy.config_path.display().to_string();
    let admin = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port());
    // `rebalance <command>` of partition `p` of users to s1.
    let args = |command: &str, p: u32, extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["rebalance", command, "--config", &config, "--admin", &admin]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = p.to_string();
        a.extend(["--group", "users", "--to", "s1", "--partition", &p].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    for (p, step) in parts.iter().zip(STEPS) {
        let a = args("move", *p, &[]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        kill_at(&a, step).await;
        // SHOW MOVES names the step the tool stopped at.
        let shown = show_moves(&proxy).await;
        let row = shown
            .iter()
            .find(|r| r[0] == "users" && r[1] == p.to_string())
            .unwrap_or_else(|| panic!("SHOW MOVES lacks partition {p}: {shown:?}"));
        assert_eq!(
            (row[3].as_str(), row[4].as_str(), row[5].as_str()),
            ("s1", step, "logical"),
            "{row:?}"
        );
        let out = tool(&a).await;
        assert!(out.contains("moved partition"), "{step}: {out}");
        let on_source = in_partition(&topo.shard(0).await, *p).await;
        assert_eq!(on_source.0, 0, "killed at {step}: rows left on the source");
        let serving = &proxy.shared.runtime.load().config.map;
        assert_eq!(
            owner(serving, *p),
            Some(1),
            "killed at {step}: the map gives the partition to s1"
        );
        assert!(
            !serving.groups.iter().any(|g| g.states.contains_key(p)),
            "killed at {step}: the partition serves"
        );
    }

    // Kept with its way back, then rolled back after the cutover (the rollback killed once).
    let back = parts[7];
    let a = args("move", back, &["--keep-way-back"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = tool(&a).await;
    assert!(out.contains("flow back"), "{out}");
    let moved = in_partition(&topo.shard(1).await, back).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = in_partition(&topo.shard(1).await, back).await;
    assert!(
        later.1 > moved.1,
        "writes go to the new shard: {moved:?} then {later:?}"
    );
    let a = args("move", back, &["--abort"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    kill_at(&a, "returning").await;
    let out = tool(&a).await;
    assert!(out.contains("rolled back"), "{out}");
    assert_eq!(
        in_partition(&topo.shard(1).await, back).await.0,
        0,
        "the new shard's copy is gone"
    );
    assert_eq!(owner(&proxy.shared.runtime.load().config.map, back), Some(0));

    // Kept with its way back, then completed.
    let done = parts[8];
    let a = args("move", done, &["--keep-way-back"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    tool(&a).await;
    assert!(
        in_partition(&topo.shard(0).await, done).await.0 > 0,
        "the old copy stays until complete"
    );
    let a = args("complete", done, &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = tool(&a).await;
    assert!(out.contains("completed"), "{out}");
    assert_eq!(in_partition(&topo.shard(0).await, done).await.0, 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let errors = writer.await.unwrap();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    // Every acknowledged write is in the rows, wherever the map put them; no row twice.
    let mut rows = 0;
    let mut score = 0;
    for s in 0..3 {
        for p in &parts {
            let (n, sum) = in_partition(&topo.shard(s).await, *p).await;
            rows += n;
            score += sum;
        }
    }
    assert_eq!(rows, keys.len() as i64, "rows lost or duplicated");
    assert_eq!(score, acked.load(Ordering::Relaxed), "acknowledged writes lost");
    for s in 0..3 {
        let left = crate::rebalance::replication_objects(&topo.shard(s).await).await;
        assert_eq!(left, 0, "replication objects left on s{s}");
    }
}
