//! The test topology and an in-process shardwire in front of it.
//!
//! Each topology (a primary and one streaming replica) is started once per test run by a keeper
//! thread that owns the servers: they die with the test process (parent-death signal), and stop
//! and start requests go to that thread. `shared()` serves tests that do not disturb it;
//! `faults()` is for tests that pause, stop or restart servers, one at a time.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use shardwire::app::Shared;
use shardwire::sandbox::Sandbox;
use shardwire::serve::Bound;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

enum Cmd {
    EnsureRunning,
    StopReplica,
    StartReplica,
    StopPrimary,
    StartPrimary,
}

type Request = (Cmd, mpsc::Sender<Result<(), String>>);

pub struct Topology {
    pub primary_port: u16,
    pub replica_port: u16,
    cmds: Mutex<mpsc::Sender<Request>>,
}

impl Topology {
    fn start() -> Topology {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                let mut sb = match Sandbox::start(1) {
                    Ok(sb) => sb,
                    Err(e) => return ready_tx.send(Err(format!("{e:#}"))).unwrap(),
                };
                ready_tx.send(Ok((sb.primary.port, sb.replicas[0].port))).unwrap();
                // Serve stop/start requests for as long as the test process lives.
                while let Ok((cmd, reply)) = rx.recv() {
                    let r = match cmd {
                        Cmd::EnsureRunning => sb
                            .primary
                            .ensure_running()
                            .and_then(|()| sb.replicas[0].ensure_running()),
                        Cmd::StopReplica => {
                            sb.replicas[0].stop();
                            Ok(())
                        }
                        Cmd::StartReplica => sb.replicas[0].start(),
                        Cmd::StopPrimary => {
                            sb.primary.stop();
                            Ok(())
                        }
                        Cmd::StartPrimary => sb.primary.start(),
                    };
                    let _ = reply.send(r.map_err(|e| format!("{e:#}")));
                }
                std::thread::park();
            })
            .expect("spawn keeper thread");
        let (primary_port, replica_port) = ready_rx.recv().unwrap().expect("sandbox starts");
        Topology {
            primary_port,
            replica_port,
            cmds: Mutex::new(tx),
        }
    }

    fn send(&self, cmd: Cmd) {
        let (tx, rx) = mpsc::channel();
        self.cmds.lock().unwrap().send((cmd, tx)).unwrap();
        rx.recv().unwrap().expect("keeper command");
    }

    pub fn stop_replica(&self) {
        self.send(Cmd::StopReplica)
    }
    pub fn start_replica(&self) {
        self.send(Cmd::StartReplica)
    }
    pub fn stop_primary(&self) {
        self.send(Cmd::StopPrimary)
    }
    pub fn start_primary(&self) {
        self.send(Cmd::StartPrimary)
    }

    /// A direct connection to the primary (superuser, trust).
    pub async fn primary(&self) -> Client {
        direct(self.primary_port).await
    }

    /// A direct connection to the replica.
    pub async fn replica(&self) -> Client {
        direct(self.replica_port).await
    }

    /// A config with the users the tests log in as; `routing` and `extra` go in their sections.
    pub fn config(&self, server_extra: &str, routing: &str) -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_http = "127.0.0.1:0"
{server_extra}
[pool]
max_size = 10
checkout_timeout = "3s"
connect_timeout = "2s"
[routing]
lag_check_interval = "100ms"
{routing}
[[users]]
name = "app"
password = "app"
[[users]]
name = "md5user"
password = "md5pass"
auth = "md5"
[[users]]
name = "trusted"
auth = "trust"
[[users]]
name = "noryw"
password = "noryw"
read_your_writes = false
[[users]]
name = "admin"
password = "admin"
admin = true
[[shards]]
name = "main"
primary = "postgres://postgres@127.0.0.1:{}/app"
replicas = ["postgres://postgres@127.0.0.1:{}/app"]
"#,
            self.primary_port, self.replica_port
        )
    }
}

pub async fn direct(port: u16) -> Client {
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("app")
        .connect(NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(conn);
    c
}

static SHARED: OnceLock<Topology> = OnceLock::new();
static FAULTS: OnceLock<Topology> = OnceLock::new();
static FAULT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The topology most tests share. Tests must leave it as they found it.
pub fn shared() -> &'static Topology {
    SHARED.get_or_init(Topology::start)
}

/// The topology fault tests disturb, with a guard that keeps them one at a time. Whatever an
/// earlier (possibly failed) fault test left behind is undone first: servers running, replay
/// resumed, replica settings the tests change reset.
pub async fn faults() -> (&'static Topology, tokio::sync::MutexGuard<'static, ()>) {
    let guard = FAULT_LOCK.lock().await;
    let topo = tokio::task::spawn_blocking(|| {
        let t = FAULTS.get_or_init(Topology::start);
        t.send(Cmd::EnsureRunning);
        t
    })
    .await
    .unwrap();
    let r = topo.replica().await;
    r.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    // Only what tests set: pg_basebackup -R keeps primary_conninfo in the same file.
    r.batch_execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        .await
        .unwrap();
    r.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    replica_caught_up(topo).await;
    (topo, guard)
}

/// shardwire running in this test's runtime; stops when dropped.
pub struct Proxy {
    pub bound: Bound,
    pub shared: Arc<Shared>,
    pub config_path: std::path::PathBuf,
    /// A shard map file the test wrote for this proxy (`shards::ShardTopology::config`).
    map_path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_file(&self.config_path);
        if let Some(map) = &self.map_path {
            let _ = std::fs::remove_file(map);
        }
    }
}

impl Proxy {
    pub async fn start(config_text: &str) -> Proxy {
        static LOGS: std::sync::Once = std::sync::Once::new();
        LOGS.call_once(|| {
            // RUST_LOG=shardwire=debug shows the proxy's logs with a failing test's output.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        });
        let path = std::env::temp_dir().join(format!("shardwire-test-{}.toml", rand_suffix()));
        std::fs::write(&path, config_text).unwrap();
        let config = shardwire::config::load(&path).expect("test config is valid");
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = shutdown.clone();
        let p = path.clone();
        // On a runtime of its own, as `shardwire serve` runs it: threads with the stack that
        // statement analysis needs.
        std::thread::spawn(move || {
            shardwire::serve::block_on(1, async move {
                shardwire::serve::run(config, Some(p), token, move |b, s| {
                    let _ = tx.send((b, s));
                })
                .await
                .unwrap();
            })
            .unwrap();
        });
        let (bound, shared) = rx.await.unwrap();
        let map_path = config_text
            .lines()
            .find_map(|l| l.trim().strip_prefix("map = \""))
            .map(|rest| std::path::PathBuf::from(rest.trim_end_matches('"')))
            .filter(|p| p.starts_with(std::env::temp_dir()));
        Proxy {
            bound,
            shared,
            config_path: path,
            map_path,
            shutdown,
        }
    }

    /// Starts shutdown (as SIGTERM does).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    pub fn port(&self) -> u16 {
        self.bound.pg.port()
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/app", self.port())
    }

    pub async fn connect(&self, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
        self.connect_db(user, password, "app").await
    }

    pub async fn connect_db(&self, user: &str, password: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("client connection ended: {e:?}");
            }
        });
        Ok(c)
    }

    pub async fn app(&self) -> Client {
        self.connect("app", "app").await.expect("app login")
    }

    /// Waits until every replica is in rotation.
    pub async fn wait_replicas_in_rotation(&self) {
        self.wait_for("replica in rotation", |s| {
            s.runtime
                .load()
                .clusters
                .iter()
                .flat_map(|c| c.replicas.iter())
                .all(|r| r.health.load().in_rotation)
        })
        .await;
    }

    pub async fn wait_for(&self, what: &str, cond: impl Fn(&Shared) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !cond(&self.shared) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// `SELECT pg_is_in_recovery()` through a client: true when it ran on a replica.
pub async fn on_replica(c: &impl tokio_postgres::GenericClient) -> bool {
    c.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0)
}

/// The same through the simple protocol.
pub async fn on_replica_simple(c: &Client) -> bool {
    let rows = c.simple_query("SELECT pg_is_in_recovery()").await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0) == Some("t")),
            _ => None,
        })
        .unwrap()
}

/// A table name unique to the calling test.
pub fn table(prefix: &str) -> String {
    format!("{prefix}_{}", rand_suffix().replace('-', "_"))
}

/// Waits until the replica has replayed everything the primary has written so far.
pub async fn replica_caught_up(topo: &Topology) {
    let p = topo.primary().await;
    let r = topo.replica().await;
    let lsn: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..500 {
        let ok: bool = r
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn])
            .await
            .unwrap()
            .get(0);
        if ok {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("replica did not catch up");
}

/// A single integer read straight from the primary (row counts and the like).
pub async fn primary_i64(topo: &Topology, sql: &str) -> i64 {
    topo.primary().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// A primary with `replicas` streaming replicas of this test's own, for tests that stop, kill or
/// promote its servers (the shared topologies must stay whole for the others). Started from a
/// thread that stays (parked) for the rest of the run: the servers die with the thread that
/// started them (parent-death signal), and a pooled blocking thread exits when idle.
pub async fn own_sandbox(replicas: usize) -> shardwire::sandbox::Sandbox {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(shardwire::sandbox::Sandbox::start(replicas));
        loop {
            std::thread::park();
        }
    });
    rx.await.unwrap().expect("a sandbox of the test's own")
}

/// A config serving `sb` as one shard (100 ms checks), with the users `app` and `admin`.
pub fn sandbox_config(sb: &shardwire::sandbox::Sandbox, connect_timeout: &str) -> String {
    let url = |port: u16| format!("\"postgres://postgres@127.0.0.1:{port}/app\"");
    let replicas: Vec<String> = sb.replicas.iter().map(|r| url(r.port)).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[pool]
max_size = 10
connect_timeout = "{connect_timeout}"
[routing]
lag_check_interval = "100ms"
[[users]]
name = "app"
password = "app"
[[users]]
name = "admin"
password = "admin"
admin = true
[[shards]]
name = "main"
primary = {}
replicas = [{}]
"#,
        url(sb.primary.port),
        replicas.join(", ")
    )
}
