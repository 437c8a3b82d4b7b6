//! Fifty configuration and shard-map changes, valid and invalid alternately, made through the
//! admin console, file edits picked up by the watch, and RELOAD, while clients read and write
//! over three shards in both protocols and in transactions: no client sees an error, no
//! connection shardwire had open to a shard is dropped, each valid change is served at once and
//! each invalid one is refused with the running configuration left serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Proxy;
use crate::shards::{MAP, sharded};

/// shardwire's connections to a shard opened since `since` (the shard's clock).
pub async fn proxy_pids(c: &tokio_postgres::Client, since: &str) -> Vec<i32> {
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
         AND application_name <> 'shardwire-monitor' AND backend_start >= $1::text::timestamptz ORDER BY pid",
        &[&since],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_changes_under_load_cost_clients_nothing() {
    let (topo, _guard) = sharded().await;
    let config = topo
        .config(MAP)
        .replacen("[server]\n", "[server]\nwatch_files = \"100ms\"\n", 1);
    let map_path = crate::shards::map_path(&config);
    let direct: Vec<tokio_postgres::Client> = {
        let mut v = Vec::new();
        for p in &topo.shard_ports {
            v.push(crate::harness::direct(*p).await);
        }
        v
    };
    let since: String = direct[0].query_one("SELECT now()::text", &[]).await.unwrap().get(0);
    let proxy = Proxy::start(&config).await;
    let setup = proxy.app().await;
    Load::create_users(&setup).await;

    // The load: single statements in both protocols, transactions over two shards, scatters.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy.app().await);
    }
    let load = Load::start(clients);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut before = Vec::new();
    for d in &direct {
        before.push(proxy_pids(d, &since).await);
    }

    assert!(
        before.iter().all(|b| !b.is_empty()),
        "shardwire holds connections to every shard: {before:?}"
    );
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let version = || proxy.shared.runtime.load().config.map.version;
    let config_path = proxy.config_path.clone();
    let mut map_text = MAP.to_string();
    let (mut valid, mut refused) = (0, 0);
    for i in 0..50u32 {
        let v = version();
        if i % 2 == 0 {
            // Valid, by turns: a partition's state from the console, the map file (watched), a
            // routing setting through RELOAD.
            match i / 2 % 3 {
                0 => {
                    let state = if i / 6 % 2 == 0 { "moving" } else { "serving" };
                    admin
                        .simple_query(&format!("SET PARTITION users 5 STATE {state} VERSION {v}"))
                        .await
                        .unwrap();
                    assert_eq!(version(), v + 1, "change {i} served when the command returns");
                    map_text = std::fs::read_to_string(&map_path).unwrap();
                }
                1 => {
                    map_text = map_text.replace(&format!("version = {v}\n"), &format!("version = {}\n", v + 1));
                    std::fs::write(&map_path, &map_text).unwrap();
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while version() != v + 1 {
                        assert!(
                            Instant::now() < deadline,
                            "change {i}: the watched file served within 1 s"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                _ => {
                    let lag = format!("max_replica_lag = \"{}s\"", i + 1);
                    let text = config.replacen("[routing]\n", &format!("[routing]\n{lag}\n"), 1);
                    std::fs::write(&config_path, text).unwrap();
                    admin.simple_query("RELOAD").await.unwrap();
                    assert_eq!(
                        proxy.shared.runtime.load().config.routing.max_lag,
                        Duration::from_secs(u64::from(i) + 1)
                    );
                }
            }
            valid += 1;
        } else {
            // Invalid, by turns: a typo, a stale base version, a move without the data, a broken
            // configuration file.
            let e = match i / 2 % 4 {
                0 => admin
                    .simple_query("SET PARTITON users 5 STATE moving")
                    .await
                    .unwrap_err(),
                1 => admin
                    .simple_query(&format!("SET PARTITION users 5 STATE serving VERSION {}", v - 1))
                    .await
                    .unwrap_err(),
                2 => admin.simple_query("SET PARTITION users 5 TO s2").await.unwrap_err(),
                _ => {
                    let good = std::fs::read_to_string(&config_path).unwrap();
                    std::fs::write(&config_path, good.replace("[pool]", "[pool\n")).unwrap();
                    let e = admin.simple_query("RELOAD").await.unwrap_err();
                    std::fs::write(&config_path, good).unwrap();
                    e
                }
            };
            let m = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
            assert!(!m.is_empty(), "change {i} refused with a reason: {e:?}");
            assert_eq!(version(), v, "change {i}: the running map stays");
            refused += 1;
        }
    }
    let (statements, errors) = load.stop().await;
    eprintln!("{valid} changes applied, {refused} refused, {statements} client statements");
    assert_eq!(errors, 0, "client errors");
    assert!(statements > 200, "the load ran throughout ({statements} statements)");
    for (s, d) in direct.iter().enumerate() {
        let after = proxy_pids(d, &since).await;
        let dropped: Vec<&i32> = before[s].iter().filter(|p| !after.contains(p)).collect();
        assert!(
            dropped.is_empty(),
            "s{s}: connections dropped: {dropped:?} (before {:?}, after {after:?})",
            before[s]
        );
    }
    // The table is left as the other tests expect to find it: dropped (once no move is said to
    // run: DDL on the group waits for that).
    admin.simple_query("SET PARTITION users 5 STATE serving").await.unwrap();
    setup.batch_execute("DROP TABLE users").await.unwrap();
}

/// Four clients over `users` (ids 1-60): a simple-protocol UPDATE, an extended-protocol SELECT,
/// a transaction over two shards and a scatter count, each in a loop until stopped (at most 120 s).
pub struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// The table the load works on: `users` with ids 1-60.
    pub async fn create_users(c: &tokio_postgres::Client) {
        c.batch_execute("DROP TABLE IF EXISTS users").await.unwrap();
        c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int)")
            .await
            .unwrap();
        for id in 1..=60i64 {
            c.execute("INSERT INTO users VALUES ($1, 'u', 'x', 0)", &[&id])
                .await
                .unwrap();
        }
    }

    pub fn start(clients: Vec<tokio_postgres::Client>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (errors, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for (kind, c) in clients.into_iter().enumerate() {
            let (stop, errors, done) = (stop.clone(), errors.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut k = kind as i64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    k = k % 60 + 1;
                    let r = match kind % 4 {
                        0 => c
                            .simple_query(&format!("UPDATE users SET score = score + 1 WHERE id = {k}"))
                            .await
                            .map(|_| ()),
                        1 => c
                            .query_one("SELECT name FROM users WHERE id = $1", &[&k])
                            .await
                            .map(|_| ()),
                        2 => {
                            let other = (k + 29) % 60 + 1;
                            async {
                                c.batch_execute("BEGIN").await?;
                                c.execute("UPDATE users SET score = score - 1 WHERE id = $1", &[&k])
                                    .await?;
                                c.execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&other])
                                    .await?;
                                c.batch_execute("COMMIT").await
                            }
                            .await
                        }
                        _ => c.query_one("SELECT count(*) FROM users", &[]).await.map(|_| ()),
                    };
                    match r {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("client {kind}: {e:?}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        Load {
            stop,
            errors,
            done,
            tasks,
        }
    }

    /// Stops the clients: the statements they completed, and the errors they saw.
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.done.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }
}
