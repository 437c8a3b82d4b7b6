//! The sharded test topology: three shards (a primary each) and one reference database that holds
//! every row, started once per run by a keeper thread, plus the shard map the tests use.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use shardwire::sandbox::Sandbox;
use tokio_postgres::Client;

pub const SHARDS: usize = 3;

enum Cmd {
    Stop(usize),
    Start(usize),
}

type Request = (Cmd, mpsc::Sender<Result<(), String>>);

pub struct Sharded {
    pub shard_ports: Vec<u16>,
    pub reference_port: u16,
    cmds: Mutex<mpsc::Sender<Request>>,
}

/// The map: `users` and `orders` co-located by user id (hash, 64 partitions), `events` by range,
/// `countries` a reference table.
pub const MAP: &str = r#"
version = 1
shards = ["s0", "s1", "s2"]
default_shard = "s0"
[groups.users]
key_type = "bigint"
partitioning = { kind = "hash", partitions = 64 }
assignment = { s0 = "0-20", s1 = "21-41", s2 = "42-63" }
[groups.events]
key_type = "bigint"
partitioning = { kind = "range" }
ranges = [{ to = 1000, shard = "s0" }, { from = 1000, to = 2000, shard = "s1" }, { from = 2000, shard = "s2" }]
[tables.users]
group = "users"
key = "id"
[tables.orders]
group = "users"
key = "user_id"
[tables.events]
group = "events"
key = "id"
[tables.countries]
reference = true
"#;

impl Sharded {
    fn start() -> Sharded {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pg-shards".into())
            .spawn(move || {
                let mut boxes = Vec::new();
                for _ in 0..=SHARDS {
                    match Sandbox::start(0) {
                        Ok(b) => boxes.push(b),
                        Err(e) => return ready_tx.send(Err(format!("{e:#}"))).unwrap(),
                    }
                }
                let ports: Vec<u16> = boxes.iter().map(|b| b.primary.port).collect();
                ready_tx.send(Ok(ports)).unwrap();
                while let Ok((cmd, reply)) = rx.recv() {
                    let r = match cmd {
                        Cmd::Stop(i) => {
                            boxes[i].primary.stop();
                            Ok(())
                        }
                        Cmd::Start(i) => boxes[i].primary.start(),
                    };
                    let _ = reply.send(r.map_err(|e| format!("{e:#}")));
                }
                std::thread::park();
            })
            .expect("spawn keeper thread");
        let mut ports = ready_rx.recv().unwrap().expect("sandboxes start");
        let reference_port = ports.pop().unwrap();
        Sharded {
            shard_ports: ports,
            reference_port,
            cmds: Mutex::new(tx),
        }
    }

    fn send(&self, cmd: Cmd) {
        let (tx, rx) = mpsc::channel();
        self.cmds.lock().unwrap().send((cmd, tx)).unwrap();
        rx.recv().unwrap().expect("keeper command");
    }

    pub fn stop_shard(&self, i: usize) {
        self.send(Cmd::Stop(i))
    }

    pub fn start_shard(&self, i: usize) {
        self.send(Cmd::Start(i))
    }

    pub async fn shard(&self, i: usize) -> Client {
        super::harness::direct(self.shard_ports[i]).await
    }

    pub async fn reference(&self) -> Client {
        super::harness::direct(self.reference_port).await
    }

    /// A config serving the three shards with `map` (written next to it).
    pub fn config(&self, map: &str) -> String {
        let path = std::env::temp_dir().join(format!("shardwire-map-{}.toml", super::harness::rand_suffix()));
        std::fs::write(&path, map).unwrap();
        let mut shards = String::new();
        for (i, p) in self.shard_ports.iter().enumerate() {
            shards.push_str(&format!(
                "[[shards]]\nname = \"s{i}\"\nprimary = \"postgres://postgres@127.0.0.1:{p}/app\"\n"
            ));
        }
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[pool]
max_size = 10
checkout_timeout = "3s"
connect_timeout = "2s"
[routing]
lag_check_interval = "100ms"
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
[sharding]
map = "{}"
{shards}"#,
            path.display()
        )
    }
}

/// The shard map file a test configuration names (`[sharding] map = "..."`).
pub fn map_path(config: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix("map = \""))
        .map(|p| p.trim_end_matches('"').to_owned())
        .expect("the configuration names a map file")
}

static SHARDED: OnceLock<Sharded> = OnceLock::new();
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sharded topology, one test at a time (tests create and drop their own tables).
pub async fn sharded() -> (&'static Sharded, tokio::sync::MutexGuard<'static, ()>) {
    let guard = LOCK.lock().await;
    let s = tokio::task::spawn_blocking(|| SHARDED.get_or_init(Sharded::start))
        .await
        .unwrap();
    (s, guard)
}

/// The topology from blocking code (a test already holds the lock).
pub fn sharded_blocking() -> &'static Sharded {
    SHARDED.get_or_init(Sharded::start)
}
