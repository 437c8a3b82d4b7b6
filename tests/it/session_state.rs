//! Session parameters follow the client to every backend; session-level state pins the backend.

use crate::harness::{Proxy, shared};

async fn setting(c: &tokio_postgres::Client, name: &str) -> (String, bool) {
    let r = c
        .query_one("SELECT current_setting($1), pg_is_in_recovery()", &[&name])
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn set_is_carried_across_routes_and_not_leaked_to_other_clients() {
    let topo = shared();
    // One connection per node: both clients share them, so leaks would show.
    let proxy = Proxy::start(&topo.config("", "").replace("max_size = 10", "max_size = 1")).await;
    proxy.wait_replicas_in_rotation().await;
    let a = proxy.app().await;
    let b = proxy.app().await;
    a.batch_execute("SET search_path TO pg_catalog, public").await.unwrap();
    a.batch_execute("SET TIME ZONE 'Asia/Tokyo'").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            setting(&a, "search_path").await,
            ("pg_catalog, public".into(), true),
            "on the replica"
        );
        assert_eq!(
            setting(&b, "search_path").await.0,
            "\"$user\", public",
            "b never sees a's setting"
        );
        assert_eq!(setting(&a, "TimeZone").await.0, "Asia/Tokyo");
    }
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        setting(&a, "search_path").await,
        ("pg_catalog, public".into(), false),
        "on the primary"
    );
    a.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("RESET search_path").await.unwrap();
    assert_eq!(setting(&a, "search_path").await.0, "\"$user\", public");
    assert_eq!(setting(&a, "TimeZone").await.0, "Asia/Tokyo");
    a.batch_execute("RESET ALL").await.unwrap();
    assert_ne!(setting(&a, "TimeZone").await.0, "Asia/Tokyo");
    // A SET inside a transaction stands if it commits and is undone if it rolls back.
    a.batch_execute("BEGIN; SET search_path TO pg_catalog; COMMIT")
        .await
        .unwrap();
    assert_eq!(setting(&a, "search_path").await.0, "pg_catalog");
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path TO public").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        setting(&a, "search_path").await,
        ("pg_catalog".into(), true),
        "rolled back, on the replica too"
    );
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET search_path TO public").await.unwrap();
    assert!(a.batch_execute("SELECT 1/0").await.is_err());
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        setting(&a, "search_path").await.0,
        "pg_catalog",
        "a failed transaction's COMMIT rolls back"
    );
    a.batch_execute("RESET search_path").await.unwrap();
    // ROLLBACK TO SAVEPOINT undoes only the SETs made after the savepoint; the transaction goes
    // on and its COMMIT keeps the rest.
    for sql in [
        "BEGIN",
        "SET search_path TO pg_catalog",
        "SAVEPOINT before_tz",
        "SET TIME ZONE 'Asia/Tokyo'",
        "ROLLBACK TO SAVEPOINT before_tz",
        "COMMIT",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    assert_eq!(
        setting(&a, "search_path").await,
        ("pg_catalog".into(), true),
        "committed, on the replica too"
    );
    assert_ne!(setting(&a, "TimeZone").await.0, "Asia/Tokyo");
    // b, on the same primary connection, sees none of it.
    b.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        setting(&b, "search_path").await,
        ("\"$user\", public".into(), false),
        "b on the primary"
    );
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("RESET search_path").await.unwrap();
    // A SET that fails is not recorded.
    assert!(a.batch_execute("SET no_such_parameter_x = 1").await.is_err());
    assert_eq!(setting(&a, "search_path").await.0, "\"$user\", public");
}

#[tokio::test]
async fn startup_parameters_follow_the_client() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port())
        .user("app")
        .password("app")
        .dbname("app")
        .application_name("it-startup")
        .options("-c statement_timeout=4321")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(setting(&c, "application_name").await, ("it-startup".into(), true));
    assert_eq!(setting(&c, "statement_timeout").await.0, "4321ms");
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(setting(&c, "application_name").await, ("it-startup".into(), false));
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn temporary_tables_pin_the_session_to_its_backend() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let c = proxy.app().await;
    c.batch_execute("CREATE TEMP TABLE scratch (v int)").await.unwrap();
    for i in 0..10 {
        c.execute("INSERT INTO scratch VALUES ($1)", &[&i]).await.unwrap();
    }
    let n: i64 = c.query_one("SELECT count(*) FROM scratch", &[]).await.unwrap().get(0);
    assert_eq!(n, 10, "reads of the temp table reach the backend that holds it");
    // Another client does not see it and is not stuck behind it.
    let other = proxy.app().await;
    assert!(other.query_one("SELECT count(*) FROM scratch", &[]).await.is_err());
}

#[tokio::test]
async fn a_busy_pool_gives_a_clear_error_after_the_checkout_timeout() {
    let topo = shared();
    let config = topo
        .config("", "")
        .replace("max_size = 10", "max_size = 1")
        .replace("checkout_timeout = \"3s\"", "checkout_timeout = \"300ms\"");
    let proxy = Proxy::start(&config).await;
    let holder = proxy.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiter = proxy.app().await;
    let e = waiter.simple_query("INSERT INTO nowhere VALUES (1)").await.unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(
        db.message().contains("timed out") && db.message().contains("main/primary"),
        "{}",
        db.message()
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        waiter
            .query_one("/* shardwire: primary */ SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn a_released_connection_goes_to_a_waiting_client() {
    // Checks every 10 s: the monitor's return of idle connections to the pool cannot be what
    // unblocks the waiter within the 3 s checkout timeout.
    let config = shared()
        .config("", "")
        .replace("max_size = 10", "max_size = 1")
        .replace("lag_check_interval = \"100ms\"", "lag_check_interval = \"10s\"");
    let proxy = Proxy::start(&config).await;
    let holder = proxy.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    // The waiter's checkout waits inside the pool; the holder's COMMIT must hand the one
    // connection to it, not keep it for the next checkout of its own.
    let waiter = proxy.app().await;
    let waiting = tokio::spawn(async move {
        waiter
            .query_one("/* shardwire: primary */ SELECT 41 + 1", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 42);
    assert_eq!(
        holder
            .query_one("/* shardwire: primary */ SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn released_connections_go_back_to_the_pool_after_a_check_interval() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let c = proxy.app().await;
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    // Released connections sit ready for the next checkout, then go back to the pool (and its
    // idle timeout) after a check interval (100 ms here).
    let primary = proxy.shared.runtime.load().clusters[0].primary.clone();
    proxy
        .wait_for("released connections back in the pool", |_| {
            let in_pool = primary.pool.state().idle_connections;
            in_pool >= 1 && primary.idle_connections() == in_pool
        })
        .await;
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_lets_transactions_finish() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("shutdown_timeout = \"5s\"", "")).await;
    let idle = proxy.app().await;
    let busy = proxy.app().await;
    busy.batch_execute("BEGIN").await.unwrap();
    busy.query_one("/* shardwire: primary */ SELECT 1", &[]).await.unwrap();
    proxy.stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        idle.is_closed() || idle.simple_query("SELECT 1").await.is_err(),
        "idle session closed"
    );
    busy.query_one("SELECT 2", &[])
        .await
        .expect("the open transaction goes on");
    busy.batch_execute("COMMIT").await.expect("and commits");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(busy.simple_query("SELECT 3").await.is_err(), "then the session closes");
    assert!(proxy.connect("app", "app").await.is_err(), "no new clients");
}

/// DEALLOCATE ALL / DISCARD ALL drop every statement on the server connection, those shardwire
/// prepared there for other clients too: the next user of that connection must prepare again,
/// and the client's own names are free again. `DEALLOCATE name` of a protocol-level statement
/// is answered by the proxy (the server knows it under another name).
#[tokio::test]
async fn deallocate_all_and_discard_all_keep_prepared_statements_in_step() {
    let topo = shared();
    // One connection per node: every client below shares the primary's.
    let proxy = Proxy::start(&topo.config("", "").replace("max_size = 10", "max_size = 1")).await;
    let a = proxy.app().await;
    let b = proxy.app().await;
    for reset in ["DEALLOCATE ALL", "DISCARD ALL", "DEALLOCATE PREPARE ALL"] {
        // Inside transactions, so everything runs on the primary's one connection.
        a.batch_execute("BEGIN").await.unwrap();
        let s = a.prepare("SELECT $1::int + 1").await.unwrap();
        assert_eq!(a.query_one(&s, &[&1i32]).await.unwrap().get::<_, i32>(0), 2);
        a.batch_execute("COMMIT").await.unwrap();
        if reset == "DISCARD ALL" {
            a.batch_execute(reset).await.unwrap();
        } else {
            a.batch_execute(&format!("BEGIN; {reset}; COMMIT")).await.unwrap();
        }
        // Another client, same server connection, same text: shardwire must prepare it again.
        b.batch_execute("BEGIN").await.unwrap();
        let s = b.prepare("SELECT $1::int + 1").await.unwrap();
        assert_eq!(
            b.query_one(&s, &[&41i32]).await.unwrap().get::<_, i32>(0),
            42,
            "after {reset}"
        );
        b.batch_execute("COMMIT").await.unwrap();
    }
    // DEALLOCATE of a protocol-level name (tokio-postgres shows its statements' names in Debug).
    let c = proxy.app().await;
    let s = c.prepare("SELECT 7").await.unwrap();
    let debug = format!("{s:?}");
    let name = debug.split('"').nth(1).expect("a quoted name in the Debug output");
    assert!(name.starts_with('s'), "{debug}");
    c.batch_execute(&format!("DEALLOCATE {name}")).await.unwrap();
    let e = c.query(&s, &[]).await.expect_err("deallocated");
    assert_eq!(e.code().map(|c| c.code()), Some("26000"));
    // The server-side statement still serves others.
    let s = b.prepare("SELECT 7").await.unwrap();
    assert_eq!(b.query_one(&s, &[]).await.unwrap().get::<_, i32>(0), 7);
}

/// A client that disconnects while its statement runs gets that statement cancelled: it would
/// otherwise run on, holding its locks, until it next wrote to the closed connection.
#[tokio::test]
async fn a_client_that_leaves_mid_statement_has_its_statement_cancelled() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port())
        .user("app")
        .password("app")
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let sleeper = tokio::spawn(async move {
        // On the primary (the advisory lock), holding lock 4242 for a minute.
        let _ = c
            .simple_query("SELECT pg_sleep(60) FROM (SELECT pg_advisory_xact_lock(4242)) l")
            .await;
    });
    let primary = topo.primary().await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND state = 'active' AND pid <> pg_backend_pid()";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while primary.query_one(running, &[]).await.unwrap().get::<_, i64>(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the statement never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The client goes away without a word.
    sleeper.abort();
    conn.abort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while primary.query_one(running, &[]).await.unwrap().get::<_, i64>(0) > 0 {
        assert!(std::time::Instant::now() < deadline, "the statement still runs");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let free: bool = primary
        .query_one("SELECT pg_try_advisory_lock(4242)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the lock was released");
    primary.execute("SELECT pg_advisory_unlock(4242)", &[]).await.unwrap();
}
