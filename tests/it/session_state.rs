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
