//! MySQL sessions over time: read-your-writes against a delayed replica, the heartbeat, the
//! session's LAST_INSERT_ID(), COM_RESET_CONNECTION and COM_CHANGE_USER, and the admin views of
//! MySQL nodes.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use shardwire::sandbox_mysql::MariaSandbox;

use crate::harness::Proxy;
use crate::mysql::{REPLICATION, config, connect, maria, proxy, wait_replica};

/// Delays the shared replica's apply by `secs` for as long as it lives (also when a test fails).
struct Delay(&'static MariaSandbox);

impl Delay {
    fn new(sb: &'static MariaSandbox, secs: u32) -> Delay {
        sb.replicas[0]
            .sql(&format!(
                "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = {secs}; START SLAVE"
            ))
            .unwrap();
        Delay(sb)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        let _ = self.0.replicas[0].sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE");
    }
}

#[tokio::test]
async fn a_session_reads_its_writes_from_a_delayed_replica_only_once_it_has_them() {
    let _g = REPLICATION.write().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let replica = &sb.replicas[0];
    let _delay = Delay::new(sb, 2);
    // The replica stays in rotation (2 s behind, under a 10 s bound).
    let text = config(sb, "").replace(
        "lag_check_interval = \"100ms\"",
        "lag_check_interval = \"100ms\"\nmax_replica_lag = \"10s\"",
    );
    let p = Proxy::start(&text).await;
    wait_replica(&p, true).await;
    let mut writer = connect(&p).await;
    writer
        .query_drop("CREATE TABLE IF NOT EXISTS ryw_t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    while !replica
        .sql("SHOW TABLES IN app LIKE 'ryw_t'")
        .unwrap()
        .contains("ryw_t")
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = (std::process::id() % 100_000) as i64 * 10 + rand_digit();
    writer
        .query_drop(format!("INSERT INTO ryw_t VALUES ({id})"))
        .await
        .unwrap();
    // The writer sees its row at once (the primary serves it: the replica has not applied it).
    let seen: Option<(i64, u32)> = writer
        .query_first(format!("SELECT id, @@server_id FROM ryw_t WHERE id = {id}"))
        .await
        .unwrap();
    assert_eq!(seen, Some((id, 1)));
    // Another session that wrote nothing reads the replica, which is behind.
    let mut other = connect(&p).await;
    let stale: Option<(i64, u32)> = other
        .query_first(format!("SELECT COUNT(*), @@server_id FROM ryw_t WHERE id = {id}"))
        .await
        .unwrap();
    assert_eq!(stale, Some((0, 2)), "the replica is 2 s behind");
    // Once the replica has applied the write, the writer's reads go back to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r: Option<(i64, u32)> = writer
            .query_first(format!("SELECT COUNT(*), @@server_id FROM ryw_t WHERE id = {id}"))
            .await
            .unwrap();
        let (n, server) = r.unwrap();
        assert_eq!(n, 1, "the writer never misses its row");
        if server == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads never went back to the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_admin_console_and_metrics_show_mysql_nodes() {
    let _g = REPLICATION.read().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "admin_http = \"127.0.0.1:0\"")).await;
    wait_replica(&p, true).await;
    let mut c = connect(&p).await;
    for _ in 0..3 {
        c.query_drop("SELECT 1").await.unwrap();
    }
    let admin = p.connect_db("admin", "admin", "shardwire").await.unwrap();
    let rows = admin.simple_query("SHOW REPLICAS").await.unwrap();
    let replica = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("main/replica0") => {
                Some((r.get(1).map(str::to_owned), r.get(4).map(str::to_owned)))
            }
            _ => None,
        })
        .expect("the MySQL replica is listed");
    assert_eq!(replica, (Some("replica".into()), Some("yes".into())));
    let clients = admin.simple_query("SHOW CLIENTS").await.unwrap();
    let mysql_clients = clients
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(3) == Some("mysql")))
        .count();
    assert_eq!(mysql_clients, 1, "the MySQL client is listed");
    let metrics = crate::admin::http_get(p.bound.http.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("shardwire_node_in_rotation{node=\"main/replica0\",role=\"replica\"} 1"),
        "{metrics}"
    );
    let health = crate::admin::http_get(p.bound.http.unwrap(), "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // A PostgreSQL client of the data port learns where to go.
    let e = p.connect("app", "app").await.unwrap_err();
    let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("MySQL client"), "{e:?}");
}

#[tokio::test]
async fn change_user_and_reset_connection_start_the_session_afresh() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES'").await.unwrap();
    c.query_drop("SET @pinned = 1").await.unwrap();
    c.query_drop("SET autocommit = 0").await.unwrap();
    c.reset().await.unwrap();
    let (mode, var, ac): (String, Option<i64>, i64) = c
        .query_first("SELECT @@sql_mode, @pinned, @@autocommit")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(mode, "ANSI_QUOTES");
    assert_eq!((var, ac), (None, 1), "COM_RESET_CONNECTION forgot the session's state");
    c.query_drop("SET @again = 2").await.unwrap();
    c.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some("trusted".into()))
            .with_pass(None)
            .with_db_name(Some("app".into())),
    )
    .await
    .expect("COM_CHANGE_USER to a trusted user");
    let (user_var, one): (Option<i64>, i64) = c.query_first("SELECT @again, 1").await.unwrap().unwrap();
    assert_eq!((user_var, one), (None, 1));
    let wrong = c
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("wrong".into())),
        )
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
}

#[tokio::test]
async fn last_insert_id_is_the_sessions_own_across_pooled_connections() {
    let p = proxy().await;
    let mut a = connect(&p).await;
    let mut b = connect(&p).await;
    a.query_drop("CREATE TABLE IF NOT EXISTS ai_t (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(4))")
        .await
        .unwrap();
    for _ in 0..5 {
        a.query_drop("INSERT INTO ai_t (who) VALUES ('a')").await.unwrap();
        let from_ok = a.last_insert_id().unwrap();
        b.query_drop("INSERT INTO ai_t (who) VALUES ('b')").await.unwrap();
        let b_id = b.last_insert_id().unwrap();
        let a_sees: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
        assert_eq!(a_sees, Some(from_ok), "a's own id, not b's ({b_id})");
        let prepared: Option<u64> = a.exec_first("SELECT LAST_INSERT_ID()", ()).await.unwrap();
        assert_eq!(prepared, Some(from_ok));
        let who: Option<String> = a
            .query_first("SELECT who FROM ai_t WHERE id = LAST_INSERT_ID()")
            .await
            .unwrap();
        assert_eq!(
            who.as_deref(),
            Some("a"),
            "LAST_INSERT_ID() inside a statement is the session's"
        );
        let b_sees: Option<u64> = b.query_first("SELECT LAST_INSERT_ID() AS id").await.unwrap();
        assert_eq!(b_sees, Some(b_id));
    }
    let e = a
        .exec_drop("SELECT who FROM ai_t WHERE id = LAST_INSERT_ID() + ?", (0,))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("1235"), "{e}");
}

#[tokio::test]
async fn the_heartbeat_shows_a_delayed_replica_behind_an_idle_primary() {
    let _g = REPLICATION.write().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "")).await;
    wait_replica(&p, true).await;
    let lag = |p: &Proxy| p.shared.runtime.load().mysql[0].replicas[0].health.load().lag_secs;
    // Caught up: the heartbeat's age is well under a second (a whole-second counter would say 0).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lag(&p).is_some_and(|l| l < 0.9), "{:?}", lag(&p));
    // Two seconds of delay and nothing else written: only the heartbeat shows it.
    let delay = Delay::new(sb, 2);
    wait_replica(&p, false).await;
    let reason = p.shared.runtime.load().mysql[0].replicas[0]
        .health
        .load()
        .reason
        .clone();
    drop(delay);
    assert!(reason.contains("heartbeat"), "{reason}");
    wait_replica(&p, true).await;
}

fn rand_digit() -> i64 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 10) as i64
}
