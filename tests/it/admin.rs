//! The admin console, RELOAD, and the HTTP metrics and health endpoints.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Proxy, shared};

async fn show(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn console_shows_replicas_pools_clients_and_stats() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let app = proxy.app().await;
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let replicas = show(&admin, "SHOW REPLICAS").await;
    let replica = replicas.iter().find(|r| r[1] == "replica").expect("a replica row");
    assert_eq!((replica[3].as_str(), replica[4].as_str()), ("up", "yes"), "{replica:?}");
    assert_eq!(replica[9], "ok");
    let pools = show(&admin, "show pools;").await;
    assert_eq!(pools.len(), 2);
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert!(clients.iter().any(|c| c[1] == "app"), "{clients:?}");
    let stats = show(&admin, "SHOW STATS").await;
    let replica_statements: u64 = stats.iter().find(|r| r[1] == "replica").unwrap()[2].parse().unwrap();
    assert!(replica_statements >= 5);
    // A DBA takes the replica out of the read rotation (maintenance) and back.
    let name = replica[0].clone();
    admin.simple_query(&format!("DISABLE REPLICA {name}")).await.unwrap();
    let row = show(&admin, "SHOW REPLICAS")
        .await
        .into_iter()
        .find(|r| r[0] == name)
        .unwrap();
    assert_eq!(row[4], "disabled");
    let noryw = proxy.connect("noryw", "noryw").await.unwrap();
    for _ in 0..3 {
        assert!(
            !crate::harness::on_replica_simple(&noryw).await,
            "a disabled replica served a read"
        );
    }
    admin.simple_query(&format!("enable replica {name}")).await.unwrap();
    assert!(
        crate::harness::on_replica_simple(&noryw).await,
        "the enabled replica serves reads again"
    );
    let e = admin.simple_query("DISABLE REPLICA nosuch/replica9").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    let e = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42601");
    assert_eq!(
        show(&admin, "SHOW VERSION").await.len(),
        1,
        "console still usable after an error"
    );
}

#[tokio::test]
async fn reload_applies_a_valid_config_and_keeps_the_old_one_otherwise() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "max_replica_lag = \"1s\"")).await;
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let app = proxy.app().await;
    std::fs::write(&proxy.config_path, topo.config("", "max_replica_lag = \"7s\"")).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        proxy.shared.runtime.load().config.routing.max_lag,
        std::time::Duration::from_secs(7)
    );
    std::fs::write(
        &proxy.config_path,
        topo.config("", "max_replica_lag = \"7s\"\nwhen_no_replica = \"sometimes\""),
    )
    .unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("when_no_replica"), "{e:?}");
    assert_eq!(
        proxy.shared.runtime.load().config.routing.max_lag,
        std::time::Duration::from_secs(7),
        "the running config stays"
    );
    assert_eq!(
        app.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0),
        3,
        "clients unaffected"
    );
}

pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Adding and removing a replica by RELOAD keeps the connections to the nodes that did not
/// change: the primary's server process stays the same across both reloads (before, the shard's
/// pools were all rebuilt and every connection to it reopened).
#[tokio::test]
async fn a_replica_added_and_removed_at_runtime_drops_no_connection_to_the_primary() {
    let topo = shared();
    let with = topo.config("", "");
    let replicas = format!(
        "replicas = [\"postgres://postgres@127.0.0.1:{}/app\"]",
        topo.replica_port
    );
    assert!(with.contains(&replicas));
    let without = with.replace(&replicas, "replicas = []");
    let proxy = Proxy::start(&without).await;
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let app = proxy.connect("noryw", "noryw").await.unwrap();
    let primary_pid = || async {
        app.query_one("SELECT pg_backend_pid() /* shardwire: primary */", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let before = primary_pid().await;
    assert_eq!(primary_pid().await, before, "one idle connection, reused");
    let node = || proxy.shared.runtime.load().clusters[0].primary.clone();
    let primary_node = node();

    std::fs::write(&proxy.config_path, &with).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(proxy.shared.runtime.load().clusters[0].replicas.len(), 1);
    assert!(
        std::sync::Arc::ptr_eq(&node(), &primary_node),
        "the primary's node kept"
    );
    assert_eq!(primary_pid().await, before, "the primary's connection kept");
    proxy.wait_replicas_in_rotation().await;
    assert!(crate::harness::on_replica(&app).await, "the added replica serves reads");

    std::fs::write(&proxy.config_path, &without).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert!(proxy.shared.runtime.load().clusters[0].replicas.is_empty());
    assert_eq!(primary_pid().await, before, "the primary's connection kept");
    assert!(!crate::harness::on_replica(&app).await, "reads back on the primary");

    // The same from the console: the file is edited in place and reloaded.
    let url = format!("postgres://postgres@127.0.0.1:{}/app", topo.replica_port);
    admin.simple_query(&format!("ADD REPLICA main '{url}'")).await.unwrap();
    let file = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(file.contains(&url), "written back: {file}");
    assert_eq!(proxy.shared.runtime.load().clusters[0].replicas.len(), 1);
    assert_eq!(primary_pid().await, before, "the primary's connection kept");
    proxy.wait_replicas_in_rotation().await;
    assert!(crate::harness::on_replica(&app).await, "the added replica serves reads");
    // Mistakes are refused, naming the reason; the file and the running configuration stay.
    let refused = |sql: String| {
        let admin = &admin;
        async move {
            let e = admin.simple_query(&sql).await.unwrap_err();
            e.as_db_error().unwrap().message().to_owned()
        }
    };
    let m = refused(format!("ADD REPLICA main '{url}'")).await;
    assert!(m.contains("already has this replica"), "{m}");
    let m = refused("ADD REPLICA nosuch 'postgres://postgres@127.0.0.1:1/app'".into()).await;
    assert!(m.contains("no shard named nosuch") && m.contains("main"), "{m}");
    let m = refused("ADD REPLICA main 'postgres://postgres@127.0.0.1:1/app'".into()).await;
    assert!(
        m.contains("not reachable") && m.contains("127.0.0.1:1"),
        "an unreachable node: {m}"
    );
    let m = refused("ADD REPLICA main".into()).await;
    assert!(m.contains("single quotes"), "{m}");
    assert_eq!(
        std::fs::read_to_string(&proxy.config_path).unwrap(),
        file,
        "the file stays"
    );
    assert_eq!(proxy.shared.runtime.load().clusters[0].replicas.len(), 1);
    admin
        .simple_query(&format!("REMOVE REPLICA main '{url}'"))
        .await
        .unwrap();
    assert!(proxy.shared.runtime.load().clusters[0].replicas.is_empty());
    assert!(!std::fs::read_to_string(&proxy.config_path).unwrap().contains(&url));
    assert_eq!(primary_pid().await, before, "the primary's connection kept");
}

#[tokio::test]
async fn metrics_and_health_over_http() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    proxy.app().await.simple_query("SELECT 1").await.unwrap();
    let http = proxy.bound.http.unwrap();
    proxy
        .wait_for("primary checked", |s| {
            s.runtime.load().clusters[0].primary.health.load().checked.is_some()
        })
        .await;
    let health = http_get(http, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("shardwire_statements_total{node=\"main/replica0\",role=\"replica\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shardwire_node_in_rotation{node=\"main/replica0\",role=\"replica\"} 1"),
        "{metrics}"
    );
    assert!(http_get(http, "/nope").await.starts_with("HTTP/1.1 404"));
}
