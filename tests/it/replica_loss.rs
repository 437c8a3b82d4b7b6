//! A replica that dies under load: reads that it was serving, and whose answer had not begun,
//! are tried again on another node, and the replica leaves the rotation at once. Clients see no
//! error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shardwire::sandbox::Sandbox;

use crate::harness::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_under_load_costs_no_client_an_error() {
    let sb = tokio::task::spawn_blocking(|| Sandbox::start(2))
        .await
        .unwrap()
        .expect("sandbox with two replicas");
    let url = |port: u16| format!("postgres://postgres@127.0.0.1:{port}/app");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[pool]
max_size = 10
connect_timeout = "2s"
[routing]
lag_check_interval = "100ms"
[[users]]
name = "app"
password = "app"
[[shards]]
name = "main"
primary = "{}"
replicas = ["{}", "{}"]
"#,
        url(sb.primary.port),
        url(sb.replicas[0].port),
        url(sb.replicas[1].port)
    );
    let proxy = Proxy::start(&config).await;
    proxy.wait_replicas_in_rotation().await;
    let sb = Arc::new(std::sync::Mutex::new(sb));

    let errors = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let c = proxy.app().await;
        let (errors, reads, stop) = (errors.clone(), reads.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.simple_query("SELECT pg_is_in_recovery()").await {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("read failed: {e:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        // A closed connection would fail every later read at once.
                        break;
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reads.load(Ordering::Relaxed);
    let victim = sb.clone();
    tokio::task::spawn_blocking(move || victim.lock().unwrap().replicas[1].stop())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let total = reads.load(Ordering::Relaxed);
    eprintln!("reads: {before} before the stop, {total} in all");
    assert!(
        before > 50 && total > before + 50,
        "the load ran on both sides of the stop"
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "client-visible errors");
    let health = proxy.shared.runtime.load().clusters[0].replicas[1].health.load_full();
    assert!(!health.in_rotation, "the stopped replica left the rotation");
    drop(proxy);
    tokio::task::spawn_blocking(move || drop(sb)).await.unwrap();
}
