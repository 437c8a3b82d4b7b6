//! Sharding through real clients: DDL on every shard, rows placed by key (checked on the shards
//! themselves against PostgreSQL's own hash partitioning), single-shard routing, scatter reads,
//! multi-shard writes with two-phase commit, and the refusals.

use crate::harness::Proxy;
use crate::shards::{MAP, SHARDS, sharded};

pub(crate) const SCHEMA: &str = "
DROP TABLE IF EXISTS users, orders, countries, events;
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, country text, score int);
CREATE TABLE orders (id bigint NOT NULL, user_id bigint NOT NULL, amount numeric(10,2) NOT NULL, status text NOT NULL, PRIMARY KEY (user_id, id));
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL);
";

/// Runs `sql` statement by statement through `c` (DDL is broadcast one statement at a time).
pub(crate) async fn each(c: &tokio_postgres::Client, sql: &str) {
    for s in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        c.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_live_on_the_shard_their_key_maps_to() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let values: Vec<String> = (1..=300)
        .map(|i| format!("({i}, 'u{i}', 'c{}', {})", i % 7, i % 13))
        .collect();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name, country, score) VALUES {}",
        values.join(",")
    ))
    .await
    .unwrap();
    let n: i64 = c.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(n, 300);
    // On each shard, every row's partition (computed by PostgreSQL's own hash partitioning with the
    // same modulus) belongs to that shard.
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let mut total = 0;
    for s in 0..SHARDS {
        let d = topo.shard(s).await;
        d.batch_execute(
            "DROP TABLE IF EXISTS placement; CREATE TEMP TABLE placement (k bigint) PARTITION BY HASH (k);",
        )
        .await
        .unwrap();
        for r in 0..64 {
            d.batch_execute(&format!(
                "CREATE TEMP TABLE placement_{r} PARTITION OF placement FOR VALUES WITH (MODULUS 64, REMAINDER {r})"
            ))
            .await
            .unwrap();
        }
        d.batch_execute("INSERT INTO placement SELECT id FROM users")
            .await
            .unwrap();
        let rows = d
            .query(
                "SELECT k, substring(tableoid::regclass::text from 'placement_(\\d+)')::int FROM placement",
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            let (k, partition): (i64, i32) = (row.get(0), row.get(1));
            let (p, _) = map.locate("users", &k.to_string()).unwrap();
            assert_eq!(
                p.partition,
                Some(partition as u32),
                "key {k}: PostgreSQL and shardwire disagree"
            );
            assert_eq!(p.shard, s, "key {k} is on shard {s} but maps to {}", p.shard);
            total += 1;
        }
    }
    assert_eq!(total, 300, "every row exactly once across the shards");
    // The admin console explains routes and counts them.
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let text = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (p, _) = map.locate("users", "7").unwrap();
    let route = text(
        admin
            .simple_query("SHOW ROUTE FOR SELECT * FROM users WHERE id = 7")
            .await
            .unwrap(),
    );
    assert_eq!(route, format!("single-shard s{}", p.shard));
    let route = text(
        admin
            .simple_query("SHOW ROUTE FOR SELECT count(*) FROM users")
            .await
            .unwrap(),
    );
    assert!(route.starts_with("scatter s0,s1,s2"), "{route}");
    let m = text(admin.simple_query("SHOW MAP").await.unwrap());
    assert!(m.contains("users hash/64 s0=21 s1=21 s2=22 orders,users"), "{m}");
    let routes = text(admin.simple_query("SHOW ROUTES").await.unwrap());
    assert!(
        routes.contains("scatter 1") && routes.contains("insert-split 1"),
        "{routes}"
    );
}

/// Keys of `users` on each shard, found with the map.
pub(crate) fn keys_on(shard: usize, n: usize, from: i64) -> Vec<i64> {
    let map = shardwire::shardmap::parse(MAP).unwrap();
    (from..)
        .filter(|k| map.locate("users", &k.to_string()).unwrap().0.shard == shard)
        .take(n)
        .collect()
}

pub(crate) async fn count_on_shards(topo: &crate::shards::Sharded, keys: &[i64]) -> i64 {
    let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let mut n = 0;
    for s in 0..SHARDS {
        let d = topo.shard(s).await;
        let c: i64 = d
            .query_one(
                &format!("SELECT count(*) FROM users WHERE id IN ({})", list.join(",")),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n += c;
    }
    n
}

/// One pipeline (one Sync) that a proxy refusal stops part-way, in autocommit: the statement
/// already run on one shard is rolled back with the rest, as PostgreSQL rolls back a pipeline's
/// implicit transaction when any part of it fails (psycopg's executemany, JDBC batches).
#[tokio::test]
async fn a_pipeline_refused_part_way_leaves_nothing_committed() {
    use crate::bad_input::{extended, logged_in, message};
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    each(&proxy.app().await, SCHEMA).await;
    let (a, b) = (keys_on(0, 1, 1)[0], keys_on(1, 1, 1)[0]);
    let mut s = logged_in(&proxy).await;
    let pipelines = [
        // Rows for two shards (one transaction across them), then a statement shardwire refuses.
        vec![
            format!("INSERT INTO users (id, name) VALUES ({a}, 'p')"),
            format!("INSERT INTO users (id, name) VALUES ({b}, 'p')"),
            "SELECT * FROM users JOIN events ON users.id = events.id FOR UPDATE".to_owned(),
        ],
        // A row for one shard, then a refused statement.
        vec![
            format!("INSERT INTO users (id, name) VALUES ({a}, 'p')"),
            "SELECT * FROM users JOIN events ON users.id = events.id FOR UPDATE".to_owned(),
        ],
    ];
    for statements in pipelines {
        let mut batch = bytes::BytesMut::new();
        for sql in &statements {
            batch.extend_from_slice(&extended(sql));
        }
        batch.extend_from_slice(&message(b'S', b""));
        s.send(&batch).await;
        let (tags, code) = s.read_until(b"Z").await;
        assert_eq!(code.as_deref(), Some("0A000"), "{statements:?}: {tags:?}");
        assert_eq!(
            count_on_shards(topo, &[a, b]).await,
            0,
            "{statements:?} left rows behind"
        );
    }
    // The session goes on, and a pipeline on one shard still commits.
    let mut batch = extended(&format!("INSERT INTO users (id, name) VALUES ({a}, 'p')"));
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (tags, code) = s.read_until(b"Z").await;
    assert_eq!((tags, code), (vec![b'1', b'2', b'C', b'Z'], None));
    assert_eq!(count_on_shards(topo, &[a, b]).await, 1);
    // Rows for two shards, then a join across groups whose tables are read first: it runs in
    // the pipeline's transaction, and everything commits at the Sync.
    let mut batch = bytes::BytesMut::new();
    for sql in [
        format!("INSERT INTO users (id, name) VALUES ({b}, 'p')"),
        "SELECT count(*) FROM users JOIN events ON users.id = events.id".to_owned(),
    ] {
        batch.extend_from_slice(&extended(&sql));
    }
    batch.extend_from_slice(&message(b'S', b""));
    s.send(&batch).await;
    let (_, code) = s.read_until(b"Z").await;
    assert_eq!(code, None);
    assert_eq!(count_on_shards(topo, &[a, b]).await, 2);
}

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_wait_for_their_first_shard_and_fail_as_a_whole() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let a = keys_on(1, 2, 1);
    let b = keys_on(2, 1, 1)[0];
    // BEGIN waits for the first statement; everything then runs on its shard.
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO users (id, name) VALUES ({0}, 'a'); UPDATE users SET score = 5 WHERE id = {0}; COMMIT",
        a[0]
    ))
    .await
    .unwrap();
    let score: Option<i32> = c
        .query_one("SELECT score FROM users WHERE id = $1", &[&a[0]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, Some(5));
    // A statement on several shards that fails inside the transaction fails the transaction.
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(&format!("INSERT INTO users (id, name) VALUES ({}, 'x')", a[1]), &[])
        .await
        .unwrap();
    let e = c
        .execute(
            "UPDATE users SET score = 1 / (score - score) WHERE score IS NULL OR score IS NOT NULL",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("22012"), "{e:?}");
    let e = c.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some("25P02"), "{e:?}");
    // ROLLBACK as a prepared statement (JDBC's way) ends it.
    c.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(
        count_on_shards(topo, &[a[1], b]).await,
        0,
        "nothing of the failed transaction stays"
    );
    // The same after a refusal while the transaction holds a shard.
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute(&format!("INSERT INTO users (id, name) VALUES ({}, 'x')", a[1]), &[])
        .await
        .unwrap();
    let e = c
        .execute(
            "SELECT * FROM users JOIN events ON users.id = events.id FOR UPDATE",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e:?}");
    c.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(count_on_shards(topo, &[a[1]]).await, 0);
    assert_eq!(c.query("SELECT 1", &[]).await.unwrap().len(), 1, "the session goes on");
    // The same in the simple protocol (psql's way).
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO users (id, name) VALUES ({}, 'x')", a[1]))
        .await
        .unwrap();
    let e = c
        .batch_execute("SELECT 1 / (score - score) FROM users")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("22012"), "{e:?}");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), Some("25P02"), "{e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count_on_shards(topo, &[a[1], b]).await, 0);
    // The session works normally afterwards, and an empty transaction costs no backend.
    c.batch_execute("BEGIN; COMMIT").await.unwrap();
    assert_eq!(c.query("SELECT id FROM users", &[]).await.unwrap().len(), 1);
    // BEGIN in the extended protocol (as JDBC sends it) also waits for the first statement.
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute("INSERT INTO users (id, name) VALUES ($1, 'ext')", &[&b])
        .await
        .unwrap();
    c.execute("UPDATE users SET score = 9 WHERE id = $1", &[&b])
        .await
        .unwrap();
    c.execute("COMMIT", &[]).await.unwrap();
    let n: i64 = topo
        .shard(2)
        .await
        .query_one("SELECT count(*) FROM users WHERE score = 9", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the extended-protocol transaction ran on the row's shard");
    c.execute("BEGIN", &[]).await.unwrap();
    c.execute("ROLLBACK", &[]).await.unwrap();
    assert_eq!(c.query("SELECT id FROM users", &[]).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_writes_are_all_or_nothing() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    // A failure injected at commit time on one shard: a deferred trigger runs during PREPARE
    // TRANSACTION (shard s2) or during the coordinator's COMMIT (shard s0).
    for s in [0, 2] {
        topo.shard(s)
            .await
            .batch_execute(
                "CREATE FUNCTION fail_on_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.name = 'boom' THEN RAISE EXCEPTION 'injected failure at commit'; END IF;
                       IF NEW.name = 'slow' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$;
                 CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON users DEFERRABLE INITIALLY DEFERRED
                 FOR EACH ROW EXECUTE FUNCTION fail_on_commit();",
            )
            .await
            .unwrap();
    }
    let (k0, k1, k2) = (keys_on(0, 3, 1), keys_on(1, 3, 1), keys_on(2, 3, 1));
    let insert = |names: [&str; 3], i: usize| {
        format!(
            "INSERT INTO users (id, name) VALUES ({}, '{}'), ({}, '{}'), ({}, '{}')",
            k0[i], names[0], k1[i], names[1], k2[i], names[2]
        )
    };
    // Fails while preparing on s2: rolled back everywhere.
    let e = c.batch_execute(&insert(["ok", "ok", "boom"], 0)).await.unwrap_err();
    assert!(
        e.to_string().contains("injected") || format!("{e:?}").contains("injected"),
        "{e:?}"
    );
    assert_eq!(count_on_shards(topo, &[k0[0], k1[0], k2[0]]).await, 0);
    // Fails in the coordinator's commit (s0): the prepared parts are rolled back.
    let e = c.batch_execute(&insert(["boom", "ok", "ok"], 1)).await.unwrap_err();
    assert!(format!("{e:?}").contains("rolled back"), "{e:?}");
    assert_eq!(count_on_shards(topo, &[k0[1], k1[1], k2[1]]).await, 0);
    // The primary of s2 is killed while it prepares: nothing is committed anywhere.
    let writer = {
        let sql = insert(["ok", "ok", "slow"], 2);
        let c2 = proxy.app().await;
        tokio::spawn(async move { c2.batch_execute(&sql).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(move || {
        let (topo, _) = (crate::shards::sharded_blocking(), ());
        topo.stop_shard(2);
        topo.start_shard(2);
    })
    .await
    .unwrap();
    assert!(writer.await.unwrap().is_err(), "the write reports the failure");
    assert_eq!(count_on_shards(topo, &[k0[2], k1[2], k2[2]]).await, 0, "all or nothing");
    let prepared: i64 = topo
        .shard(2)
        .await
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
    // And a write that succeeds lands on all three.
    c.batch_execute(&insert(["ok", "ok", "ok"], 2)).await.unwrap();
    assert_eq!(count_on_shards(topo, &[k0[2], k1[2], k2[2]]).await, 3);
    for s in [0, 2] {
        topo.shard(s)
            .await
            .batch_execute("DROP TRIGGER fail_at_commit ON users; DROP FUNCTION fail_on_commit()")
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_prepared_transactions_by_the_decision_record() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let k1 = keys_on(1, 2, 1);
    // As if shardwire stopped after the coordinator (s0) committed its decision but before
    // COMMIT PREPARED on s1; and a second one that never reached a decision.
    let s0 = topo.shard(0).await;
    s0.batch_execute(shardwire::session::TWO_PHASE_DECISION_DDL)
        .await
        .unwrap();
    s0.batch_execute("INSERT INTO shardwire_2pc (gid) VALUES ('sw:s0:decided')")
        .await
        .unwrap();
    let s1 = topo.shard(1).await;
    s1.batch_execute(&format!(
        "BEGIN; INSERT INTO users (id, name) VALUES ({}, 'decided'); PREPARE TRANSACTION 'sw:s0:decided'",
        k1[0]
    ))
    .await
    .unwrap();
    s1.batch_execute(&format!(
        "BEGIN; INSERT INTO users (id, name) VALUES ({}, 'undecided'); PREPARE TRANSACTION 'sw:s0:undecided'",
        k1[1]
    ))
    .await
    .unwrap();
    let clusters = proxy.shared.runtime.load().clusters.clone();
    let done =
        shardwire::backend::twophase::recover(&clusters, std::time::Duration::ZERO, std::time::Duration::from_secs(5))
            .await;
    assert_eq!(
        done,
        shardwire::backend::twophase::Recovered {
            committed: 1,
            rolled_back: 1
        }
    );
    let names: Vec<String> = c
        .query("SELECT name FROM users ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["decided"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_splits_rows_by_key() {
    use futures_util::SinkExt;
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    // Text format through psql, chunked however psql likes; no column list (the table's order).
    let mut data = String::new();
    for i in 1..=500 {
        data.push_str(&format!("{i}\tname\\t{i}\t\\N\t{}\n", i % 10));
    }
    let dir = tempfile_path("copy-text");
    std::fs::write(&dir, &data).unwrap();
    let bin = shardwire::sandbox::pg_bin_dir().unwrap();
    let out = std::process::Command::new(bin.join("psql"))
        .arg(proxy.url("app", "app"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("\\copy users from '{}'", dir.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_file(&dir);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "COPY 500");
    // CSV with a header and quoted fields through tokio-postgres (extended protocol).
    let sink = c
        .copy_in("COPY users (name, id, country) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut csv = String::from("name,id,country\n");
    for i in 501..=800 {
        csv.push_str(&format!("\"multi\nline, {i}\",{i},\"fr\"\n"));
    }
    for chunk in csv.as_bytes().chunks(37) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 300);
    let keys: Vec<i64> = (1..=800).collect();
    assert_eq!(count_on_shards(topo, &keys).await, 800);
    // Each row is on its key's shard.
    let map = shardwire::shardmap::parse(MAP).unwrap();
    for s in 0..SHARDS {
        let ids: Vec<i64> = topo
            .shard(s)
            .await
            .query("SELECT id FROM users", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            ids.iter()
                .all(|k| map.locate("users", &k.to_string()).unwrap().0.shard == s)
        );
    }
    let name: String = c
        .query_one("SELECT name FROM users WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "name\t7");
    // A row without a valid key fails the whole COPY: nothing is copied.
    let sink = c.copy_in("COPY users (id, name) FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"900\tok\n901\tok\nnot-a-number\tbad\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(code(&e), Some("22P04"), "{e:?}");
    assert_eq!(count_on_shards(topo, &[900, 901]).await, 0);
    c.execute("SELECT 1", &[]).await.unwrap();
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shardwire-{name}-{}", crate::harness::rand_suffix()))
}

/// Two instances (worker ids 1 and 2) in front of the same shards, 8 clients inserting 20,000
/// rows each without IDs: single- and multi-row INSERTs, simple and extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_ids_are_unique_across_instances_and_route_rows() {
    const ROWS: usize = 20_000;
    let (topo, _guard) = sharded().await;
    let map = MAP.replace(
        "[tables.users]\ngroup = \"users\"\nkey = \"id\"",
        "[tables.users]\ngroup = \"users\"\nkey = \"id\"\nid_column = \"id\"",
    );
    assert_ne!(map, MAP);
    let a = Proxy::start(&format!("{}\n[ids]\nworker_id = 1\n", topo.config(&map))).await;
    let b = Proxy::start(&format!("{}\n[ids]\nworker_id = 2\n", topo.config(&map))).await;
    let setup = a.app().await;
    each(&setup, SCHEMA).await;
    let mut tasks = Vec::new();
    for client in 0..8 {
        let c = if client % 2 == 0 { a.app().await } else { b.app().await };
        tasks.push(tokio::spawn(async move {
            let mut returned = Vec::new();
            let single = c
                .prepare("INSERT INTO users (name, score) VALUES ($1, $2) RETURNING id")
                .await
                .unwrap();
            let multi_sql = (0..10)
                .map(|i| format!("($ {0}, ${1})", 2 * i + 1, 2 * i + 2).replace("$ ", "$"))
                .collect::<Vec<_>>();
            let multi = c
                .prepare(&format!(
                    "INSERT INTO users (name, score) VALUES {} RETURNING id",
                    multi_sql.join(", ")
                ))
                .await
                .unwrap();
            let mut n = 0;
            while n < ROWS {
                let name = format!("c{client}-{n}");
                match (n / 10) % 4 {
                    0 => {
                        for r in c
                            .simple_query(&format!(
                                "INSERT INTO users (name, score) VALUES ('{name}', 1) RETURNING id"
                            ))
                            .await
                            .unwrap()
                        {
                            if let tokio_postgres::SimpleQueryMessage::Row(r) = r {
                                returned.push(r.get(0).unwrap().parse::<i64>().unwrap());
                            }
                        }
                        n += 1;
                    }
                    1 => {
                        let row = c.query_one(&single, &[&name, &2i32]).await.unwrap();
                        returned.push(row.get(0));
                        n += 1;
                    }
                    2 => {
                        let values: Vec<String> = (0..10).map(|i| format!("('{name}-{i}', 3)")).collect();
                        for r in c
                            .simple_query(&format!(
                                "INSERT INTO users (name, score) VALUES {} RETURNING id",
                                values.join(",")
                            ))
                            .await
                            .unwrap()
                        {
                            if let tokio_postgres::SimpleQueryMessage::Row(r) = r {
                                returned.push(r.get(0).unwrap().parse::<i64>().unwrap());
                            }
                        }
                        n += 10;
                    }
                    _ => {
                        let names: Vec<String> = (0..10).map(|i| format!("{name}-{i}")).collect();
                        let score = 4i32;
                        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                        for nm in &names {
                            params.push(nm);
                            params.push(&score);
                        }
                        for r in c.query(&multi, &params).await.unwrap() {
                            returned.push(r.get(0));
                        }
                        n += 10;
                    }
                }
            }
            returned
        }));
    }
    let mut returned: Vec<i64> = Vec::new();
    for t in tasks {
        returned.extend(t.await.unwrap());
    }
    assert_eq!(returned.len(), 8 * ROWS);
    let distinct: std::collections::HashSet<i64> = returned.iter().copied().collect();
    assert_eq!(distinct.len(), returned.len(), "every ID distinct");
    // Every row exactly once, on the shard its generated id maps to, with the id RETURNING gave.
    let parsed = shardwire::shardmap::parse(&map).unwrap();
    let mut stored = std::collections::HashSet::new();
    for s in 0..SHARDS {
        for r in topo.shard(s).await.query("SELECT id FROM users", &[]).await.unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(parsed.locate("users", &id.to_string()).unwrap().0.shard, s);
            assert!(stored.insert(id), "id {id} stored twice");
        }
    }
    assert_eq!(stored, distinct, "RETURNING gives the IDs stored");
    let workers: std::collections::HashSet<u16> = distinct
        .iter()
        .map(|id| shardwire::ids::decode(*id as u64, shardwire::ids::DEFAULT_EPOCH_MS).worker)
        .collect();
    assert_eq!(workers, [1u16, 2].into_iter().collect());
}

/// `COPY sharded_table TO STDOUT` (psql's `\copy ... to`, pg_dump's data): every shard's rows,
/// once, in text and CSV (one header line), through psql and through tokio-postgres; binary is
/// refused with the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_streams_every_shard() {
    use futures_util::TryStreamExt;
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let values: Vec<String> = (1..=90).map(|i| format!("({i}, 'u{i}')")).collect();
    c.batch_execute(&format!("INSERT INTO users (id, name) VALUES {}", values.join(",")))
        .await
        .unwrap();
    let bin = shardwire::sandbox::pg_bin_dir().unwrap().join("psql");
    let out = std::process::Command::new(bin)
        .arg(proxy.url("app", "app"))
        .args([
            "-X",
            "-q",
            "-c",
            "\\copy users (id, name) to stdout with (format csv, header)",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,name", "{text}");
    assert_eq!(lines.len(), 91, "one header, every row once");
    let mut ids: Vec<i64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=90).collect::<Vec<i64>>());
    // tokio-postgres (extended protocol), text format.
    let stream = c.copy_out("COPY users (id) TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let all: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(all).unwrap().lines().count(), 90);
    // Inside a transaction it sees the transaction's own rows.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO users (id, name) VALUES (1000, 'in tx')")
        .await
        .unwrap();
    let stream = c.copy_out("COPY users (id) TO STDOUT").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(String::from_utf8(chunks.concat()).unwrap().lines().count(), 91);
    c.batch_execute("ROLLBACK").await.unwrap();
    // COPY (SELECT ...): on the one shard its key condition names, or each shard's plain rows.
    let copy = |sql: &'static str| {
        let c = &c;
        async move {
            let chunks: Vec<bytes::Bytes> = c.copy_out(sql).await?.try_collect().await?;
            Ok::<String, tokio_postgres::Error>(String::from_utf8(chunks.concat()).unwrap())
        }
    };
    assert_eq!(
        copy("COPY (SELECT id, name FROM users WHERE id = 7) TO STDOUT")
            .await
            .unwrap(),
        "7\tu7\n"
    );
    let text = copy("COPY (SELECT id FROM users WHERE id > 80) TO STDOUT (FORMAT csv, HEADER)")
        .await
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id", "{text}");
    let mut ids: Vec<i64> = lines[1..].iter().map(|l| l.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (81..=90).collect::<Vec<i64>>());
    let e = copy("COPY (SELECT id FROM users ORDER BY id) TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e:?}");
    // Binary: one header, every shard's rows, one trailer. One database loads it back as it is.
    let reference = topo.reference().await;
    reference
        .batch_execute(
            "DROP TABLE IF EXISTS users_bin; CREATE TABLE users_bin (id bigint, name text, country text, score int)",
        )
        .await
        .unwrap();
    for (sql, want) in [
        ("COPY users TO STDOUT (FORMAT binary)", 90),
        // Most shards hold none of these rows: their output is a header and a trailer.
        (
            "COPY (SELECT id, name, country, score FROM users WHERE id > 80 AND id < 84) TO STDOUT (FORMAT binary)",
            3,
        ),
        ("COPY users TO STDOUT WITH BINARY", 90),
    ] {
        let chunks: Vec<bytes::Bytes> = c.copy_out(sql).await.unwrap().try_collect().await.unwrap();
        reference.batch_execute("TRUNCATE users_bin").await.unwrap();
        let sink = reference
            .copy_in::<_, bytes::Bytes>("COPY users_bin FROM STDIN (FORMAT binary)")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from(chunks.concat())).await.unwrap();
        let n = sink
            .finish()
            .await
            .unwrap_or_else(|e| panic!("{sql}: the joined stream loads: {e:?}"));
        assert_eq!(n, want, "{sql}");
        let got: Vec<(i64, String)> = reference
            .query("SELECT id, name FROM users_bin ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(i64, String)> = match want {
            3 => (81..84).map(|i| (i, format!("u{i}"))).collect(),
            _ => (1..=90).map(|i| (i, format!("u{i}"))).collect(),
        };
        assert_eq!(got, expected, "{sql}");
        assert_eq!(got.len() as u64, want);
    }
    reference.batch_execute("DROP TABLE users_bin").await.unwrap();
    // pg_dump of the sharded table's rows (its transaction locks the table on every shard,
    // then copies), restored through shardwire with psql: every row back on its shard.
    let pg = |name: &str| shardwire::sandbox::pg_bin_dir().unwrap().join(name);
    let dump = std::process::Command::new(pg("pg_dump"))
        .arg(proxy.url("app", "app"))
        .args(["--data-only", "--table", "users"])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8(dump.stdout).unwrap();
    let rows = text
        .lines()
        .skip_while(|l| !l.starts_with("COPY public.users"))
        .skip(1)
        .take_while(|l| *l != "\\.")
        .count();
    assert_eq!(rows, 90, "{text}");
    c.batch_execute("DELETE FROM users").await.unwrap();
    let file = std::env::temp_dir().join(format!("shardwire-dump-{}.sql", crate::harness::rand_suffix()));
    std::fs::write(&file, &text).unwrap();
    let restore = std::process::Command::new(pg("psql"))
        .arg(proxy.url("app", "app"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).ok();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let mut restored = 0;
    for s in 0..SHARDS {
        for r in topo.shard(s).await.query("SELECT id FROM users", &[]).await.unwrap() {
            let id: i64 = r.get(0);
            assert_eq!(map.locate("users", &id.to_string()).unwrap().0.shard, s, "row {id}");
            restored += 1;
        }
    }
    assert_eq!(restored, 90, "every row restored on its key's shard");
}
