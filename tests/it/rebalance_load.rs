//! The rebalance done-when under load: a fourth, empty shard (no tables yet) is added and a
//! quarter of the partitions of the three-shard cluster moves to it (`rebalance plan
//! --add-shard`, two moves at a time) while clients insert, update and delete across every
//! partition, in the simple and extended protocols, single statements and transactions. Each
//! client keeps a log of what shardwire acknowledged; afterwards every row is on the shard the
//! map says and only there, equal to the log, and no client saw an error. The longest statement
//! (the pause a cutover costs) is printed and bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each};
use crate::shards::sharded;

const WRITERS: i64 = 6;

/// The test map with a fourth shard that has no partitions yet.
fn map4() -> String {
    crate::shards::MAP.replace(r#"shards = ["s0", "s1", "s2"]"#, r#"shards = ["s0", "s1", "s2", "s3"]"#)
}

/// What one writer had acknowledged: user id → score (None: deleted), and its orders' ids by user.
#[derive(Default)]
struct Log {
    users: BTreeMap<i64, Option<i32>>,
    orders: BTreeMap<i64, i64>,
    errors: Vec<String>,
    statements: u64,
    longest: Duration,
}

/// What an acknowledged statement changes in the log.
type Effect = Box<dyn FnOnce(&mut Log)>;

async fn writer(url: String, w: i64, stop: Arc<AtomicBool>) -> Log {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut log = Log::default();
    // The writer's own keys: w, w + WRITERS, ... among the seeded users, then new ones.
    for id in (1..=2000i64).filter(|id| id % WRITERS == w) {
        log.users.insert(id, Some(0));
    }
    let mut next_new = 1_000_000 + w;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut i = 0i64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 200_000 {
        i += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pick = {
            let keys: Vec<&i64> = log.users.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).collect();
            *keys[(rng as usize >> 3) % keys.len()]
        };
        let extended = rng.is_multiple_of(2);
        let started = Instant::now();
        let (r, effect): (Result<(), tokio_postgres::Error>, Effect) = match (rng >> 1) % 5 {
            0 => {
                let id = next_new;
                let r = if extended {
                    c.execute("INSERT INTO users (id, name, score) VALUES ($1, 'new', 0)", &[&id])
                        .await
                        .map(|_| ())
                } else {
                    c.batch_execute(&format!("INSERT INTO users (id, name, score) VALUES ({id}, 'new', 0)"))
                        .await
                };
                next_new += WRITERS;
                (
                    r,
                    Box::new(move |l: &mut Log| {
                        l.users.insert(id, Some(0));
                    }),
                )
            }
            1 | 2 => {
                let r = if extended {
                    c.execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&pick])
                        .await
                        .map(|_| ())
                } else {
                    c.batch_execute(&format!("UPDATE users SET score = score + 1 WHERE id = {pick}"))
                        .await
                };
                (
                    r,
                    Box::new(move |l: &mut Log| {
                        if let Some(Some(s)) = l.users.get_mut(&pick) {
                            *s += 1;
                        }
                    }),
                )
            }
            3 => {
                let order = 10_000_000 * (w + 1) + i;
                let r = if extended {
                    let tx = async {
                        c.batch_execute("BEGIN").await?;
                        c.execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&pick])
                            .await?;
                        c.execute(
                            "INSERT INTO orders (id, user_id, amount, status) VALUES ($1, $2, 1, 'n')",
                            &[&order, &pick],
                        )
                        .await?;
                        c.batch_execute("COMMIT").await
                    };
                    let r = tx.await;
                    if r.is_err() {
                        let _ = c.batch_execute("ROLLBACK").await;
                    }
                    r
                } else {
                    c.batch_execute(&format!(
                        "BEGIN; UPDATE users SET score = score + 1 WHERE id = {pick}; \
                         INSERT INTO orders (id, user_id, amount, status) VALUES ({order}, {pick}, 1, 'n'); COMMIT"
                    ))
                    .await
                };
                (
                    r,
                    Box::new(move |l: &mut Log| {
                        if let Some(Some(s)) = l.users.get_mut(&pick) {
                            *s += 1;
                        }
                        l.orders.insert(order, pick);
                    }),
                )
            }
            _ => {
                // Deletes only users without orders, so the log stays simple.
                let r = if l_has_orders(&log, pick) {
                    Ok(())
                } else if extended {
                    c.execute("DELETE FROM users WHERE id = $1", &[&pick]).await.map(|_| ())
                } else {
                    c.batch_execute(&format!("DELETE FROM users WHERE id = {pick}")).await
                };
                let skip = l_has_orders(&log, pick);
                (
                    r,
                    Box::new(move |l: &mut Log| {
                        if !skip {
                            l.users.insert(pick, None);
                        }
                    }),
                )
            }
        };
        log.longest = log.longest.max(started.elapsed());
        log.statements += 1;
        match r {
            Ok(()) => effect(&mut log),
            Err(e) => {
                log.errors.push(format!("{e:?}"));
                if c.is_closed() || log.errors.len() >= 5 {
                    break;
                }
            }
        }
    }
    log
}

fn l_has_orders(log: &Log, user: i64) -> bool {
    log.orders.values().any(|u| *u == user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarter_of_the_partitions_moves_to_a_new_shard_under_load() {
    let (topo, _guard) = sharded().await;
    let fourth = crate::harness::own_sandbox(0).await;
    let s3_port = fourth.primary.port;
    let config_text = format!(
        "{}[[shards]]\nname = \"s3\"\nprimary = \"postgres://postgres@127.0.0.1:{s3_port}/app\"\n",
        topo.config(&map4())
    );
    let proxy = Proxy::start(&config_text).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    // A new shard has none of the tables: the moves create them.
    let s3 = crate::harness::direct(s3_port).await;
    s3.batch_execute("DROP TABLE users; DROP TABLE orders").await.unwrap();
    let values: Vec<String> = (1..=2000).map(|i| format!("({i}, 'u{i}', 0)")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(proxy.url("app", "app"), w, stop.clone())))
        .collect();
    // A reader over every shard: while partitions move, a row is never seen twice (the copy a
    // shard holds of a partition it does not serve is left out).
    let reader = {
        let (url, stop) = (proxy.url("app", "app"), stop.clone());
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let (mut checks, mut seen_twice) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && checks < 100_000 {
                let r = c
                    .query_one("SELECT count(*) - count(DISTINCT id) FROM users", &[])
                    .await
                    .unwrap();
                let twice: i64 = r.get(0);
                if twice != 0 {
                    seen_twice.push(twice);
                }
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checks, seen_twice)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let config = shardwire::config::parse(&config_text).unwrap();
    let moves = shardwire::rebalance::plan::plan(&config.map, &shardwire::rebalance::plan::Goal::Even).unwrap();
    assert_eq!(moves.len(), 16, "{moves:?}");
    assert!(moves.iter().all(|m| m.to == "s3"));
    let admin = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port());
    let started = Instant::now();
    let opts = shardwire::rebalance::Options::default();
    use futures_util::StreamExt;
    let reports: Vec<_> = futures_util::stream::iter(moves.clone())
        .map(|pm| {
            let (config, admin, opts) = (&config, &admin, &opts);
            async move {
                let m = shardwire::rebalance::Move {
                    group: pm.group,
                    partition: pm.partition,
                    to: pm.to,
                };
                let r = shardwire::rebalance::run(config, admin, &m, shardwire::rebalance::Action::Run, opts).await;
                (m.partition, r.map_err(|e| format!("{e:#}")))
            }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.await.unwrap());
    }
    let (checks, seen_twice) = reader.await.unwrap();
    eprintln!("{checks} reads over every shard during the moves");
    assert!(checks > 20, "too few reads: {checks}");
    assert!(
        seen_twice.is_empty(),
        "rows read twice during the moves: {seen_twice:?} in {checks} reads"
    );
    let failed: Vec<_> = reports.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "moves failed: {failed:?}");
    let holds: Vec<Duration> = reports.iter().map(|(_, r)| r.as_ref().unwrap().fenced_for).collect();
    let rows: u64 = reports.iter().map(|(_, r)| r.as_ref().unwrap().rows).sum();
    let errors: Vec<&String> = logs.iter().flat_map(|l| &l.errors).collect();
    let statements: u64 = logs.iter().map(|l| l.statements).sum();
    let longest = logs.iter().map(|l| l.longest).max().unwrap();
    eprintln!(
        "16 partitions ({rows} rows) moved in {took:?} under load: {statements} statements, {} errors, \
         longest statement {longest:?}, holds max {:?}",
        errors.len(),
        holds.iter().max().unwrap()
    );
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(statements > 500, "too little load: {statements}");
    // The pause is bounded by the hold (2 s) with room for a loaded machine.
    assert!(longest < Duration::from_secs(6), "a statement waited {longest:?}");

    // Every acknowledged write is where the map says, once; nothing else is anywhere.
    let map = proxy.shared.runtime.load().config.map.clone();
    assert_eq!(
        map.groups
            .iter()
            .find(|g| g.name == "users")
            .unwrap()
            .partitions_per_shard(4),
        vec![16, 16, 16, 16],
        "s3 holds a quarter of the partitions"
    );
    let mut shards = Vec::new();
    for port in topo.shard_ports.iter().copied().chain([s3_port]) {
        shards.push(crate::harness::direct(port).await);
    }
    let mut found: BTreeMap<i64, (usize, i32)> = BTreeMap::new();
    let mut orders_found: BTreeMap<i64, (usize, i64)> = BTreeMap::new();
    for (s, client) in shards.iter().enumerate() {
        for r in client.query("SELECT id, score FROM users", &[]).await.unwrap() {
            let prev = found.insert(r.get(0), (s, r.get(1)));
            assert!(prev.is_none(), "user {} on two shards", r.get::<_, i64>(0));
        }
        for r in client.query("SELECT id, user_id FROM orders", &[]).await.unwrap() {
            let prev = orders_found.insert(r.get(0), (s, r.get(1)));
            assert!(prev.is_none(), "order {} on two shards", r.get::<_, i64>(0));
        }
    }
    let shard_of = |id: i64| map.locate("users", &id.to_string()).unwrap().0.shard;
    let mut expected_users = 0;
    for log in &logs {
        for (id, score) in &log.users {
            match score {
                Some(s) => {
                    expected_users += 1;
                    let (at, got) = found.get(id).unwrap_or_else(|| panic!("user {id} lost"));
                    assert_eq!(*got, *s, "user {id}'s acknowledged updates");
                    assert_eq!(*at, shard_of(*id), "user {id} on the wrong shard");
                }
                None => assert!(!found.contains_key(id), "deleted user {id} is back"),
            }
        }
        for (order, user) in &log.orders {
            let (at, u) = orders_found.get(order).unwrap_or_else(|| panic!("order {order} lost"));
            assert_eq!((*at, *u), (shard_of(*user), *user), "order {order}");
        }
    }
    assert_eq!(found.len(), expected_users, "rows nobody acknowledged");
    assert_eq!(orders_found.len(), logs.iter().map(|l| l.orders.len()).sum::<usize>());
    // Nothing of the moves is left behind: no slots, publications or subscriptions.
    for (s, client) in shards.iter().enumerate() {
        let left = crate::rebalance::replication_objects(client).await;
        assert_eq!(left, 0, "replication objects left on shard {s}");
    }
    drop(fourth);
}
