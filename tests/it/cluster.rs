//! Two instances sharing one shard map through a real etcd (started here, on loopback): a change
//! made through one is served by both within a second and acknowledged by both; two changes on
//! the same base version, one through each, apply once; with etcd stopped both keep serving and
//! refuse changes, and they take changes again once it is back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Proxy, rand_suffix};
use crate::shards::{MAP, sharded};

/// An etcd server in a folder of its own.
pub struct Etcd {
    dir: std::path::PathBuf,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A loopback port free right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = std::env::temp_dir().join(format!("shardwire-etcd-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            dir,
            client: free_port(),
            peer: free_port(),
            child: None,
        };
        e.run();
        e
    }

    pub fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (Debian package etcd-server; .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn cluster_config(base: &str, etcd: &Etcd, prefix: &str, name: &str) -> String {
    format!(
        "{base}\n[cluster]\netcd = [\"127.0.0.1:{}\"]\nprefix = \"{prefix}\"\nname = \"{name}\"\nttl = \"2s\"\n\
         [ids]\nlease = \"etcd\"\nlease_ttl = \"2s\"\n",
        etcd.client
    )
}

pub async fn admin(p: &Proxy, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let c = p.connect_db("admin", "admin", "shardwire").await.unwrap();
    let msgs = c.simple_query(sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
    })?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect())
}

pub fn version(p: &Proxy) -> u64 {
    p.shared.runtime.load().config.map.version
}

/// Waits until `p` serves map `v`; how long it took.
async fn serves(p: &Proxy, v: u64, within: Duration) -> Duration {
    let start = Instant::now();
    while version(p) != v {
        assert!(
            start.elapsed() < within,
            "still serving {} after {within:?}, wanted {v}",
            version(p)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// SHOW CLUSTER as (name, map version).
async fn members(p: &Proxy) -> Vec<(String, String)> {
    admin(p, "SHOW CLUSTER")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

/// A partition of `users` on s0.
fn partition_on_s0() -> u32 {
    let map = shardwire::shardmap::parse(MAP).unwrap();
    (1i64..)
        .map(|k| map.locate("users", &k.to_string()).unwrap().0)
        .find(|pl| pl.shard == 0)
        .and_then(|pl| pl.partition)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_map_through_etcd() {
    let (topo, _guard) = sharded().await;
    let mut etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let prefix = format!("/t{}", rand_suffix());
    let a = Proxy::start(&cluster_config(&topo.config(MAP), &etcd, &prefix, "a")).await;
    let b = Proxy::start(&cluster_config(&topo.config(MAP), &etcd, &prefix, "b")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = members(&a).await;
        if m == [("a".to_string(), "1".to_string()), ("b".to_string(), "1".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "SHOW CLUSTER: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Worker ids leased through etcd: never the same, a restart included.
    let ids = |p: &Proxy| p.shared.ids.clone().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while ids(&a).status().is_err() || ids(&b).status().is_err() {
        assert!(
            Instant::now() < until,
            "no worker id leased: {:?} {:?}",
            ids(&a).status(),
            ids(&b).status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(ids(&a).worker(), ids(&b).worker());
    let taken = ids(&b).worker();
    drop(b);
    let b = Proxy::start(&cluster_config(&topo.config(MAP), &etcd, &prefix, "b")).await;
    while ids(&b).status().is_err() {
        assert!(
            Instant::now() < until,
            "no worker id after a restart: {:?}",
            ids(&b).status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(
        ids(&a).worker(),
        ids(&b).worker(),
        "the restarted instance took {taken} before"
    );
    let mut all = std::collections::HashSet::new();
    for p in [&a, &b] {
        let c = p.app().await;
        for r in c.query("SELECT shardwire.next_ids(500)", &[]).await.unwrap() {
            assert!(all.insert(r.get::<_, i64>(0)), "an ID issued twice");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = members(&a).await;
        if m == [("a".to_string(), "1".to_string()), ("b".to_string(), "1".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "SHOW CLUSTER after b's restart: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = partition_on_s0();
    let c = a.app().await;
    c.batch_execute("DROP TABLE IF EXISTS cluster_t").await.unwrap();
    c.batch_execute("CREATE TABLE cluster_t (id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();

    // A change through one instance: the other serves it within a second, both acknowledge it.
    let asked = Instant::now();
    let done = admin(&a, &format!("SET PARTITION users {p} TO s1 DATA IN PLACE VERSION 1")).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(version(&a), 2);
    serves(&b, 2, Duration::from_secs(1)).await;
    let took = asked.elapsed();
    println!("the other instance served the change {took:?} after it was asked for");
    assert!(
        took < Duration::from_secs(1),
        "the change took {took:?} to reach the other instance"
    );
    assert_eq!(
        members(&b).await,
        [("a".to_string(), "2".to_string()), ("b".to_string(), "2".to_string())]
    );
    let route = admin(
        &b,
        &format!("SHOW ROUTE FOR SELECT * FROM users WHERE id = {}", {
            let map = shardwire::shardmap::parse(MAP).unwrap();
            (1i64..)
                .find(|k| map.locate("users", &k.to_string()).unwrap().0.partition == Some(p))
                .unwrap()
        }),
    )
    .await
    .unwrap();
    assert!(route.iter().flatten().any(|c| c.contains("s1")), "{route:?}");
    // A map change without DATA IN PLACE that moves rows is refused on either instance.
    let moved = admin(&b, &format!("SET PARTITION users {p} TO s2 VERSION 2")).await;
    assert!(moved.is_err_and(|m| m.contains("DATA IN PLACE")));

    // Two changes on the same base version, one through each instance: one applies.
    let (to_s2, to_s0) = (
        format!("SET PARTITION users {p} TO s2 DATA IN PLACE VERSION 2"),
        format!("SET PARTITION users {p} TO s0 DATA IN PLACE VERSION 2"),
    );
    let (x, y) = tokio::join!(admin(&a, &to_s2), admin(&b, &to_s0));
    assert!(x.is_ok() != y.is_ok(), "exactly one applies: {x:?} / {y:?}");
    serves(&a, 3, Duration::from_secs(1)).await;
    serves(&b, 3, Duration::from_secs(1)).await;
    assert_eq!(a.shared.runtime.load().config.map, b.shared.runtime.load().config.map);

    // etcd stopped: both keep serving, changes are refused with the reason.
    etcd.stop();
    for (i, p) in [&a, &b].into_iter().enumerate() {
        let c = p.app().await;
        c.execute("INSERT INTO cluster_t (id, v) VALUES ($1, 'x')", &[&(i as i64 + 10)])
            .await
            .expect("writes with etcd down");
        let n: i64 = c.query_one("SELECT count(*) FROM cluster_t", &[]).await.unwrap().get(0);
        assert_eq!(n, i as i64 + 1, "reads with etcd down");
    }
    let refused = admin(&a, &format!("SET PARTITION users {p} TO s1 DATA IN PLACE VERSION 3")).await;
    assert!(
        refused.is_err_and(|m| m.contains("etcd")),
        "a change with etcd down is refused"
    );
    assert_eq!((version(&a), version(&b)), (3, 3));

    // etcd back: changes apply again and reach both.
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.run();
        etcd
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin(&a, &format!("SET PARTITION users {p} TO s1 DATA IN PLACE VERSION 3")).await {
            Ok(_) => break,
            Err(m) => assert!(
                Instant::now() < deadline,
                "changes still refused after etcd came back: {m}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    serves(&b, 4, Duration::from_secs(1)).await;
    a.app().await.batch_execute("DROP TABLE cluster_t").await.unwrap();
}

/// A partition move with two instances serving: its cutover waits until both hold the
/// partition's statements, and rolls back, leaving the partition on its source, while an instance
/// listed in etcd does not acknowledge (a record whose map version never moves: an instance stuck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_waits_for_every_instance_and_rolls_back_without_one() {
    let (topo, _guard) = sharded().await;
    let etcd = tokio::task::spawn_blocking(Etcd::start).await.unwrap();
    let prefix = format!("/mv{}", rand_suffix());
    let config_a = cluster_config(&topo.config(MAP), &etcd, &prefix, "a");
    let a = Proxy::start(&config_a).await;
    let b = Proxy::start(&cluster_config(&topo.config(MAP), &etcd, &prefix, "b")).await;
    let c = a.app().await;
    crate::sharding::each(&c, crate::sharding::SCHEMA).await;
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let part = |k: i64| map.locate("users", &k.to_string()).unwrap().0;
    let first = (1i64..).find(|k| part(*k).shard == 0).unwrap();
    let p = part(first).partition.unwrap();
    c.batch_execute(&format!("INSERT INTO users (id, name, score) VALUES ({first}, 'k', 0)"))
        .await
        .unwrap();
    topo.shard(1)
        .await
        .batch_execute("DROP TABLE IF EXISTS shardwire_moves")
        .await
        .unwrap();

    // An instance that never catches up, as etcd lists it.
    let cluster = a.shared.runtime.load().config.cluster.clone().unwrap();
    let mut store = shardwire::etcd::Store::connect(&cluster.etcd, &cluster.prefix)
        .await
        .unwrap();
    let mut lease = store.lease(Duration::from_secs(10)).await.unwrap();
    let stuck = shardwire::etcd::Instance {
        name: "stuck".into(),
        version: 1,
        heartbeat_ms: shardwire::etcd::now_ms(),
        listen: "127.0.0.1:1".into(),
        pid: 1,
    };
    store.publish(&stuck, lease.id).await.unwrap();
    let lease_id = lease.id;
    let keep = tokio::spawn(async move {
        loop {
            lease.renew().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    let config = shardwire::config::parse(&config_a).unwrap();
    let admin_url = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", a.port());
    let m = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s1".into(),
    };
    let e = shardwire::rebalance::move_partition(&config, &admin_url, &m, false)
        .await
        .expect_err("the cutover waits for every instance");
    let why = format!("{e:#}");
    assert!(why.contains("rolled back") && why.contains("stuck"), "{why}");
    // Rolled back: the partition is not fenced, still on s0, and writes to it work on both.
    for px in [&a, &b] {
        let map = px.shared.runtime.load().config.map.clone();
        let (pl, _) = map.locate("users", &first.to_string()).unwrap();
        assert_eq!(map.shards[pl.shard], "s0");
        px.app()
            .await
            .execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&first])
            .await
            .unwrap();
    }

    // The stuck instance gone: the move completes, and both instances route to the target.
    keep.abort();
    store.revoke(lease_id).await.unwrap();
    shardwire::rebalance::move_partition(&config, &admin_url, &m, false)
        .await
        .unwrap();
    for px in [&a, &b] {
        let map = px.shared.runtime.load().config.map.clone();
        let (pl, _) = map.locate("users", &first.to_string()).unwrap();
        assert_eq!(
            map.shards[pl.shard],
            "s1",
            "{}",
            px.shared.runtime.load().config.map.version
        );
    }
    let score: i32 = topo
        .shard(1)
        .await
        .query_one("SELECT score FROM users WHERE id = $1", &[&first])
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, 2, "both writes made before the move are on the target");
}
