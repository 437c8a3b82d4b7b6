//! A whole shard added and removed at runtime through the configuration files and SIGHUP, on the
//! `shardwire serve` binary, while clients read and write (simple and extended protocol,
//! transactions): no client sees an error, connections to the unchanged shards stay open, the new
//! shard's pool is created when a statement needs it and drained once the shard is removed; an
//! invalid change sent the same way leaves the running configuration serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::rand_suffix;
use crate::shards::sharded;

fn map(version: u64, shards: &[&str]) -> String {
    let list: Vec<String> = shards.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "version = {version}\nshards = [{}]\ndefault_shard = \"s0\"\n\
         [groups.g]\nkey_type = \"bigint\"\npartitioning = {{ kind = \"hash\", partitions = 16 }}\n\
         assignment = {{ s0 = \"0-7\", s1 = \"8-15\" }}\n\
         [tables.topo_users]\ngroup = \"g\"\nkey = \"id\"\n",
        list.join(", ")
    )
}

fn config(port: u16, shard_ports: &[u16], n: usize) -> String {
    let mut c = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[pool]\nmax_size = 8\nconnect_timeout = \"2s\"\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n\
         [[users]]\nname = \"admin\"\npassword = \"admin\"\nadmin = true\n\
         [sharding]\nmap = \"map.toml\"\n"
    );
    for (i, p) in shard_ports.iter().take(n).enumerate() {
        c.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nprimary = \"postgres://postgres@127.0.0.1:{p}/app\"\n"
        ));
    }
    c
}

async fn connect(port: u16, user: &str, db: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={user} dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c
}

async fn shard_names(admin: &tokio_postgres::Client) -> Vec<String> {
    admin
        .simple_query("SHOW SHARDS")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Connections other than `c`'s own to the database `app` of a shard.
async fn connections(c: &tokio_postgres::Client) -> Vec<i32> {
    c.query(
        "SELECT pid FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid() \
         AND application_name <> 'shardwire-monitor' ORDER BY pid",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `shardwire serve`, killed (SIGKILL) when the test ends however it ends.
pub(crate) struct Serve(pub(crate) std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hangup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_and_removed_through_sighup_under_load() {
    let (topo, _guard) = sharded().await;
    let dir = std::env::temp_dir().join(format!("shardwire-topo-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::cluster::free_port();
    let ports = &topo.shard_ports;
    std::fs::write(dir.join("map.toml"), map(1, &["s0", "s1"])).unwrap();
    std::fs::write(dir.join("shardwire.toml"), config(port, ports, 2)).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardwire"))
        .args(["serve", "--config"])
        .arg(dir.join("shardwire.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let child = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "shardwire serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let direct: Vec<tokio_postgres::Client> = {
        let mut v = Vec::new();
        for p in ports {
            v.push(crate::harness::direct(*p).await);
        }
        v
    };
    for d in &direct {
        d.batch_execute("DROP TABLE IF EXISTS topo_users; DROP TABLE IF EXISTS topo_other")
            .await
            .unwrap();
    }
    let app = connect(port, "app", "app").await;
    app.batch_execute("CREATE TABLE topo_users (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let admin = connect(port, "admin", "shardwire").await;
    assert_eq!(shard_names(&admin).await, ["s0", "s1"]);

    // Load: writes and reads by key, both protocols, transactions over both shards.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for w in 0..4i64 {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        let c = connect(port, "app", "app").await;
        load.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                let k = w * 1_000_000 + i % 500;
                let r = match i % 3 {
                    0 => c
                        .execute(
                            "INSERT INTO topo_users (id, v) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET v = topo_users.v + 1",
                            &[&k],
                        )
                        .await
                        .map(drop),
                    1 => c
                        .simple_query(&format!("SELECT v FROM topo_users WHERE id = {k}"))
                        .await
                        .map(drop),
                    _ => async {
                        c.batch_execute("BEGIN").await?;
                        c.batch_execute(&format!("UPDATE topo_users SET v = v + 1 WHERE id = {k}")).await?;
                        c.execute("UPDATE topo_users SET v = v + 1 WHERE id = $1", &[&(k + 7)]).await?;
                        c.batch_execute("COMMIT").await
                    }
                    .await,
                };
                match r {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("client error: {e:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<Vec<i32>> = {
        let mut v = Vec::new();
        for d in &direct[..2] {
            v.push(connections(d).await);
        }
        v
    };

    // Add s2 (no partitions yet: nothing moves) and SIGHUP.
    std::fs::write(dir.join("shardwire.toml"), config(port, ports, 3)).unwrap();
    std::fs::write(dir.join("map.toml"), map(2, &["s0", "s1", "s2"])).unwrap();
    hangup(child.0.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard_names(&admin).await != ["s0", "s1", "s2"] {
        assert!(
            Instant::now() < deadline,
            "s2 not added: {:?}",
            shard_names(&admin).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // DDL reaches every shard: s2's pool is created.
    app.batch_execute("CREATE TABLE topo_other (x int)").await.unwrap();
    assert!(
        !connections(&direct[2]).await.is_empty(),
        "a connection to the new shard"
    );

    // An invalid change the same way: refused, the running map keeps serving.
    std::fs::write(
        dir.join("map.toml"),
        map(3, &["s0", "s1", "s2"]).replace("8-15", "8-14"),
    )
    .unwrap();
    hangup(child.0.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shard_names(&admin).await, ["s0", "s1", "s2"]);
    app.batch_execute("SELECT count(*) FROM topo_users").await.unwrap();

    // Remove s2 again: its pool is drained, its connections closed.
    std::fs::write(dir.join("shardwire.toml"), config(port, ports, 2)).unwrap();
    std::fs::write(dir.join("map.toml"), map(4, &["s0", "s1"])).unwrap();
    hangup(child.0.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard_names(&admin).await != ["s0", "s1"] {
        assert!(
            Instant::now() < deadline,
            "s2 not removed: {:?}",
            shard_names(&admin).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = connections(&direct[2]).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections to the removed shard still open: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "client errors; log:\n{log}");
    assert!(done.load(Ordering::Relaxed) > 100, "the load ran");
    assert!(
        log.contains("8-14") || log.contains("partition"),
        "the refused change is logged:\n{log}"
    );
    for (i, d) in direct[..2].iter().enumerate() {
        let now = connections(d).await;
        let dropped: Vec<&i32> = before[i].iter().filter(|p| !now.contains(p)).collect();
        assert!(
            dropped.is_empty(),
            "connections to s{i} dropped by the changes: {dropped:?}"
        );
    }
    drop(child);
    for d in &direct {
        d.batch_execute("DROP TABLE IF EXISTS topo_users; DROP TABLE IF EXISTS topo_other")
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
