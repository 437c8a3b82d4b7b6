//! Read/write split: reads on the replica, writes and read-write transactions on the primary.

use crate::harness::{Proxy, on_replica, on_replica_simple, shared, table};

#[tokio::test]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    assert!(on_replica(&c).await, "extended-protocol read on the replica");
    assert!(on_replica_simple(&c).await, "simple-protocol read on the replica");
    let t = table("rw");
    c.batch_execute(&format!("CREATE TABLE {t} (id int primary key, v text)"))
        .await
        .unwrap();
    let row = c
        .query_one(
            &format!("INSERT INTO {t} VALUES (1, 'a') RETURNING pg_is_in_recovery()"),
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "INSERT ran on the primary");
    let direct = crate::harness::primary_i64(topo, &format!("SELECT count(*) FROM {t}")).await;
    assert_eq!(direct, 1, "the row is on the primary");
    for sql in [
        format!("SELECT pg_is_in_recovery() FROM {t} FOR UPDATE"),
        format!("SELECT pg_is_in_recovery() FROM {t} FOR SHARE"),
        "/* shardwire: primary */ SELECT pg_is_in_recovery()".to_string(),
        "SELECT pg_is_in_recovery() FROM (SELECT pg_advisory_xact_lock(7)) x".to_string(),
    ] {
        let on_primary = !c.query_one(&sql, &[]).await.unwrap().get::<_, bool>(0);
        assert!(on_primary, "{sql} must run on the primary");
    }
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

/// Views only the primary can answer: on the standby `pg_stat_replication` is empty and
/// `pg_prepared_xacts` misses what the primary prepared (a driver's `tpc_recover()` found
/// nothing, and prepared transactions stayed behind holding locks).
#[tokio::test]
async fn primary_only_views_are_read_on_the_primary() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    // The shared replica can fall out of rotation for a moment while other tests load its
    // primary (1 s lag bound): a plain read must land on it once it is back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !on_replica(&c).await {
        assert!(
            std::time::Instant::now() < deadline,
            "plain reads still use the replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let streaming = c
        .query_one("SELECT count(*) FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(streaming, 1, "the primary streams to its replica");
    let slots = c
        .simple_query("SELECT pg_is_in_recovery() FROM pg_locks LIMIT 1")
        .await
        .unwrap();
    let on_primary = slots
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("f")));
    assert!(on_primary, "pg_locks is read on the primary");
    let xid: i64 = c.query_one("SELECT txid_current()", &[]).await.unwrap().get(0);
    let status: Option<String> = c.query_one("SELECT txid_status($1)", &[&xid]).await.unwrap().get(0);
    assert_eq!(status.as_deref(), Some("committed"));
}

#[tokio::test]
async fn transactions_stay_on_the_primary_and_read_only_ones_use_a_replica() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    c.batch_execute("BEGIN").await.unwrap();
    for _ in 0..3 {
        assert!(
            !on_replica(&c).await,
            "reads inside a read-write transaction stay on the primary"
        );
    }
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(on_replica_simple(&c).await);
    assert!(on_replica(&c).await);
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .unwrap();
    assert!(on_replica(&c).await);
    c.batch_execute("ROLLBACK").await.unwrap();

    // tokio-postgres transactions (BEGIN through the extended protocol's simple query).
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    assert!(!on_replica(&tx).await);
    tx.commit().await.unwrap();
    assert!(
        on_replica(&c).await,
        "after the transaction, reads return to the replica"
    );
}

#[tokio::test]
async fn reads_are_spread_over_replicas_and_counted() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    for _ in 0..20 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let rt = proxy.shared.runtime.load();
    let replica = rt.clusters[0].replicas[0]
        .stats
        .statements
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(replica >= 20, "20 reads counted on the replica, got {replica}");
}

#[tokio::test]
async fn unparseable_statements_go_to_the_primary_and_report_the_database_error() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let c = proxy.app().await;
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42601", "{e}");
    assert_eq!(
        c.query_one("SELECT 1 + 1", &[]).await.unwrap().get::<_, i32>(0),
        2,
        "session still usable"
    );
}
