//! Lag-aware routing against a replica whose replay is paused, stopped or idle; read-your-writes;
//! a primary that goes away and comes back.

use std::time::{Duration, Instant};

use crate::harness::{Proxy, faults, on_replica, replica_caught_up, table};

const INTERVAL_MS: u64 = 100;

fn routing(max_lag: &str) -> String {
    format!("max_replica_lag = \"{max_lag}\"\nhealthy_after = 2\n")
}

#[tokio::test]
async fn paused_replay_moves_reads_to_the_primary_and_back() {
    let (topo, _guard) = faults().await;
    let proxy = Proxy::start(&topo.config("", &routing("300ms"))).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    assert!(on_replica(&c).await);
    let t = table("pause");
    let primary = topo.primary().await;
    primary
        .batch_execute(&format!("CREATE TABLE {t} (v int)"))
        .await
        .unwrap();
    replica_caught_up(topo).await;
    // Let the last replayed transaction age past the bound, then stop replay and write.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let replica = topo.replica().await;
    replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    primary
        .batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let wrote = Instant::now();
    let mut moved_after = None;
    while wrote.elapsed() < Duration::from_secs(5) {
        if !on_replica(&c).await {
            moved_after = Some(wrote.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved_after = moved_after.expect("reads moved to the primary");
    eprintln!("reads moved to the primary {moved_after:?} after the write (check interval {INTERVAL_MS} ms)");
    // Two intervals, plus slack for a loaded CI machine.
    assert!(
        moved_after <= Duration::from_millis(2 * INTERVAL_MS + 400),
        "took {moved_after:?}"
    );
    let seen: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "the read sees the write");
    replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    proxy.wait_replicas_in_rotation().await;
    assert!(on_replica(&c).await, "reads return to the replica after it catches up");
    primary.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn an_idle_primary_keeps_reads_on_the_replica() {
    let (topo, _guard) = faults().await;
    let proxy = Proxy::start(&topo.config("", &routing("200ms"))).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    // Ten times the bound with no writes at all.
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        assert!(on_replica(&c).await, "an idle primary is not replica lag");
        let h = proxy.shared.runtime.load().clusters[0].replicas[0].health.load_full();
        assert!(h.in_rotation, "replica stays in rotation: {}", h.reason);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stopped_replica_leaves_the_rotation_without_failing_reads() {
    let (topo, _guard) = faults().await;
    let proxy = Proxy::start(&topo.config("", &routing("1s"))).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    for _ in 0..5 {
        assert!(on_replica(&c).await);
    }
    tokio::task::spawn_blocking(|| topo.stop_replica()).await.unwrap();
    for i in 0..50 {
        let r = c.query_one("SELECT pg_is_in_recovery()", &[]).await;
        let on_primary = !r
            .unwrap_or_else(|e| panic!("read {i} failed after the replica stopped: {e}"))
            .get::<_, bool>(0);
        assert!(on_primary);
    }
    let h = proxy.shared.runtime.load().clusters[0].replicas[0].health.load_full();
    assert!(!h.in_rotation);
    tokio::task::spawn_blocking(|| topo.start_replica()).await.unwrap();
    proxy.wait_replicas_in_rotation().await;
    assert!(on_replica(&c).await, "the replica returns after it recovers");
}

#[tokio::test]
async fn when_no_replica_is_usable_reads_are_refused_if_configured() {
    let (topo, _guard) = faults().await;
    let proxy = Proxy::start(&topo.config("", "max_replica_lag = \"1s\"\nwhen_no_replica = \"refuse\"\n")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    tokio::task::spawn_blocking(|| topo.stop_replica()).await.unwrap();
    proxy
        .wait_for("replica out", |s| {
            !s.runtime.load().clusters[0].replicas[0].health.load().in_rotation
        })
        .await;
    let e = c.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(e.code().unwrap().code().starts_with("08"), "{e}");
    assert!(e.as_db_error().unwrap().message().contains("lag bound"), "{e:?}");
    let w: bool = c
        .query_one("/* shardwire: primary */ SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!w, "the hint still reaches the primary");
    tokio::task::spawn_blocking(|| topo.start_replica()).await.unwrap();
    proxy.wait_replicas_in_rotation().await;
    assert!(on_replica(&c).await);
}

#[tokio::test]
async fn read_your_writes_waits_for_the_replica_to_replay_the_session_s_write() {
    let (topo, _guard) = faults().await;
    // A lag bound so loose that the delayed replica stays in rotation: only read-your-writes
    // keeps the writing session's reads consistent.
    let proxy = Proxy::start(&topo.config("", "max_replica_lag = \"1h\"\nmax_replica_lag_bytes = 1000000000\n")).await;
    proxy.wait_replicas_in_rotation().await;
    let t = table("ryw");
    let primary = topo.primary().await;
    primary
        .batch_execute(&format!("CREATE TABLE {t} (v int)"))
        .await
        .unwrap();
    replica_caught_up(topo).await;
    // The replica receives WAL at once but applies commits only 3 s later.
    let replica = topo.replica().await;
    replica
        .batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '3s'")
        .await
        .unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    for _ in 0..100 {
        let v: String = replica
            .query_one("SHOW recovery_min_apply_delay", &[])
            .await
            .unwrap()
            .get(0);
        if v == "3s" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read-your-writes is on by default: the `app` user does not set it.
    let ryw = proxy.app().await;
    let plain = proxy.app().await;
    let opted_out = proxy.connect("noryw", "noryw").await.unwrap();
    ryw.batch_execute(&format!("INSERT INTO {t} VALUES (1)")).await.unwrap();
    assert_eq!(
        count(&ryw, &t).await,
        (1, false),
        "the writer reads its write, from the primary"
    );
    assert_eq!(
        count(&plain, &t).await,
        (0, true),
        "another session reads the (stale) replica"
    );
    opted_out
        .batch_execute(&format!("INSERT INTO {t} VALUES (2)"))
        .await
        .unwrap();
    assert_eq!(
        count(&opted_out, &t).await,
        (0, true),
        "a user with read_your_writes = false reads the replica at once, stale"
    );
    assert!(
        proxy.shared.runtime.load().clusters[0].replicas[0]
            .health
            .load()
            .in_rotation
    );
    replica
        .batch_execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        .await
        .unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    replica_caught_up(topo).await;
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    assert_eq!(
        count(&ryw, &t).await,
        (2, true),
        "once replayed, the writer reads from the replica again"
    );
    primary.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn a_primary_that_goes_away_gives_a_connection_error_then_works_again() {
    let (topo, _guard) = faults().await;
    let proxy = Proxy::start(&topo.config("", &routing("1s"))).await;
    let c = proxy.app().await;
    assert_eq!(
        c.query_one("/* shardwire: primary */ SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    proxy.wait_replicas_in_rotation().await;
    replica_caught_up(topo).await;
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    tokio::task::spawn_blocking(|| topo.stop_primary()).await.unwrap();
    // Reads go on on the replica, which has replayed all the primary had: for several checks.
    for _ in 0..20 {
        let r = c.query_one("SELECT pg_is_in_recovery()", &[]).await;
        assert!(
            r.expect("a read while the primary is down").get::<_, bool>(0),
            "on the replica"
        );
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
    }
    assert!(
        proxy.shared.runtime.load().clusters[0].replicas[0]
            .health
            .load()
            .in_rotation,
        "the replica stayed in rotation"
    );
    let e = c.simple_query("/* shardwire: primary */ SELECT 1").await.unwrap_err();
    assert!(
        e.code().map(|c| c.code().starts_with("08")).unwrap_or(false),
        "connection error, got {e}"
    );
    let e = c.simple_query("INSERT INTO nowhere VALUES (1)").await.unwrap_err();
    assert!(
        e.code().map(|c| c.code().starts_with("08")).unwrap_or(false),
        "connection error, got {e}"
    );
    tokio::task::spawn_blocking(|| topo.start_primary()).await.unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if c.simple_query("/* shardwire: primary */ SELECT 1").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the same session works once the primary is back");
    proxy.wait_replicas_in_rotation().await;
}

async fn count(c: &tokio_postgres::Client, t: &str) -> (i64, bool) {
    let r = c
        .query_one(&format!("SELECT count(*), pg_is_in_recovery() FROM {t}"), &[])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}
