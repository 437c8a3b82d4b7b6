//! Transactions across shards through real clients: transaction blocks in the simple and the
//! extended protocol, savepoints on every shard joined, an error anywhere failing the whole
//! transaction, pipelines whose implicit transaction spans shards (one Sync: all or nothing),
//! and pgbench moving money between accounts on different shards with the total kept.

use crate::bad_input::{extended, logged_in, message};
use crate::harness::Proxy;
use crate::sharding::{SCHEMA, count_on_shards, each, keys_on};
use crate::shards::{MAP, SHARDS, sharded};

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

pub(crate) async fn names(topo: &crate::shards::Sharded, keys: &[i64]) -> Vec<(i64, String)> {
    let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let mut out = Vec::new();
    for s in 0..SHARDS {
        for r in topo
            .shard(s)
            .await
            .query(
                &format!("SELECT id, name FROM users WHERE id IN ({})", list.join(",")),
                &[],
            )
            .await
            .unwrap()
        {
            out.push((r.get(0), r.get(1)));
        }
    }
    out.sort();
    out
}

pub(crate) fn sorted(mut v: Vec<(i64, &str)>) -> Vec<(i64, String)> {
    v.sort();
    v.into_iter().map(|(k, n)| (k, n.to_string())).collect()
}

/// A fresh `users` table with accounts 1..=n holding 1000 each (for transfers).
async fn accounts(c: &tokio_postgres::Client, n: i64) {
    each(
        c,
        "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int)",
    )
    .await;
    let values: Vec<String> = (1..=n).map(|i| format!("({i}, 'acct', 1000)")).collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
}

/// The sum over the shards of `sql` (one int8), each shard checked to hold no prepared
/// transaction.
pub(crate) async fn over_shards(topo: &crate::shards::Sharded, sql: &str) -> i64 {
    let mut total = 0;
    for s in 0..SHARDS {
        let d = topo.shard(s).await;
        total += d.query_one(sql, &[]).await.unwrap().get::<_, i64>(0);
        let prepared: i64 = d
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(prepared, 0, "shard {s} kept a prepared transaction");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_block_spans_shards_and_commits_or_rolls_back_as_one() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let (a, b, d) = (keys_on(0, 1, 1)[0], keys_on(1, 1, 1)[0], keys_on(2, 1, 1)[0]);
    // psql's way: every statement a simple Query. Two shards written: two-phase commit.
    c.batch_execute(&format!(
        "INSERT INTO users (id, name) VALUES ({a}, 'a'), ({b}, 'b'), ({d}, 'd')"
    ))
    .await
    .unwrap();
    for s in [
        "BEGIN".to_string(),
        format!("UPDATE users SET name = 'a1' WHERE id = {a}"),
        format!("UPDATE users SET name = 'b1' WHERE id = {b}"),
        // A read on a third shard, and back to the first.
        format!("SELECT name FROM users WHERE id = {d}"),
        format!("UPDATE users SET name = name || '!' WHERE id = {a}"),
        "SELECT 1".to_string(),
        "COMMIT".to_string(),
    ] {
        c.batch_execute(&s).await.unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "a1!"), (b, "b1"), (d, "d")])
    );
    // Inside the transaction the session sees its own uncommitted writes on each shard.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET name = 'a2' WHERE id = {a}"))
        .await
        .unwrap();
    c.batch_execute(&format!("UPDATE users SET name = 'b2' WHERE id = {b}"))
        .await
        .unwrap();
    let seen: String = c
        .query_one("SELECT name FROM users WHERE id = $1", &[&a])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, "a2");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        names(topo, &[a, b]).await,
        sorted(vec![(a, "a1!"), (b, "b1")]),
        "ROLLBACK undoes every shard"
    );
    // Statements on several shards inside the transaction run on its connections: a scatter
    // read sees the transaction's own writes, a write on every shard commits or rolls back
    // with the rest. `ROLLBACK;` as psql sends it.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 7 WHERE id = {a}"))
        .await
        .unwrap();
    c.batch_execute("UPDATE users SET score = coalesce(score, 0) + 1")
        .await
        .unwrap();
    let sum: i64 = c
        .query_one("SELECT sum(score)::bigint FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 8 + 1 + 1);
    c.batch_execute("ROLLBACK;").await.unwrap();
    let sum: Option<i64> = c
        .query_one("SELECT sum(score)::bigint FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, None, "the rolled-back transaction left scores behind");
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("UPDATE users SET score = 1").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 2 WHERE id = {b}"))
        .await
        .unwrap();
    c.batch_execute("COMMIT;").await.unwrap();
    let sum: i64 = c
        .query_one("SELECT sum(score)::bigint FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 4);
    // An error on one shard fails the whole transaction, as on one database: the statements
    // that follow get 25P02 and COMMIT rolls back everywhere.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET name = 'a3' WHERE id = {a}"))
        .await
        .unwrap();
    let e = c
        .batch_execute(&format!("INSERT INTO users (id, name) VALUES ({b}, 'dup')"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("23505"), "{e:?}");
    let e = c
        .batch_execute(&format!("UPDATE users SET name = 'x' WHERE id = {d}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("25P02"), "{e:?}");
    let tag = c.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(tag.last(), Some(tokio_postgres::SimpleQueryMessage::CommandComplete(_))),
        "{tag:?}"
    );
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "a1!"), (b, "b1"), (d, "d")]),
        "the failed transaction left nothing"
    );
    // The extended protocol (tokio-postgres's transaction: BEGIN, prepared statements, COMMIT).
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    for (k, n) in [(a, "ea"), (b, "eb"), (d, "ed")] {
        tx.execute("UPDATE users SET name = $2 WHERE id = $1", &[&k, &n])
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "ea"), (b, "eb"), (d, "ed")])
    );
    // BEGIN and COMMIT as prepared statements too (JDBC's way).
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute("UPDATE users SET name = 'ja' WHERE id = $1", &[&a])
        .await
        .unwrap();
    c.execute("UPDATE users SET name = 'jb' WHERE id = $1", &[&b])
        .await
        .unwrap();
    c.execute("ROLLBACK", &[]).await.unwrap();
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute("UPDATE users SET name = 'jb' WHERE id = $1", &[&b])
        .await
        .unwrap();
    c.execute("UPDATE users SET name = 'jd' WHERE id = $1", &[&d])
        .await
        .unwrap();
    c.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "ea"), (b, "jb"), (d, "jd")])
    );
    // No transaction is left prepared on any shard.
    over_shards(topo, "SELECT 0::int8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_apply_on_every_shard_joined() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let a = keys_on(0, 2, 1);
    let b = keys_on(1, 2, 1);
    let d = keys_on(2, 1, 1)[0];
    for s in [
        // A comment after BEGIN must not swallow what joined shards add to it.
        "BEGIN -- from the application".to_string(),
        "SAVEPOINT first".to_string(),
        format!("INSERT INTO users (id, name) VALUES ({}, 'kept')", a[0]),
        "SAVEPOINT second".to_string(),
        format!("INSERT INTO users (id, name) VALUES ({}, 'undone')", b[0]),
        format!("INSERT INTO users (id, name) VALUES ({}, 'undone')", a[1]),
        // Shard 2 joins after both savepoints: they are created there too.
        format!("INSERT INTO users (id, name) VALUES ({d}, 'undone')"),
        "ROLLBACK TO SAVEPOINT second".to_string(),
        format!("INSERT INTO users (id, name) VALUES ({}, 'kept')", b[1]),
        "RELEASE SAVEPOINT first".to_string(),
        "COMMIT".to_string(),
    ] {
        c.batch_execute(&s).await.unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
    let mut keys = a.clone();
    keys.extend(&b);
    keys.push(d);
    let mut want = vec![(a[0], "kept".to_string()), (b[1], "kept".to_string())];
    want.sort();
    assert_eq!(names(topo, &keys).await, want);
    // ROLLBACK TO after an error recovers the transaction on every shard.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET name = 'x' WHERE id = {}", a[0]))
        .await
        .unwrap();
    c.batch_execute("SAVEPOINT s").await.unwrap();
    let e = c
        .batch_execute(&format!("INSERT INTO users (id, name) VALUES ({}, 'dup')", b[1]))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("23505"), "{e:?}");
    // A statement for another shard while the transaction is failed: 25P02, and ROLLBACK TO
    // still recovers it, as on one database.
    let e = c
        .batch_execute(&format!("UPDATE users SET name = 'z' WHERE id = {d}"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("25P02"), "{e:?}");
    c.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET name = 'y' WHERE id = {}", b[1]))
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    want = vec![(a[0], "x".to_string()), (b[1], "y".to_string())];
    want.sort();
    assert_eq!(names(topo, &keys).await, want);
    // A SET made on one shard follows the transaction back to a shard it joined before.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 1 WHERE id = {}", a[0]))
        .await
        .unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 1 WHERE id = {}", b[1]))
        .await
        .unwrap();
    c.batch_execute("SET application_name = 'in_tx'").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 2 WHERE id = {}", a[0]))
        .await
        .unwrap();
    let shown = c.simple_query("SHOW application_name").await.unwrap();
    let shown = shown
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    assert_eq!(shown, "in_tx");
    c.batch_execute("COMMIT").await.unwrap();
}

/// One pipeline, one Sync (psycopg's executemany, JDBC batches): rows for several shards commit
/// together; a failing row in the middle leaves nothing on any shard.
#[tokio::test]
async fn a_pipeline_over_shards_commits_all_or_nothing() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    each(&proxy.app().await, SCHEMA).await;
    let keys: Vec<i64> = (0..SHARDS).flat_map(|s| keys_on(s, 3, 1)).collect();
    let mut s = logged_in(&proxy).await;
    let insert = |k: i64| extended(&format!("INSERT INTO users (id, name) VALUES ({k}, 'p')"));
    // Rows of every shard, interleaved, then a failing row, then more rows.
    let mut batch = bytes::BytesMut::new();
    for i in 0..3 {
        for sh in 0..SHARDS {
            batch.extend_from_slice(&insert(keys[sh * 3 + i]));
        }
        if i == 1 {
            batch.extend_from_slice(&extended("INSERT INTO users (id, name) VALUES (1, NULL)"));
        }
    }
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("23502"), "{tags:?}");
    assert_eq!(tags.iter().filter(|t| **t == b'E').count(), 1, "{tags:?}");
    assert_eq!(count_on_shards(topo, &keys).await, 0, "the failed pipeline left rows");
    // The same without the failing row: every row, on every shard.
    let mut batch = bytes::BytesMut::new();
    for i in 0..3 {
        for sh in 0..SHARDS {
            batch.extend_from_slice(&insert(keys[sh * 3 + i]));
        }
    }
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code, None, "{tags:?}");
    assert_eq!(tags.iter().filter(|t| **t == b'C').count(), 9, "{tags:?}");
    assert_eq!(count_on_shards(topo, &keys).await, 9);
    // A row for one shard, then a statement on every shard, then a failing one: nothing stays.
    let mut batch = insert(keys_on(0, 1, 500)[0]);
    batch.extend_from_slice(&extended("UPDATE users SET name = 'q'"));
    batch.extend_from_slice(&extended("INSERT INTO users (id, name) VALUES (1, NULL)"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code.as_deref(), Some("23502"), "{tags:?}");
    let renamed: i64 = {
        let mut n = 0;
        for sh in 0..SHARDS {
            n += topo
                .shard(sh)
                .await
                .query_one("SELECT count(*) FROM users WHERE name = 'q'", &[])
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        n
    };
    assert_eq!(renamed, 0, "the failed pipeline's UPDATE stayed");
    assert_eq!(count_on_shards(topo, &keys_on(0, 1, 500)).await, 0);
    // The session is idle afterwards (ReadyForQuery 'I') and goes on.
    let mut batch = extended("SELECT count(*) FROM users");
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!(code, None, "{tags:?}");
}

/// pgbench moving money between accounts on different shards (lower id first, so two transfers
/// never wait on each other across shards): the total never changes, nothing stays prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_transfers_across_shards_keep_the_total() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    accounts(&c, 60).await;
    let script = std::env::temp_dir().join(format!("transfer-{}.sql", crate::harness::rand_suffix()));
    std::fs::write(
        &script,
        "\\set a random(1, 60)\n\\set b random(1, 60)\n\\set lo least(:a, :b)\n\\set hi greatest(:a, :b)\n\\set amount random(-5, 5)\n\
         BEGIN;\nUPDATE users SET score = score - :amount WHERE id = :lo;\nUPDATE users SET score = score + :amount WHERE id = :hi;\nCOMMIT;\n",
    )
    .unwrap();
    let url = proxy.url("app", "app");
    for mode in ["simple", "extended", "prepared"] {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            tokio::process::Command::new(shardwire::sandbox::pg_bin_dir().unwrap().join("pgbench"))
                .args(["-n", "-c", "4", "-j", "2", "-t", "100", "-M", mode, "-f"])
                .arg(&script)
                .arg(&url)
                .output(),
        )
        .await
        .expect("pgbench finishes")
        .expect("pgbench runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench -M {mode}: {text}");
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        assert!(text.contains("actually processed: 400/400"), "{text}");
    }
    let total = over_shards(topo, "SELECT coalesce(sum(score), 0)::int8 FROM users").await;
    let rows = over_shards(topo, "SELECT count(*) FROM users").await;
    assert_eq!((rows, total), (60, 60_000), "money was created or lost");
    std::fs::remove_file(&script).ok();
}

/// Transfers between accounts on three shards while one shard is stopped and started again
/// (transactions cut between PREPARE and COMMIT PREPARED, or before the decision): after
/// recovery every transfer is committed everywhere or nowhere, so the total is unchanged and
/// nothing stays prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_keep_the_total_when_a_shard_stops_mid_commit() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    accounts(&c, 30).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3u64 {
        let stop = stop.clone();
        let url = proxy.url("app", "app");
        workers.push(tokio::spawn(async move {
            let mut done = 0u32;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            for i in 0..2000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                tokio::spawn(conn);
                for j in 0..20u64 {
                    let (x, y) = ((i * 7 + j * 3 + w) % 30 + 1, (i * 11 + j * 5 + w * 2) % 30 + 1);
                    let (lo, hi) = (x.min(y) as i64, x.max(y) as i64);
                    let sql = format!(
                        "BEGIN; UPDATE users SET score = score - 3 WHERE id = {lo}; UPDATE users SET score = score + 3 WHERE id = {hi}; COMMIT"
                    );
                    // One statement per message, as interactive psql sends them, or (one worker)
                    // the whole string in one message, as `psql -c` sends it.
                    let mut ok = true;
                    let parts: Vec<&str> = if w == 0 { vec![&sql] } else { sql.split("; ").collect() };
                    for s in parts {
                        if client.batch_execute(s).await.is_err() {
                            ok = false;
                            let _ = client.batch_execute("ROLLBACK").await;
                            break;
                        }
                    }
                    done += ok as u32;
                    if client.is_closed() {
                        break;
                    }
                }
            }
            done
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for shard in [1, 0] {
        let t = tokio::task::spawn_blocking(move || crate::shards::sharded_blocking().stop_shard(shard));
        t.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        tokio::task::spawn_blocking(move || crate::shards::sharded_blocking().start_shard(shard))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut committed = 0;
    for w in workers {
        committed += w.await.unwrap();
    }
    assert!(committed > 50, "too few transfers ran: {committed}");
    // Recovery as the proxy runs it (with no grace period: the load has stopped).
    let clusters = proxy.shared.runtime.load().clusters.clone();
    let recovered =
        shardwire::backend::twophase::recover(&clusters, std::time::Duration::ZERO, std::time::Duration::from_secs(5))
            .await;
    eprintln!("{committed} transfers committed; recovery: {recovered:?}");
    let total = over_shards(topo, "SELECT coalesce(sum(score), 0)::int8 FROM users").await;
    assert_eq!(total, 30_000, "a transfer was half applied ({committed} committed)");
}

/// With a shard map and replicas, a transaction's BEGIN waits for its first statement: a read
/// first must still open the transaction on the primary (the writes that follow run there), and
/// only a READ ONLY transaction reads on a replica.
#[tokio::test]
async fn a_transaction_that_reads_first_runs_on_the_primary() {
    let topo = crate::harness::shared();
    let map = std::env::temp_dir().join(format!("shardwire-map-{}.toml", crate::harness::rand_suffix()));
    std::fs::write(
        &map,
        r#"
version = 1
shards = ["main"]
default_shard = "main"
[groups.accounts]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 4 }
assignment = { main = "0-3" }
[tables.tx_first_read]
group = "accounts"
key = "id"
"#,
    )
    .unwrap();
    let config = format!("{}\n[sharding]\nmap = \"{}\"\n", topo.config("", ""), map.display());
    let proxy = Proxy::start(&config).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    c.batch_execute("DROP TABLE IF EXISTS tx_first_read").await.unwrap();
    c.batch_execute("CREATE TABLE tx_first_read (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO tx_first_read (id, v) VALUES (1, 0)")
        .await
        .unwrap();
    crate::harness::replica_caught_up(topo).await;
    for s in [
        "BEGIN",
        "SELECT v FROM tx_first_read WHERE id = 1",
        "UPDATE tx_first_read SET v = v + 1 WHERE id = 1",
        "COMMIT",
    ] {
        c.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
    // (A session without read-your-writes: this one just wrote, so its reads may wait for the
    // replica or go to the primary.)
    let r = proxy.connect("noryw", "noryw").await.unwrap();
    r.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(
        crate::harness::on_replica_simple(&r).await,
        "a READ ONLY transaction reads on a replica"
    );
    r.batch_execute("COMMIT").await.unwrap();
    let v: i32 = c
        .query_one("SELECT v FROM tx_first_read WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
    c.batch_execute("DROP TABLE tx_first_read").await.unwrap();
    std::fs::remove_file(&map).ok();
}

/// The connection holding a transaction's work dies while the transaction is idle: the client's
/// next statement must not run on its own (autocommitted) elsewhere; the transaction is failed
/// until the client ends it, and nothing of it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_dies_stays_failed() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let (a, b) = (keys_on(0, 1, 1)[0], keys_on(1, 1, 1)[0]);
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, score) VALUES ({a}, 'a', 0), ({b}, 'b', 0)"
    ))
    .await
    .unwrap();
    for first_shard_in_use in [true, false] {
        // The client whose transaction connection was in use is closed (FATAL, as one server
        // closes it): each round has its own.
        let c = proxy.app().await;
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute(&format!("UPDATE users SET score = score - 1 WHERE id = {a}"))
            .await
            .unwrap();
        if !first_shard_in_use {
            // The dying connection is parked while the transaction works on another shard.
            c.batch_execute(&format!("UPDATE users SET score = score + 1 WHERE id = {b}"))
                .await
                .unwrap();
        }
        let killed: i64 = topo
            .shard(0)
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE state = 'idle in transaction' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let next = c
            .batch_execute(&format!("UPDATE users SET score = score + 1 WHERE id = {b}"))
            .await;
        let commit = c.batch_execute("COMMIT").await;
        assert!(
            next.is_err() || commit.is_err() || c.batch_execute("SELECT 1").await.is_err(),
            "the transaction went on as if nothing happened"
        );
        let _ = c.batch_execute("ROLLBACK").await;
        let scores: Vec<i32> = {
            let mut v = Vec::new();
            for (s, k) in [(0, a), (1, b)] {
                v.push(
                    topo.shard(s)
                        .await
                        .query_one("SELECT score FROM users WHERE id = $1", &[&k])
                        .await
                        .unwrap()
                        .get(0),
                );
            }
            v
        };
        assert_eq!(
            scores,
            vec![0, 0],
            "half of the transaction stayed (first shard in use: {first_shard_in_use})"
        );
    }
}
