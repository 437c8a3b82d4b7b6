//! Local PostgreSQL topologies for `shardwire demo` and the integration tests: a primary and
//! streaming replicas made with the system's initdb and pg_basebackup, in a temporary folder, on
//! free loopback ports. Run as the `postgres` user when the caller is root (initdb refuses root).
//! Servers die with the thread that started them (parent-death signal) and with the [`Sandbox`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One PostgreSQL server.
pub struct PgInstance {
    /// Loopback port.
    pub port: u16,
    /// Data directory.
    pub data_dir: PathBuf,
    bin: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

/// A primary and its streaming replicas.
pub struct Sandbox {
    /// The folder everything lives in.
    pub dir: PathBuf,
    /// The primary.
    pub primary: PgInstance,
    /// The replicas.
    pub replicas: Vec<PgInstance>,
    keep: bool,
}

/// Database created on the primary for clients.
pub const DATABASE: &str = "app";

/// pg_hba.conf lines put before the trust lines: role `sw_scram` must log in with
/// SCRAM-SHA-256 and role `sw_md5` with md5.
const PASSWORD_HBA: &str = "host all sw_scram 127.0.0.1/32 scram-sha-256\nhost all sw_md5 127.0.0.1/32 md5\n";

/// The directory of the PostgreSQL server binaries: `$SHARDWIRE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else whatever `pg_config --bindir` says.
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SHARDWIRE_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .context("no PostgreSQL server found: install postgresql")?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !p.join("postgres").exists() {
        bail!("no PostgreSQL server binaries found (set SHARDWIRE_PG_BIN)");
    }
    Ok(p)
}

/// Waits up to a minute until `ready()` says the server `name` on `port` accepts connections;
/// fails at once, with the end of its log, when its process exits first.
pub(crate) fn wait_ready(
    name: &str,
    port: u16,
    child: &mut Option<Child>,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{name} exited with {status}: {}",
                text.lines().rev().take(15).collect::<Vec<_>>().join("\n")
            );
        }
        if Instant::now() > deadline {
            bail!("{name} on port {port} did not become ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback port (bound and released; good enough for a private sandbox).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or NULL; read at once, before any other call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root and there is no `postgres` user to run PostgreSQL as");
    }
    // SAFETY: non-null pointer from getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

impl Sandbox {
    /// Creates and starts a primary with `replicas` streaming replicas. Blocking.
    pub fn start(replicas: usize) -> Result<Sandbox> {
        remove_abandoned();
        let bin = pg_bin_dir()?;
        let run_as = postgres_user()?;
        // A folder of its own: a killed run's folder may carry the same pid (pids are reused).
        let mut attempt = 0;
        let dir = loop {
            let dir = std::env::temp_dir().join(format!("shardwire-{}-{}", std::process::id(), free_port()?));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 20 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        own(&dir, run_as)?;
        let keep = std::env::var_os("SHARDWIRE_KEEP_SANDBOX").is_some();
        let mut primary = PgInstance::new(&bin, &dir, "primary", run_as)?;
        primary.initdb()?;
        primary.start()?;
        primary.run_tool(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                DATABASE,
            ],
        )?;
        let mut sandbox = Sandbox {
            dir: dir.clone(),
            primary,
            replicas: Vec::new(),
            keep,
        };
        for i in 0..replicas {
            let mut r = PgInstance::new(&bin, &dir, &format!("replica{i}"), run_as)?;
            let port = sandbox.primary.port.to_string();
            let target = r.data_dir.display().to_string();
            r.run_tool(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-D",
                    &target,
                    "-X",
                    "stream",
                    "-R",
                    "--checkpoint=fast",
                ],
            )?;
            r.start()?;
            sandbox.replicas.push(r);
        }
        Ok(sandbox)
    }

    /// A connection URL for a node, as the proxy config wants it.
    pub fn url(&self, node: &PgInstance) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", node.port)
    }
}

impl Drop for Sandbox {
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

/// Sandboxes of processes that no longer exist: a test run keeps its topology until the process
/// exits (servers die with it), so nothing removes the folder then. The next sandbox does.
pub(crate) fn remove_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("shardwire-")) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, port)| port.parse::<u16>().ok().and(p.parse::<i32>().ok()))
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn own(path: &Path, run_as: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl PgInstance {
    fn new(bin: &Path, dir: &Path, name: &str, run_as: Option<(u32, u32)>) -> Result<PgInstance> {
        Ok(PgInstance {
            port: free_port()?,
            data_dir: dir.join(name),
            bin: bin.to_owned(),
            socket_dir: dir.to_owned(),
            log: dir.join(format!("{name}.log")),
            run_as,
            child: None,
        })
    }

    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.env_remove("PGDATA").env("LC_ALL", "C").current_dir(&self.socket_dir);
        c
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn initdb(&self) -> Result<()> {
        let d = self.data_dir.display().to_string();
        let args = [
            "-D",
            &d,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ];
        self.run_tool("initdb", &args)?;
        // Everyone is trusted except two roles kept for testing how shardwire logs in to servers
        // that ask for a password (the roles themselves are created by whoever needs them).
        let hba = self.data_dir.join("pg_hba.conf");
        let trusted = std::fs::read_to_string(&hba)?;
        std::fs::write(&hba, format!("{PASSWORD_HBA}{trusted}"))?;
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut c = self.command("postgres");
        c.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir);
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "full_page_writes=off",
            "max_connections=300",
            "shared_buffers=64MB",
            // Logical: partition moves stream a partition's changes with PostgreSQL's own
            // logical replication (`rebalance`).
            "wal_level=logical",
            "max_wal_senders=20",
            "max_replication_slots=20",
            "max_logical_replication_workers=8",
            "max_worker_processes=16",
            // New subscriptions start their workers at once rather than up to 5 s later.
            "wal_retrieve_retry_interval=200ms",
            "hot_standby=on",
            "max_prepared_transactions=64",
            "wal_receiver_status_interval=1s",
        ] {
            c.arg("-c").arg(setting);
        }
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: prctl is async-signal-safe; it only sets this process's parent-death signal so the
        // server goes away with the thread that started it, even if that process is killed.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        self.child = Some(c.spawn().context("starting postgres")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let port = self.port.to_string();
        let mut probe = self.command("pg_isready");
        probe.args(["-q", "-h", "127.0.0.1", "-p", &port]);
        wait_ready("postgres", self.port, &mut self.child, &self.log, || {
            probe.status().map(|s| s.success()).unwrap_or(false)
        })
    }

    /// Whether the server process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the server if it is not running.
    pub fn ensure_running(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.child = None;
        self.start()
    }

    /// Promotes a standby to primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) -> Result<()> {
        let dir = self.data_dir.to_string_lossy().into_owned();
        self.run_tool("pg_ctl", &["promote", "-w", "-D", &dir])
    }

    /// Fast shutdown (SIGINT): clients are disconnected, the server exits cleanly.
    pub fn stop(&mut self) {
        self.signal_and_wait(libc::SIGINT);
    }

    fn kill(&mut self) {
        self.signal_and_wait(libc::SIGQUIT);
    }

    fn signal_and_wait(&mut self, sig: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child we spawned and have not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
            let _ = child.wait();
        }
    }
}
