//! Drivers other than tokio-postgres against shardwire over three shards: psycopg 3
//! (`tests/clients/psycopg_sharded.py`: executemany in one pipeline, a failing row in the
//! middle, transaction blocks across shards, explicit pipeline mode).

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each, keys_on};
use crate::shards::{MAP, SHARDS, sharded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_executemany_and_transactions_span_shards() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    each(&proxy.app().await, SCHEMA).await;
    let keys: Vec<i64> = (0..SHARDS).map(|s| keys_on(s, 1, 1)[0]).collect();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_sharded.py");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        // The system's interpreter, where Debian's python3-psycopg is (not a user's pyenv).
        tokio::process::Command::new(if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        })
        .arg(&script)
        .arg(proxy.url("app", "app"))
        .args(keys.iter().map(|k| k.to_string()))
        .output(),
    )
    .await
    .expect("the script finishes")
    .expect("python3 runs (psycopg 3: Debian's python3-psycopg, which .ci/run installs)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("ok"), "{text}");
    // What the script left, seen on the shards themselves.
    let rows = crate::transactions::over_shards(topo, "SELECT count(*) FROM users").await;
    assert_eq!(rows, 3);
}
