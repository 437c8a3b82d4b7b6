//! Failover followed without a configuration change: the primary stops, a replica is promoted
//! (as `pg_ctl promote`, Patroni or a DBA would), writes go to it within a few check intervals,
//! and the old primary, back as a primary on the old timeline, gets no traffic at all.

use std::time::{Duration, Instant};

use crate::harness::Proxy;

async fn port_of(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_and_the_old_primary_is_fenced() {
    let sb = crate::harness::own_sandbox(1).await;
    let (old_port, new_port) = (sb.primary.port, sb.replicas[0].port);
    let config = crate::harness::sandbox_config(&sb, "1s");
    let proxy = Proxy::start(&config).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    c.batch_execute("CREATE TABLE failover_log (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut acked = Vec::new();
    for i in 1..=50 {
        c.execute("INSERT INTO failover_log VALUES ($1)", &[&i]).await.unwrap();
        acked.push(i);
    }
    // A planned switchover: the replica has everything before the primary goes.
    let replica = crate::harness::direct(new_port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica
        .query_one("SELECT count(*) FROM failover_log", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
        < 50
    {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(replica);

    let sb = std::sync::Arc::new(std::sync::Mutex::new(sb));
    let s = sb.clone();
    let promoted = tokio::task::spawn_blocking(move || {
        let mut sb = s.lock().unwrap();
        sb.primary.stop();
        let issued = Instant::now();
        sb.replicas[0].promote().expect("pg_ctl promote");
        issued
    })
    .await
    .unwrap();
    let mut next = 51;
    let deadline = promoted + Duration::from_secs(30);
    loop {
        match c.execute("INSERT INTO failover_log VALUES ($1)", &[&next]).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes never reached the promoted replica: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    acked.push(next);
    let took = promoted.elapsed();
    eprintln!("writes resumed {took:?} after pg_ctl promote was issued (check interval 100 ms)");
    assert!(
        // Generous: the machine is shared; the figure printed above is the measurement.
        took < Duration::from_secs(15),
        "writes took {took:?} to follow the failover"
    );
    assert_eq!(
        port_of(&c, "SELECT current_setting('port') /* shardwire: primary */").await,
        new_port.to_string()
    );

    // The old primary comes back, still a primary, on the old timeline: fenced.
    let s = sb.clone();
    tokio::task::spawn_blocking(move || s.lock().unwrap().primary.start().expect("old primary restarts"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        next += 1;
        c.execute("INSERT INTO failover_log VALUES ($1)", &[&next])
            .await
            .unwrap();
        acked.push(next);
        assert_ne!(
            port_of(&c, "SELECT current_setting('port')").await,
            old_port.to_string(),
            "a read reached the fenced node"
        );
    }
    let cluster = proxy.shared.runtime.load().clusters[0].clone();
    assert_eq!(cluster.failovers.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(cluster.primary.role(), shardwire::backend::Role::Fenced);
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let shards = admin.simple_query("SHOW SHARDS").await.unwrap();
    let row = shards
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(1).unwrap().to_owned(), r.get(4).unwrap().to_owned()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(row, (format!("127.0.0.1:{new_port}"), "1".to_owned()));

    // A reload that rebuilds the shard's pools (a pool setting changed) keeps following the
    // failover: the configuration still names the old primary, which stays fenced.
    std::fs::write(&proxy.config_path, config.replace("max_size = 10", "max_size = 11")).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let rebuilt = proxy.shared.runtime.load().clusters[0].clone();
    assert!(
        !std::sync::Arc::ptr_eq(&rebuilt, &cluster),
        "the reload rebuilt the shard"
    );
    assert_eq!(rebuilt.primary.role(), shardwire::backend::Role::Fenced);
    for _ in 0..5 {
        next += 1;
        c.execute("INSERT INTO failover_log VALUES ($1)", &[&next])
            .await
            .unwrap();
        acked.push(next);
    }
    assert_eq!(
        port_of(&c, "SELECT current_setting('port') /* shardwire: primary */").await,
        new_port.to_string()
    );

    // No acknowledged write is lost, and the old primary got none of the new ones.
    let new = crate::harness::direct(new_port).await;
    let got: Vec<i32> = new
        .query("SELECT id FROM failover_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, acked);
    let old = crate::harness::direct(old_port).await;
    let n: i64 = old
        .query_one("SELECT count(*) FROM failover_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);
}
