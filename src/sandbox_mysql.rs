//! Local MariaDB topologies for `shardwire demo --mysql` and the integration tests: a primary
//! with binlog (GTID) replicas, made with the system's mariadb-install-db, in a temporary folder,
//! on free loopback ports. Servers die with the thread that started them (parent-death signal)
//! and with the [`MariaSandbox`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::sandbox::free_port;

/// Database created on the primary for clients.
pub const DATABASE: &str = "app";
/// The account shardwire logs in to the servers with (all privileges, from 127.0.0.1).
pub const BACKEND_USER: &str = "shardwire";
/// Its password.
pub const BACKEND_PASSWORD: &str = "backend-secret";

/// One MariaDB server.
pub struct MariaInstance {
    /// Loopback port.
    pub port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    server_id: u32,
    dir: PathBuf,
    name: String,
    child: Option<Child>,
}

/// A primary and its binlog replicas.
pub struct MariaSandbox {
    /// The folder everything lives in.
    pub dir: PathBuf,
    /// The primary.
    pub primary: MariaInstance,
    /// The replicas.
    pub replicas: Vec<MariaInstance>,
    keep: bool,
}

fn binary(names: &[&str]) -> Result<PathBuf> {
    for n in names {
        for d in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = Path::new(d).join(n);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    bail!("{} not found: install mariadb-server and mariadb-client", names[0])
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl MariaSandbox {
    /// Creates and starts a primary with `replicas` replicas following it by GTID. Blocking.
    pub fn start(replicas: usize) -> Result<MariaSandbox> {
        crate::sandbox::remove_abandoned();
        let mut attempt = 0;
        let dir = loop {
            let dir = std::env::temp_dir().join(format!("shardwire-{}-{}", std::process::id(), free_port()?));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 20 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let keep = std::env::var_os("SHARDWIRE_KEEP_SANDBOX").is_some();
        let mut primary = MariaInstance::new(&dir, "primary", 1)?;
        primary.install()?;
        primary.start()?;
        primary.sql(&format!(
            "CREATE DATABASE {DATABASE}; CREATE USER '{BACKEND_USER}'@'127.0.0.1' IDENTIFIED BY '{BACKEND_PASSWORD}'; \
             GRANT ALL ON *.* TO '{BACKEND_USER}'@'127.0.0.1' WITH GRANT OPTION;"
        ))?;
        let mut sandbox = MariaSandbox {
            dir: dir.clone(),
            primary,
            replicas: Vec::new(),
            keep,
        };
        for i in 0..replicas {
            let mut r = MariaInstance::new(&dir, &format!("replica{}", i + 1), i as u32 + 2)?;
            r.install()?;
            r.start()?;
            // From the primary's first binlog event on: the database and account follow.
            r.sql(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', MASTER_PASSWORD='', \
                 MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;",
                sandbox.primary.port
            ))?;
            sandbox.replicas.push(r);
        }
        Ok(sandbox)
    }

    /// A `mysql://` URL for `node` with the backend account.
    pub fn url(&self, node: &MariaInstance) -> String {
        format!(
            "mysql://{BACKEND_USER}:{BACKEND_PASSWORD}@127.0.0.1:{}/{DATABASE}",
            node.port
        )
    }
}

impl Drop for MariaSandbox {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.kill();
        }
        self.primary.kill();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl MariaInstance {
    fn new(dir: &Path, name: &str, server_id: u32) -> Result<MariaInstance> {
        Ok(MariaInstance {
            port: free_port()?,
            data_dir: dir.join(name),
            server_id,
            dir: dir.to_owned(),
            name: name.to_owned(),
            child: None,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }

    fn install(&self) -> Result<()> {
        let mut c = Command::new(binary(&["mariadb-install-db", "mysql_install_db"])?);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if is_root() {
            c.arg("--user=root");
        }
        let out = c.output().context("running mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = self.dir.join(format!("{}.log", self.name));
        let mut c = Command::new(binary(&["mariadbd", "mysqld"])?);
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir.display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--pid-file={}",
                self.dir.join(format!("{}.pid", self.name)).display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--server-id={}", self.server_id))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--log-bin=binlog",
                "--binlog-format=ROW",
                "--log-slave-updates",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--sync-binlog=0",
                "--max-connections=300",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ]);
        if is_root() {
            c.arg("--user=root");
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only sets this process's parent-death signal.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(c.spawn().context("starting mariadbd")?);
        let mut child = self.child.take();
        let ready =
            crate::sandbox::wait_ready("mariadbd", self.port, &mut child, &log, || self.sql("SELECT 1").is_ok());
        self.child = child;
        ready
    }

    /// Runs SQL as root over the server's socket with the mariadb client; its output (tab
    /// separated, no headers).
    pub fn sql(&self, sql: &str) -> Result<String> {
        let out = Command::new(binary(&["mariadb", "mysql"])?)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .context("running the mariadb client")?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child we spawned and have not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}
