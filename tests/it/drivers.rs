//! Drivers other than tokio-postgres against shardwire: psycopg 3 over three shards
//! (`tests/clients/psycopg_sharded.py`: executemany in one pipeline, a failing row in the
//! middle, transaction blocks across shards, explicit pipeline mode), and psycopg 3 in front of a
//! primary and a replica (`tests/clients/psycopg_conformance.py`: process ids, signals, FATAL
//! errors, read-only checks as its own test suite expects them of one server).

use crate::harness::{Proxy, shared};
use crate::sharding::{SCHEMA, each, keys_on};
use crate::shards::{MAP, SHARDS, sharded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_executemany_and_transactions_span_shards() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    each(&proxy.app().await, SCHEMA).await;
    let keys: Vec<i64> = (0..SHARDS).map(|s| keys_on(s, 1, 1)[0]).collect();
    let mut args = vec![proxy.url("app", "app")];
    args.extend(keys.iter().map(|k| k.to_string()));
    let text = psycopg_script("psycopg_sharded.py", &args).await;
    assert!(text.ends_with("ok\n"), "{text}");
    // What the script left, seen on the shards themselves.
    let rows = crate::transactions::over_shards(topo, "SELECT count(*) FROM users").await;
    assert_eq!(rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_sees_process_ids_signals_and_fatal_errors_as_from_one_server() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let args = [proxy.url("app", "app"), proxy.url("trusted", "")];
    let text = psycopg_script("psycopg_conformance.py", &args).await;
    assert!(text.ends_with("ok\n"), "{text}");
    // Every client the script terminated or closed is gone from the proxy too.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = proxy.shared.clients.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "clients left registered after the script ended");
}

/// Runs `tests/clients/<script>` with the system's interpreter (where Debian's python3-psycopg
/// is, not a user's pyenv); its output, stdout then stderr. Fails the test if it does not exit 0.
async fn psycopg_script(script: &str, args: &[String]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(python).arg(&path).args(args).output(),
    )
    .await
    .expect("the script finishes")
    .expect("python3 runs (psycopg 3: Debian's python3-psycopg, which .ci/run installs)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}
