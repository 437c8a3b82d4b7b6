//! Fifty shard-map changes, valid and invalid alternately, to two instances sharing their map
//! through a real etcd, while clients of both read and write (both protocols, transactions over
//! two shards, scatters): through either instance's console, through etcd directly (as a DBA with
//! etcdctl would), and through a configuration file RELOAD. No client sees an error, no connection
//! to a shard is dropped, every valid change is served by both instances within one second, every
//! invalid one leaves both serving the map they had.

use std::time::{Duration, Instant};

use crate::cluster::{Etcd, admin, cluster_config, version};
use crate::harness::{Proxy, rand_suffix};
use crate::map_churn::{Load, proxy_pids};
use crate::shards::{MAP, sharded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_changes_through_two_instances_and_etcd_cost_clients_nothing() {
    let (topo, _guard) = sharded().await;
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let prefix = format!("/churn{}", rand_suffix());
    let direct: Vec<tokio_postgres::Client> = {
        let mut v = Vec::new();
        for p in &topo.shard_ports {
            v.push(crate::harness::direct(*p).await);
        }
        v
    };
    let since: String = direct[0].query_one("SELECT now()::text", &[]).await.unwrap().get(0);
    let config_a = cluster_config(&topo.config(MAP), &etcd, &prefix, "a");
    let a = Proxy::start(&config_a).await;
    let b = Proxy::start(&cluster_config(&topo.config(MAP), &etcd, &prefix, "b")).await;
    let setup = a.app().await;
    Load::create_users(&setup).await;

    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(if i % 2 == 0 { a.app().await } else { b.app().await });
    }
    let load = Load::start(clients);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut before = Vec::new();
    for d in &direct {
        before.push(proxy_pids(d, &since).await);
    }

    // What a DBA with etcdctl would do: read the map's text and store another.
    let cluster = a.shared.runtime.load().config.cluster.clone().unwrap();
    let mut store = shardwire::etcd::Store::connect(&cluster.etcd, &cluster.prefix)
        .await
        .unwrap();
    let (mut valid, mut refused) = (0, 0);
    for i in 0..50u32 {
        let v = version(&a);
        assert_eq!(version(&b), v);
        if i % 2 == 0 {
            let state = if i / 2 % 2 == 0 { "moving" } else { "serving" };
            match i / 2 % 4 {
                0 => {
                    admin(&a, &format!("SET PARTITION users 5 STATE {state} VERSION {v}"))
                        .await
                        .unwrap();
                }
                1 => {
                    admin(&b, &format!("SET PARTITION users 5 STATE {state} VERSION {v}"))
                        .await
                        .unwrap();
                }
                2 => {
                    let (text, rev) = store.map().await.unwrap().unwrap();
                    let next = text.replacen(&format!("version = {v}"), &format!("version = {}", v + 1), 1);
                    assert!(store.replace_map(&next, rev).await.unwrap());
                }
                _ => {
                    // The rest of the configuration still comes from the file.
                    let lag = format!("max_replica_lag = \"{}s\"", i + 1);
                    std::fs::write(
                        &a.config_path,
                        config_a.replacen("[routing]\n", &format!("[routing]\n{lag}\n"), 1),
                    )
                    .unwrap();
                    admin(&a, "RELOAD").await.unwrap();
                    assert_eq!(
                        a.shared.runtime.load().config.routing.max_lag,
                        Duration::from_secs(u64::from(i) + 1)
                    );
                    valid += 1;
                    continue;
                }
            }
            served_by_both(&a, &b, v + 1).await;
            valid += 1;
        } else {
            let e = match i / 2 % 4 {
                0 => admin(&b, &format!("SET PARTITION users 5 STATE serving VERSION {}", v - 1)).await,
                1 => admin(&a, "SET PARTITION users 5 TO s2").await,
                2 => {
                    // A map that does not validate, stored straight into etcd, then put right.
                    let (text, rev) = store.map().await.unwrap().unwrap();
                    let bad = text
                        .replacen(&format!("version = {v}"), &format!("version = {}", v + 1), 1)
                        .replacen("\"0-20\"", "\"0-19\"", 1);
                    assert!(store.replace_map(&bad, rev).await.unwrap());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let (_, rev) = store.map().await.unwrap().unwrap();
                    assert!(store.replace_map(&text, rev).await.unwrap());
                    Err("stored straight into etcd".to_string())
                }
                _ => admin(&a, "SET PARTITON users 5 STATE moving").await,
            };
            assert!(e.is_err(), "change {i} refused: {e:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!((version(&a), version(&b)), (v, v), "change {i}: the running map stays");
            refused += 1;
        }
    }
    let (statements, errors) = load.stop().await;
    eprintln!("{valid} changes applied, {refused} refused, {statements} client statements");
    assert_eq!(errors, 0, "client errors");
    assert!(statements > 200, "the load ran throughout ({statements} statements)");
    assert_eq!(a.shared.runtime.load().config.map, b.shared.runtime.load().config.map);
    for (s, d) in direct.iter().enumerate() {
        let after = proxy_pids(d, &since).await;
        let dropped: Vec<&i32> = before[s].iter().filter(|p| !after.contains(p)).collect();
        assert!(dropped.is_empty(), "s{s}: connections dropped: {dropped:?}");
    }
    let v = version(&a);
    admin(&a, &format!("SET PARTITION users 5 STATE serving VERSION {v}"))
        .await
        .ok();
    setup.batch_execute("DROP TABLE users").await.unwrap();
}

/// Waits until both instances serve map version `v`, for at most one second.
async fn served_by_both(a: &Proxy, b: &Proxy, v: u64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while version(a) != v || version(b) != v {
        assert!(
            Instant::now() < deadline,
            "version {v} served by both within 1 s (a {}, b {})",
            version(a),
            version(b)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
