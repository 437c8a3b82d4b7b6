//! `shardwire rebalance`: a partition moved between live shards while clients write to it
//! through shardwire (single statements and transactions): no client error, no acknowledged
//! write lost, the rows on the target and gone from the source, the map switched; a move rolled
//! back leaves the partition where it was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each};
use crate::shards::{MAP, SHARDS, sharded};

/// Slots, publications and subscriptions on a server: a finished move leaves none.
pub async fn replication_objects(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication) \
         + (SELECT count(*) FROM pg_subscription)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A proxy over the test shards with the schema made; the first key on s0 and its partition; the
/// configuration and admin console URL a move takes.
struct Setup {
    proxy: Proxy,
    c: tokio_postgres::Client,
    config: shardwire::config::Config,
    admin: String,
    first: i64,
    p: u32,
}

async fn setup(topo: &crate::shards::Sharded) -> Setup {
    let config_text = topo.config(MAP);
    let proxy = Proxy::start(&config_text).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let first = (1i64..)
        .find(|k| map.locate("users", &k.to_string()).unwrap().0.shard == 0)
        .unwrap();
    let p = map.locate("users", &first.to_string()).unwrap().0.partition.unwrap();
    let admin = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port());
    Setup {
        config: shardwire::config::parse(&config_text).unwrap(),
        proxy,
        c,
        admin,
        first,
        p,
    }
}

async fn count_where(topo: &crate::shards::Sharded, shard: usize, sql: &str) -> i64 {
    topo.shard(shard).await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_while_clients_write_to_it() {
    let (topo, _guard) = sharded().await;
    let config_text = topo.config(MAP);
    let proxy = Proxy::start(&config_text).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let part = |k: i64| map.locate("users", &k.to_string()).unwrap().0;
    // The partition of the first key on s0, and some of its keys.
    let first = (1i64..).find(|k| part(*k).shard == 0).unwrap();
    let p = part(first).partition.unwrap();
    let keys: Vec<i64> = (1..5000).filter(|k| part(*k).partition == Some(p)).take(5).collect();
    let values: Vec<String> = (1..=200).map(|i| format!("({i}, 'u{i}', 0)")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
    for k in &keys {
        if *k > 200 {
            c.batch_execute(&format!("INSERT INTO users (id, name, score) VALUES ({k}, 'k', 0)"))
                .await
                .unwrap();
        }
    }
    let in_p = format!(
        "SELECT count(*) FROM users WHERE {}",
        shardwire::rebalance::sql::in_partition(shardwire::shardmap::KeyType::Int, "id", p, 64)
    );
    let before = count_where(topo, 0, &in_p).await;
    assert!(before >= 5);

    // Writers on the partition's keys through shardwire, each write acknowledged once.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (w, mode) in ["simple", "extended"].into_iter().enumerate() {
        let (stop, acked, keys) = (stop.clone(), acked.clone(), keys.clone());
        let url = proxy.url("app", "app");
        writers.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut errors = Vec::new();
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                let k = keys[(i as usize + w) % keys.len()];
                let order = 1_000_000 * (w as i64 + 1) + i as i64;
                let r = if mode == "simple" {
                    client
                        .batch_execute(&format!(
                            "BEGIN; UPDATE users SET score = score + 1 WHERE id = {k}; \
                             INSERT INTO orders (id, user_id, amount, status) VALUES ({order}, {k}, 1, 'n'); COMMIT"
                        ))
                        .await
                } else {
                    client
                        .execute("UPDATE users SET score = score + 1 WHERE id = $1", &[&k])
                        .await
                        .map(|_| ())
                };
                match r {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.push(format!("{e:?}"));
                        if client.is_closed() || errors.len() >= 5 {
                            break;
                        }
                    }
                }
            }
            errors
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let config = shardwire::config::parse(&config_text).unwrap();
    let admin = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port());
    let m = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s1".into(),
    };
    let report = shardwire::rebalance::move_partition(&config, &admin, &m, false)
        .await
        .unwrap();
    eprintln!(
        "moved: {} rows in the final copy, held {:?}",
        report.rows, report.fenced_for
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in writers {
        errors.extend(w.await.unwrap());
    }
    assert!(errors.is_empty(), "client errors during the move: {errors:?}");
    let acked = acked.load(Ordering::Relaxed) as i64;
    assert!(acked > 20, "too few writes ran: {acked}");
    // Every acknowledged write is on the target; nothing of the partition is left on the source.
    assert_eq!(count_where(topo, 0, &in_p).await, 0);
    assert_eq!(count_where(topo, 1, &in_p).await, before);
    let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let score: i64 = count_where(
        topo,
        1,
        &format!(
            "SELECT coalesce(sum(score), 0)::int8 FROM users WHERE id IN ({})",
            list.join(",")
        ),
    )
    .await;
    let orders: i64 = count_where(topo, 1, "SELECT count(*) FROM orders WHERE id >= 1000000").await;
    assert_eq!(score, acked, "acknowledged updates lost ({orders} orders)");
    let mut elsewhere = 0;
    for s in [0, 2] {
        elsewhere += count_where(topo, s, "SELECT count(*) FROM orders WHERE id >= 1000000").await;
    }
    assert_eq!(elsewhere, 0);
    assert_eq!(
        proxy
            .shared
            .runtime
            .load()
            .config
            .map
            .locate("users", &first.to_string())
            .unwrap()
            .0
            .shard,
        1
    );
    // Reads through shardwire see the moved rows.
    let n: i64 = c
        .query_one("SELECT count(*) FROM users WHERE id = ANY($1)", &[&keys])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, keys.len() as i64);
    let _ = SHARDS;

    // A move rolled back (--abort after it started): the partition stays, the copy goes.
    let back = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s2".into(),
    };
    let t = topo.shard(2).await;
    t.batch_execute(shardwire::rebalance::STATE_DDL).await.unwrap();
    t.execute(
        "INSERT INTO shardwire_moves (group_name, partition, source, target, step) VALUES ('users', $1, 's1', 's2', 'started') \
         ON CONFLICT (group_name, partition) DO UPDATE SET step = 'started', source = 's1', target = 's2'",
        &[&(p as i32)],
    )
    .await
    .unwrap();
    t.batch_execute(&format!(
        "INSERT INTO users (id, name) VALUES ({}, 'stray copy')",
        keys[0]
    ))
    .await
    .unwrap();
    let config = shardwire::config::load(&proxy_config_path(&config_text)).unwrap_or(config);
    shardwire::rebalance::move_partition(&config, &admin, &back, true)
        .await
        .unwrap();
    assert_eq!(count_where(topo, 2, &in_p).await, 0, "the target's copy was deleted");
    assert_eq!(count_where(topo, 1, &in_p).await, before);
}

/// The config text's map, re-read (the moves changed it).
fn proxy_config_path(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("shardwire-rebalance-{}.toml", crate::harness::rand_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A copy that differs from the source (a trigger on the target changes one row as it arrives)
/// stops the move at its check, before anything is deleted from the source, with a message naming
/// the table and the key range of the difference; the move rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_on_the_target_stops_the_move_naming_the_key_range() {
    let (topo, _guard) = sharded().await;
    let Setup {
        proxy,
        c: _,
        config,
        admin,
        first,
        p,
    } = setup(topo).await;
    let in_p = shardwire::rebalance::sql::in_partition(shardwire::shardmap::KeyType::Int, "id", p, 64);
    let source = topo.shard(0).await;
    source
        .batch_execute(&format!(
            "INSERT INTO users (id, name, score) SELECT g, 'u', 0 FROM generate_series(1, 250000) g WHERE {}",
            shardwire::rebalance::sql::in_partition(shardwire::shardmap::KeyType::Int, "g", p, 64)
        ))
        .await
        .unwrap();
    let ids: Vec<i64> = source
        .query(&format!("SELECT id FROM users WHERE {in_p} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.len() > 3000, "{} rows in the partition", ids.len());
    let skewed = ids[ids.len() / 2];
    let target = topo.shard(1).await;
    target
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS shardwire_moves;
             CREATE OR REPLACE FUNCTION sw_skew() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.id = {skewed} THEN NEW.score := NEW.score + 1; END IF; RETURN NEW; END $$;
             CREATE TRIGGER sw_skew BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION sw_skew();
             ALTER TABLE users ENABLE ALWAYS TRIGGER sw_skew;"
        ))
        .await
        .unwrap();
    let m = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s1".into(),
    };
    let e = shardwire::rebalance::move_partition(&config, &admin, &m, false)
        .await
        .expect_err("the check finds the difference");
    target
        .batch_execute("DROP TRIGGER sw_skew ON users; DROP FUNCTION sw_skew()")
        .await
        .unwrap();
    let why = format!("{e:#}");
    eprintln!("{why}");
    let range = why
        .split("keys [")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{why}"));
    let (lo, hi) = range.split_once(", ").unwrap();
    let (lo, hi): (i64, i64) = (lo.parse().unwrap_or(i64::MIN), hi.parse().unwrap_or(i64::MAX));
    assert!(why.contains("users") && lo <= skewed && skewed < hi, "{why}");
    assert!(hi.saturating_sub(lo) < 250_000, "the range is narrowed: {why}");
    // Nothing left the source; the target's copy is gone; the map is unchanged.
    assert_eq!(
        count_where(topo, 0, &format!("SELECT count(*) FROM users WHERE {in_p}")).await,
        ids.len() as i64
    );
    assert_eq!(
        count_where(topo, 1, &format!("SELECT count(*) FROM users WHERE {in_p}")).await,
        0
    );
    assert_eq!(
        proxy
            .shared
            .runtime
            .load()
            .config
            .map
            .locate("users", &first.to_string())
            .unwrap()
            .0
            .shard,
        0
    );
    source
        .batch_execute(&format!("DELETE FROM users WHERE {in_p}"))
        .await
        .unwrap();
}

/// A transaction that began on another shard before a partition moved, and reaches the
/// partition only after the switch, is told to run again (40001): its session planned by the
/// map it began with, and writing to the old shard then would strand the write there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_older_than_a_move_does_not_write_to_the_old_shard() {
    let (topo, _guard) = sharded().await;
    let config_text = topo.config(MAP);
    let proxy = Proxy::start(&config_text).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let at = |k: i64| map.locate("users", &k.to_string()).unwrap().0;
    let on_s0 = (1i64..).find(|k| at(*k).shard == 0).unwrap();
    let on_s1 = (1i64..).find(|k| at(*k).shard == 1).unwrap();
    let p = at(on_s0).partition.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES ({on_s0}, 'a', 0), ({on_s1}, 'b', 0)"
    ))
    .await
    .unwrap();
    let tx = proxy.app().await;
    tx.batch_execute(&format!("BEGIN; UPDATE users SET score = 1 WHERE id = {on_s1}"))
        .await
        .unwrap();
    let config = shardwire::config::parse(&config_text).unwrap();
    let admin = format!("postgres://admin:admin@127.0.0.1:{}/shardwire", proxy.port());
    let m = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s2".into(),
    };
    let keep = shardwire::rebalance::Options {
        keep_way_back: true,
        ..Default::default()
    };
    shardwire::rebalance::run(&config, &admin, &m, shardwire::rebalance::Action::Run, &keep)
        .await
        .unwrap();
    let e = tx
        .batch_execute(&format!("UPDATE users SET score = 1 WHERE id = {on_s0}"))
        .await
        .expect_err("the partition moved while the transaction was open");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
        "{e:?}"
    );
    tx.batch_execute("ROLLBACK").await.unwrap();
    // Nothing was written on the old shard; run again, the transaction goes to the new one.
    assert_eq!(
        count_where(
            topo,
            0,
            &format!("SELECT count(*) FROM users WHERE id = {on_s0} AND score = 1")
        )
        .await,
        0
    );
    for s in [
        "BEGIN".to_string(),
        format!("UPDATE users SET score = 1 WHERE id = {on_s1}"),
        format!("UPDATE users SET score = 1 WHERE id = {on_s0}"),
        "COMMIT".to_string(),
    ] {
        tx.batch_execute(&s).await.unwrap();
    }
    assert_eq!(
        count_where(
            topo,
            2,
            &format!("SELECT count(*) FROM users WHERE id = {on_s0} AND score = 1")
        )
        .await,
        1
    );
    let config = shardwire::config::load(&proxy.config_path).unwrap();
    shardwire::rebalance::run(
        &config,
        &admin,
        &m,
        shardwire::rebalance::Action::Complete,
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        count_where(topo, 0, &format!("SELECT count(*) FROM users WHERE id = {on_s0}")).await,
        0
    );
}

/// Without logical replication for a table (here: its replica identity does not include the
/// shard key), the move falls back to copying under the fence, and still completes with every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_without_logical_replication_copies_under_the_fence() {
    let (topo, _guard) = sharded().await;
    let Setup {
        proxy: _proxy,
        c,
        config,
        admin,
        first,
        p,
    } = setup(topo).await;
    let in_p = format!(
        "SELECT count(*) FROM users WHERE {}",
        shardwire::rebalance::sql::in_partition(shardwire::shardmap::KeyType::Int, "id", p, 64)
    );
    let values: Vec<String> = (1..=500).map(|i| format!("({i}, 'u{i}', 0)")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
    let before = count_where(topo, 0, &in_p).await;
    topo.shard(0)
        .await
        .batch_execute("ALTER TABLE users REPLICA IDENTITY NOTHING")
        .await
        .unwrap();
    let m = shardwire::rebalance::Move {
        group: "users".into(),
        partition: p,
        to: "s1".into(),
    };
    let r = shardwire::rebalance::move_partition(&config, &admin, &m, false).await;
    topo.shard(0)
        .await
        .batch_execute("ALTER TABLE users REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    r.unwrap();
    let mode: String = topo
        .shard(1)
        .await
        .query_one(
            "SELECT mode FROM shardwire_moves WHERE group_name = 'users' AND partition = $1",
            &[&(p as i32)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "copy");
    assert_eq!(count_where(topo, 0, &in_p).await, 0);
    assert_eq!(count_where(topo, 1, &in_p).await, before);
    assert_eq!(replication_objects(&topo.shard(0).await).await, 0);
    c.execute("UPDATE users SET score = 7 WHERE id = $1", &[&first])
        .await
        .unwrap();
    assert_eq!(
        count_where(
            topo,
            1,
            &format!("SELECT count(*) FROM users WHERE id = {first} AND score = 7")
        )
        .await,
        1
    );
}
