//! The extended protocol under transaction pooling: prepared statements on any backend, binary
//! formats, pipelining, COPY both ways, cancel, multi-statement simple queries.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};

use crate::harness::{Proxy, replica_caught_up, shared, table};

#[tokio::test]
async fn prepared_statements_follow_clients_across_backend_connections() {
    let topo = shared();
    // A small pool and many clients: statements prepared on one connection run on others.
    let proxy = Proxy::start(&topo.config("", "").replace("max_size = 10", "max_size = 3")).await;
    proxy.wait_replicas_in_rotation().await;
    let t = table("prep");
    let setup = proxy.app().await;
    setup
        .batch_execute(&format!("CREATE TABLE {t} (id int primary key, v text)"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client in 0..8i32 {
        let url_proxy = proxy.connect("app", "app").await.unwrap();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = url_proxy;
            // Same statement names (s0, s1, ...) in every client, different texts.
            let add = c.prepare(&format!("SELECT $1::int + {client}")).await.unwrap();
            let ins = c
                .prepare(&format!("INSERT INTO {t} VALUES ($1, $2) RETURNING id"))
                .await
                .unwrap();
            for i in 0..25i32 {
                let v: i32 = c.query_one(&add, &[&i]).await.unwrap().get(0);
                assert_eq!(v, i + client);
                let id = client * 1000 + i;
                let tx = c.transaction().await.unwrap();
                let got: i32 = tx.query_one(&ins, &[&id, &format!("v{id}")]).await.unwrap().get(0);
                assert_eq!(got, id);
                let again: i32 = tx.query_one(&add, &[&i]).await.unwrap().get(0);
                assert_eq!(again, i + client);
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = crate::harness::primary_i64(topo, &format!("SELECT count(*) FROM {t}")).await;
    assert_eq!(n, 8 * 25);
    setup.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn backends_keep_a_bounded_number_of_prepared_statements() {
    // One connection per node, so every statement lands on the same backend.
    let cap = 60;
    let config = shared().config("", "").replace(
        "max_size = 10",
        &format!("max_size = 1\nmax_prepared_statements = {cap}"),
    );
    let proxy = Proxy::start(&config).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    let mut stmts = Vec::new();
    for i in 0..cap + 120 {
        let s = c.prepare(&format!("SELECT {i}::int + $1::int")).await.unwrap();
        assert_eq!(c.query_one(&s, &[&1i32]).await.unwrap().get::<_, i32>(0), i as i32 + 1);
        stmts.push(s);
    }
    let count = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> usize {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                _ => None,
            })
            .unwrap()
    };
    let held = count(
        c.simple_query("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'sw_%'")
            .await
            .unwrap(),
    );
    assert!(
        held <= cap && held >= cap - 1,
        "{held} statements prepared on the backend"
    );
    // The oldest were closed on the server; they still run, prepared again where needed.
    for (i, s) in stmts.iter().enumerate().take(cap + 30) {
        assert_eq!(c.query_one(s, &[&2i32]).await.unwrap().get::<_, i32>(0), i as i32 + 2);
    }
    let held = count(
        c.simple_query("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'sw_%'")
            .await
            .unwrap(),
    );
    assert!(held <= cap, "{held} statements prepared on the backend");
}

#[tokio::test]
async fn binary_parameters_and_results_round_trip() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let c = proxy.app().await;
    let row = c
        .query_one(
            "SELECT $1::int8, $2::text, $3::float8, $4::bytea, $5::bool, NULL::int4",
            &[
                &-7i64,
                &"é\u{0}x".replace('\u{0}', ""),
                &1.5f64,
                &vec![0u8, 255, 1],
                &true,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), -7);
    assert_eq!(row.get::<_, String>(1), "éx");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 255, 1]);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Option<i32>>(5), None);
}

#[tokio::test]
async fn pipelined_reads_and_writes_keep_their_order_and_routes() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let c = proxy.app().await;
    let t = table("pipe");
    c.batch_execute(&format!("CREATE TABLE {t} (v int)")).await.unwrap();
    let ins = format!("INSERT INTO {t} VALUES ($1) RETURNING pg_is_in_recovery()");
    let read = "SELECT $1::int, pg_is_in_recovery()";
    let (a, b, d, e) = tokio::join!(
        c.query_one(read, &[&1i32]),
        c.query_one(&ins, &[&2i32]),
        c.query_one(read, &[&3i32]),
        c.query_one(&ins, &[&4i32]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert!(!b.unwrap().get::<_, bool>(0), "pipelined write on the primary");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);
    assert!(!e.unwrap().get::<_, bool>(0));
    let n = crate::harness::primary_i64(topo, &format!("SELECT count(*) FROM {t}")).await;
    assert_eq!(n, 2);
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn copy_in_and_out() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let c = proxy.app().await;
    let t = table("copy");
    c.batch_execute(&format!("CREATE TABLE {t} (id int, v text)"))
        .await
        .unwrap();
    let sink = c.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 5000);
    replica_caught_up(topo).await;
    let out: Vec<Bytes> = c
        .copy_out(&format!("COPY {t} TO STDOUT"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let text: Vec<u8> = out.concat();
    assert_eq!(text.len(), data.len());
    assert_eq!(String::from_utf8(text).unwrap().lines().count(), 5000);
    // A COPY that fails on bad data leaves nothing behind and the session usable.
    let sink = c.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"9001\tfine\nnot-a-number\toops\n"))
        .await
        .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22P02", "{e}");
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    let n = crate::harness::primary_i64(topo, &format!("SELECT count(*) FROM {t} WHERE id = 9001")).await;
    assert_eq!(n, 0, "nothing of the failed COPY was written");
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn cancel_reaches_the_backend_running_the_query() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let c = proxy.app().await;
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = c.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    cancel.await.unwrap();
    assert_eq!(e.code().unwrap().code(), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test]
async fn multi_statement_simple_queries_and_errors_mid_string() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let c = proxy.app().await;
    let msgs = c.simple_query("SELECT 1; SELECT 2, 3").await.unwrap();
    let rows = msgs
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);
    let e = c.simple_query("SELECT 1; SELECT 1/0; SELECT 3").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22012");
    let e = c.query_one("SELECT * FROM no_such_table_here", &[]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42P01");
    assert_eq!(c.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0), 5);
}
