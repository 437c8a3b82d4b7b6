//! The MySQL front end against real MariaDB servers: a primary with a binlog (GTID) replica,
//! driven by mysql_async and the mariadb command-line client.

use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use shardwire::sandbox_mysql::MariaSandbox;

use crate::harness::Proxy;

/// The MariaDB primary and replica the MySQL tests share. Tests leave replication running.
pub fn maria() -> &'static MariaSandbox {
    static TOPO: OnceLock<&'static MariaSandbox> = OnceLock::new();
    TOPO.get_or_init(|| lasting(|| MariaSandbox::start(1)))
}

/// Starts servers on a thread that outlives every test (they die with the thread that started
/// them), for the rest of the run.
pub fn lasting(start: impl FnOnce() -> anyhow::Result<MariaSandbox> + Send + 'static) -> &'static MariaSandbox {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sb: &'static MariaSandbox = Box::leak(Box::new(start().expect("MariaDB sandbox")));
        tx.send(sb).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("MariaDB sandbox thread")
}

/// Tests that stop replication take it for writing; those that need the replica, for reading.
pub static REPLICATION: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A proxy in front of the shared pair, with replication guaranteed running while it lives.
pub struct MyProxy {
    pub proxy: Proxy,
    _replication: tokio::sync::RwLockReadGuard<'static, ()>,
}

impl std::ops::Deref for MyProxy {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

/// A configuration in front of `sb`; `extra` goes into `[server]`.
pub fn config(sb: &MariaSandbox, extra: &str) -> String {
    let replicas: Vec<String> = sb.replicas.iter().map(|r| format!("\"{}\"", sb.url(r))).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
mysql_listen = "127.0.0.1:0"
{extra}
[pool]
max_size = 10
checkout_timeout = "3s"
connect_timeout = "2s"
[routing]
lag_check_interval = "100ms"
healthy_after = 2
[[users]]
name = "app"
password = "app"
[[users]]
name = "trusted"
auth = "trust"
[[users]]
name = "admin"
password = "admin"
admin = true
[[shards]]
name = "main"
primary = "{}"
replicas = [{}]
"#,
        sb.url(&sb.primary),
        replicas.join(", ")
    )
}

/// Client options for the proxy's MySQL port.
pub fn opts(proxy: &Proxy, user: &str, password: &str) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(proxy.bound.mysql.expect("mysql listener").port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("app"))
        .prefer_socket(false)
        .into()
}

pub async fn connect(proxy: &Proxy) -> Conn {
    Conn::new(opts(proxy, "app", "app"))
        .await
        .expect("login through shardwire")
}

/// Starts a proxy in front of the shared MariaDB pair and waits for the replica to serve reads.
pub async fn proxy() -> MyProxy {
    let guard = REPLICATION.read().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "")).await;
    wait_replica(&p, true).await;
    MyProxy {
        proxy: p,
        _replication: guard,
    }
}

pub async fn wait_replica(p: &Proxy, in_rotation: bool) {
    p.wait_for("MySQL replica rotation", |s| {
        s.runtime
            .load()
            .mysql
            .iter()
            .flat_map(|sh| sh.replicas.iter())
            .all(|r| r.health.load().in_rotation == in_rotation)
    })
    .await;
}

/// The mariadb command-line client logged in to the proxy at `port` as `app`, printing bare
/// tab-separated rows.
pub fn mariadb_cli(port: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("mariadb");
    c.args([
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-P",
        port,
        "-u",
        "app",
        "-papp",
        "app",
        "-N",
        "-B",
    ]);
    c
}

/// Which server answered: the primary has server id 1, the replica 2.
pub async fn server_id(c: &mut Conn, sql: &str) -> u32 {
    c.query_first::<u32, _>(sql).await.unwrap().unwrap()
}

#[tokio::test]
async fn clients_log_in_and_wrong_passwords_are_refused() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    let v: Option<i64> = c.query_first("SELECT 40 + 2").await.unwrap();
    assert_eq!(v, Some(42));
    let bad = Conn::new(opts(&p, "app", "wrong")).await.unwrap_err();
    assert!(bad.to_string().contains("Access denied"), "{bad}");
    let unknown = Conn::new(opts(&p, "nobody", "x")).await.unwrap_err();
    assert!(
        unknown.to_string().contains("1045") || unknown.to_string().contains("Access denied"),
        "{unknown}"
    );
    // A user without a password (auth = "trust").
    let mut t = Conn::new(opts(&p, "trusted", "")).await.expect("trusted login");
    t.query_drop("SELECT 1").await.unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn reads_go_to_the_replica_and_writes_to_the_primary() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 2, "a plain read");
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id /* shardwire: primary */").await,
        1
    );
    c.query_drop("CREATE TABLE IF NOT EXISTS rw_split (id INT PRIMARY KEY, v TEXT)")
        .await
        .unwrap();
    c.query_drop("DELETE FROM rw_split").await.unwrap();
    c.query_drop("INSERT INTO rw_split VALUES (1, 'one')").await.unwrap();
    // Read-your-writes: the row is there at once, wherever the read went.
    let v: Option<String> = c.query_first("SELECT v FROM rw_split WHERE id = 1").await.unwrap();
    assert_eq!(v.as_deref(), Some("one"));
    for locking in [
        "SELECT @@server_id FROM rw_split WHERE id = 1 FOR UPDATE",
        "SELECT @@server_id FROM rw_split WHERE id = 1 LOCK IN SHARE MODE",
    ] {
        assert_eq!(server_id(&mut c, locking).await, 1, "{locking}");
    }
    // A named lock lives on its connection: the session keeps it (on the primary) from then on.
    let mut locker = connect(&p).await;
    assert_eq!(
        server_id(&mut locker, "SELECT @@server_id + 0 * GET_LOCK('held-here', 0)").await,
        1
    );
    assert_eq!(server_id(&mut locker, "SELECT @@server_id").await, 1);
    let mine: Option<i64> = locker
        .query_first("SELECT IS_USED_LOCK('held-here') = CONNECTION_ID()")
        .await
        .unwrap();
    assert_eq!(mine, Some(1), "the lock is held by the session's own connection");
    locker.query_drop("DO RELEASE_LOCK('held-here')").await.unwrap();
    // Transactions run on the primary, read-only ones may use the replica.
    c.query_drop("BEGIN").await.unwrap();
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 1);
    c.query_drop("COMMIT").await.unwrap();
    c.query_drop("START TRANSACTION READ ONLY").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 2);
    c.query_drop("COMMIT").await.unwrap();
}

#[tokio::test]
async fn transactions_commit_roll_back_and_follow_autocommit() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    c.query_drop("CREATE TABLE IF NOT EXISTS tx_t (id INT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    c.query_drop("DELETE FROM tx_t").await.unwrap();
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop("INSERT INTO tx_t VALUES (1, 10)").await.unwrap();
    let seen: Option<i64> = c.query_first("SELECT COUNT(*) FROM tx_t").await.unwrap();
    assert_eq!(seen, Some(1), "own write inside the transaction");
    c.query_drop("ROLLBACK").await.unwrap();
    let after: Option<i64> = c.query_first("SELECT COUNT(*) FROM tx_t").await.unwrap();
    assert_eq!(after, Some(0));
    // autocommit = 0: every statement is in a transaction until COMMIT.
    c.query_drop("SET autocommit = 0").await.unwrap();
    c.query_drop("INSERT INTO tx_t VALUES (2, 20)").await.unwrap();
    let mut other = connect(&p).await;
    let outside: Option<i64> = other
        .query_first("SELECT COUNT(*) FROM tx_t /* shardwire: primary */")
        .await
        .unwrap();
    assert_eq!(outside, Some(0), "uncommitted under autocommit = 0");
    c.query_drop("COMMIT").await.unwrap();
    let committed: Option<i64> = other
        .query_first("SELECT COUNT(*) FROM tx_t /* shardwire: primary */")
        .await
        .unwrap();
    assert_eq!(committed, Some(1));
    let ac: Option<i64> = c.query_first("SELECT @@autocommit").await.unwrap();
    assert_eq!(
        ac,
        Some(0),
        "the session's autocommit follows it to the next connection"
    );
    c.query_drop("SET autocommit = 1").await.unwrap();
    let ac: Option<i64> = other.query_first("SELECT @@autocommit").await.unwrap();
    assert_eq!(ac, Some(1), "another session's setting does not leak");
}

#[tokio::test]
async fn settings_follow_the_session_and_never_leak() {
    let p = proxy().await;
    let mut a = connect(&p).await;
    let mut b = connect(&p).await;
    a.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES'").await.unwrap();
    for _ in 0..5 {
        let m: Option<String> = a.query_first("SELECT @@sql_mode").await.unwrap();
        assert_eq!(m.as_deref(), Some("ANSI_QUOTES"));
        let m: Option<String> = b.query_first("SELECT @@sql_mode").await.unwrap();
        assert_ne!(m.as_deref(), Some("ANSI_QUOTES"), "another client's setting");
    }
    // A user variable pins the session to its connection: it is still there.
    a.query_drop("SET @mine = 41").await.unwrap();
    let v: Option<i64> = a.query_first("SELECT @mine + 1").await.unwrap();
    assert_eq!(v, Some(42));
    let v: Option<Option<i64>> = b.query_first("SELECT @mine").await.unwrap();
    assert_eq!(v, Some(None));
    // A bad setting is the server's error, and the session goes on.
    let e = a.query_drop("SET SESSION no_such_variable = 1").await.unwrap_err();
    assert!(
        e.to_string().contains("1193") || e.to_string().contains("Unknown system variable"),
        "{e}"
    );
    let one: Option<i64> = a.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

#[tokio::test]
async fn prepared_statements_run_on_any_connection() {
    let p = proxy().await;
    let mut c = connect(&p).await;
    c.query_drop("CREATE TABLE IF NOT EXISTS ps_t (id BIGINT PRIMARY KEY, name VARCHAR(20))")
        .await
        .unwrap();
    c.query_drop("DELETE FROM ps_t").await.unwrap();
    let insert = c.prep("INSERT INTO ps_t (id, name) VALUES (?, ?)").await.unwrap();
    for i in 0..20i64 {
        c.exec_drop(&insert, (i, format!("n{i}"))).await.unwrap();
    }
    let select = c.prep("SELECT name FROM ps_t WHERE id = ?").await.unwrap();
    // Executions go to different pooled connections (replica and primary); each prepares it.
    for i in 0..20i64 {
        let n: Option<String> = c.exec_first(&select, (i,)).await.unwrap();
        assert_eq!(n, Some(format!("n{i}")));
    }
    let none: Option<String> = c.exec_first(&select, (999i64,)).await.unwrap();
    assert_eq!(none, None);
    let nulls: Vec<(i64, Option<String>)> = c
        .exec(
            "SELECT id, NULLIF(name, name) FROM ps_t WHERE id < ? ORDER BY id",
            (3i64,),
        )
        .await
        .unwrap();
    assert_eq!(nulls, vec![(0, None), (1, None), (2, None)]);
    c.close(select).await.unwrap();
    // Many clients preparing the same text share it on the servers' connections.
    let mut tasks = Vec::new();
    for t in 0..4i64 {
        let o = opts(&p, "app", "app");
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(o).await.unwrap();
            for i in 0..10i64 {
                let n: Option<String> = c
                    .exec_first("SELECT name FROM ps_t WHERE id = ?", ((t * 5 + i) % 20,))
                    .await
                    .unwrap();
                assert_eq!(n, Some(format!("n{}", (t * 5 + i) % 20)));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn the_mariadb_client_runs_multi_statements() {
    let p = proxy().await;
    let port = p.bound.mysql.unwrap().port().to_string();
    let out = mariadb_cli(&port)
        .args([
            "-e",
            "SELECT 1; SELECT 'two'; CREATE TABLE IF NOT EXISTS cli_t (a INT); SELECT COUNT(*) >= 0 FROM cli_t",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\ntwo\n1\n");
    let bad = mariadb_cli(&port)
        .args(["-e", "SELECT * FROM no_such_table"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("1146"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test]
async fn a_stopped_replica_sql_thread_moves_reads_to_the_primary_and_back() {
    let _g = REPLICATION.write().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "")).await;
    wait_replica(&p, true).await;
    let mut c = connect(&p).await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 2);
    sb.replicas[0].sql("STOP SLAVE SQL_THREAD").unwrap();
    let stopped = std::time::Instant::now();
    wait_replica(&p, false).await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "left rotation in {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        server_id(&mut c, "SELECT @@server_id").await,
        1,
        "reads fall back to the primary"
    );
    sb.replicas[0].sql("START SLAVE").unwrap();
    wait_replica(&p, true).await;
    assert_eq!(server_id(&mut c, "SELECT @@server_id").await, 2);
}

#[tokio::test]
async fn caching_sha2_and_tls_logins() {
    let _g = REPLICATION.read().await;
    let certs = crate::tls::Certs::new();
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let extra = format!(
        "mysql_auth = \"caching_sha2_password\"\n{}",
        certs.server_section("require")
    );
    let p = Proxy::start(&config(sb, &extra)).await;
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![certs.ca_file().into()])
        .with_danger_skip_domain_validation(true);
    let tls_opts = |user: &str, pw: &str| -> Opts {
        OptsBuilder::from_opts(opts(&p, user, pw))
            .ssl_opts(Some(ssl.clone()))
            .into()
    };
    // caching_sha2_password over TLS (the plugin the proxy offers first).
    let mut c = Conn::new(tls_opts("app", "app")).await.expect("TLS login");
    let v: Option<String> = c.query_first("SELECT 'over tls'").await.unwrap();
    assert_eq!(v.as_deref(), Some("over tls"));
    let wrong = Conn::new(tls_opts("app", "nope")).await.unwrap_err();
    assert!(wrong.to_string().contains("Access denied"), "{wrong}");
    // Without TLS the login is refused (mode = "require").
    let plain = Conn::new(opts(&p, "app", "app")).await.unwrap_err();
    assert!(plain.to_string().contains("TLS is required"), "{plain}");
    // The mariadb client over TLS, verifying the certificate.
    let port = p.bound.mysql.unwrap().port().to_string();
    let ca = certs.ca_file();
    let out = mariadb_cli(&port)
        .arg("--ssl")
        .arg(format!("--ssl-ca={}", ca.display()))
        .args(["-e", "SELECT 6 * 7"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
}

#[tokio::test]
async fn native_password_logins_by_clients_that_ask_for_another_plugin() {
    let p = proxy().await;
    // mysql_async logs in with the plugin the server names; the proxy names the native one and
    // also takes a caching_sha2 answer. A client asking for mysql_clear_password is switched.
    let mut c = connect(&p).await;
    c.query_drop("SELECT 1").await.unwrap();
    let port = p.bound.mysql.unwrap().port().to_string();
    let out = mariadb_cli(&port)
        .args(["--default-auth=mysql_clear_password", "-e", "SELECT 'switched'"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "switched\n");
}
