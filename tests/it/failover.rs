//! Failover followed without a configuration change: the primary stops, a replica is promoted
//! (as `pg_ctl promote`, Patroni or a DBA would), writes go to it within a few check intervals,
//! and the old primary, back as a primary on the old timeline, gets no traffic at all. The other
//! replica serves reads again only once it streams from the new primary; a node of another
//! cluster is never followed nor read from.

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

/// Five more writes through `c`, each logged once acknowledged.
async fn write_five(c: &tokio_postgres::Client, next: &mut i32, acked: &mut Vec<i32>) {
    for _ in 0..5 {
        *next += 1;
        c.execute("INSERT INTO failover_log VALUES ($1)", &[&*next])
            .await
            .unwrap();
        acked.push(*next);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_and_the_old_primary_is_fenced() {
    let sb = crate::harness::own_sandbox(2).await;
    let (old_port, new_port, other_port) = (sb.primary.port, sb.replicas[0].port, sb.replicas[1].port);
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

    // The other replica was streaming from the old primary: until it streams the new timeline
    // it may miss what the new primary took (or hold what the old one lost), so it serves no read.
    let other = || proxy.shared.runtime.load().clusters[0].replicas[1].health.load_full();
    proxy
        .wait_for("the other replica out of rotation", |_| !other().in_rotation)
        .await;
    assert!(
        other().reason.contains("timeline"),
        "out for its timeline: {}",
        other().reason
    );
    for _ in 0..20 {
        assert_ne!(
            port_of(&c, "SELECT current_setting('port')").await,
            other_port.to_string(),
            "a read reached the replica left on the old timeline"
        );
    }
    // Pointed at the new primary (as a DBA or Patroni does), it follows the new timeline and
    // serves reads again, with every acknowledged write.
    let repoint = crate::harness::direct(other_port).await;
    repoint
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={new_port} user=postgres'"
        ))
        .await
        .unwrap();
    repoint.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    proxy
        .wait_for("the other replica back in rotation", |_| other().in_rotation)
        .await;
    // A session of its own: `c` wrote, and reads its writes on the primary until replayed.
    let reader = proxy.app().await;
    assert_eq!(
        port_of(&reader, "SELECT current_setting('port')").await,
        other_port.to_string()
    );
    // In rotation means within the lag bound: every write is there moments later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: i64 = repoint
            .query_one("SELECT count(*) FROM failover_log", &[])
            .await
            .unwrap()
            .get(0);
        if seen == acked.len() as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the re-pointed replica has every write ({seen})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(repoint);

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
    write_five(&c, &mut next, &mut acked).await;
    assert_eq!(
        port_of(&c, "SELECT current_setting('port') /* shardwire: primary */").await,
        new_port.to_string()
    );

    // The DBA catches the configuration up: the promoted node named as the primary, the old one
    // gone. RELOAD applies it as any topology change; writes and reads go on where they were.
    let node = |port: u16| format!("\"postgres://postgres@127.0.0.1:{port}/app\"");
    let caught_up = config.replace(&format!("{}, ", node(new_port)), "").replace(
        &format!("primary = {}", node(old_port)),
        &format!("primary = {}", node(new_port)),
    );
    assert!(
        !caught_up.contains(&old_port.to_string()) && caught_up.matches(&new_port.to_string()).count() == 1,
        "{caught_up}"
    );
    std::fs::write(&proxy.config_path, &caught_up).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let reloaded = proxy.shared.runtime.load().clusters[0].clone();
    assert_eq!(reloaded.primary.role(), shardwire::backend::Role::Primary);
    assert_eq!(reloaded.replicas.len(), 1);
    write_five(&c, &mut next, &mut acked).await;
    assert_eq!(
        port_of(&c, "SELECT current_setting('port') /* shardwire: primary */").await,
        new_port.to_string()
    );
    proxy
        .wait_for("the replica in rotation after the reload", |s| {
            s.runtime.load().clusters[0].replicas[0].health.load().in_rotation
        })
        .await;
    assert_eq!(
        port_of(&reader, "SELECT current_setting('port')").await,
        other_port.to_string()
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

/// Servers of another cluster listed as replicas (a wrong URL, a logical subscriber, a server
/// re-initialised in place): a streaming replica of it serves no read, and one out of recovery is
/// not followed even when the primary is down from the start and its timeline never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_another_cluster_are_never_read_from_or_followed() {
    let ours = crate::harness::own_sandbox(1).await;
    let theirs = crate::harness::own_sandbox(1).await;
    let url = |port: u16| format!("\"postgres://postgres@127.0.0.1:{port}/app\"");
    let own = crate::harness::sandbox_config(&ours, "1s");
    let own_replicas = format!("replicas = [{}]", url(ours.replicas[0].port));
    let with_replicas = |ports: &[u16]| {
        let listed: Vec<String> = ports.iter().map(|p| url(*p)).collect();
        own.replace(&own_replicas, &format!("replicas = [{}]", listed.join(", ")))
    };
    let (foreign_replica, foreign_primary) = (theirs.replicas[0].port, theirs.primary.port);
    let config = with_replicas(&[ours.replicas[0].port, foreign_replica]);
    assert!(config.contains(&foreign_replica.to_string()));
    let proxy = Proxy::start(&config).await;
    let health = |i: usize| proxy.shared.runtime.load().clusters[0].replicas[i].health.load_full();
    proxy
        .wait_for("our replica in rotation", |_| health(0).in_rotation)
        .await;
    proxy
        .wait_for("the foreign replica refused", |_| {
            health(1).reason.contains("system identifier")
        })
        .await;
    assert!(!health(1).in_rotation);
    let c = proxy.app().await;
    for _ in 0..20 {
        assert_ne!(
            port_of(&c, "SELECT current_setting('port')").await,
            foreign_replica.to_string()
        );
    }
    drop(c);
    drop(proxy);

    // Our primary is down before shardwire starts: its timeline is never seen. A server out of
    // recovery would be taken for a promoted replica, were it of this cluster.
    let mut ours = ours;
    let ours = tokio::task::spawn_blocking(move || {
        ours.primary.stop();
        ours
    })
    .await
    .unwrap();
    let proxy = Proxy::start(&with_replicas(&[ours.replicas[0].port, foreign_primary])).await;
    proxy
        .wait_for("the foreign primary refused", |s| {
            s.runtime.load().clusters[0].replicas[1]
                .health
                .load()
                .reason
                .contains("system identifier")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cluster = proxy.shared.runtime.load().clusters[0].clone();
    assert_eq!(cluster.failovers.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(cluster.replicas[1].role(), shardwire::backend::Role::Replica);
    drop(proxy);
    tokio::task::spawn_blocking(move || drop((ours, theirs))).await.unwrap();
}
