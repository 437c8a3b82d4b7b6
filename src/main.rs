//! The `shardwire` binary: `serve`, `check`, `diff`, `locate`, `id`, `rebalance`, `demo`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use shardwire::app::Shared;
use shardwire::serve::Bound;

mod cli_demo;
mod cli_rebalance;

const DEMO_LISTEN: &str = "127.0.0.1:6432";

#[derive(Parser)]
#[command(
    name = "shardwire",
    version,
    about = "PostgreSQL routing proxy: read/write split with lag-aware replicas"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve clients with the given configuration (SIGHUP reloads it).
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file or a shard map exactly as `serve` and RELOAD do, then exit.
    Check {
        /// The TOML configuration file or shard map.
        file: PathBuf,
    },
    /// Compare two shard maps (or configurations): print the changes that send existing rows to
    /// other shards, which RELOAD refuses unless told the data is in place. Exits 1 if there are any.
    Diff {
        /// The map (or configuration) being served.
        old: PathBuf,
        /// The map (or configuration) to serve.
        new: PathBuf,
    },
    /// Move hash partitions between live shards: plan, move one, apply a plan.
    Rebalance {
        #[command(subcommand)]
        command: cli_rebalance::RebalanceCmd,
    },
    /// The instances sharing a shard map through etcd ([cluster]): `cluster status`.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Globally unique IDs: decode one, or measure the generator.
    Id {
        #[command(subcommand)]
        command: IdCmd,
    },
    /// Print the partition and shard of a key of a sharded table.
    Locate {
        /// A shard map file, or a configuration file whose [sharding] map is used.
        #[arg(long, short)]
        map: PathBuf,
        /// The table.
        table: String,
        /// The key, as written in SQL without quotes (e.g. 42, alice, a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11).
        key: String,
    },
    /// Start a local sandbox: a PostgreSQL primary and replicas in a temporary folder, shardwire in front.
    Demo {
        /// Number of streaming replicas (per shard).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Number of shards; with more than one, a shard map (shard-maps/demo.toml's layout)
        /// shards `users` and `orders` by user id and copies `countries` to every shard.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Client address for shardwire (port 0 picks a free one).
        #[arg(long, default_value = DEMO_LISTEN)]
        listen: String,
        /// MariaDB shards (a primary with binlog replicas each) and the MySQL front end on
        /// 127.0.0.1:3307, instead of PostgreSQL.
        #[arg(long)]
        mysql: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// List the instances etcd knows, the map version each serves and its last heartbeat, and the
    /// map version etcd holds. Exits 1 when an instance serves another version than etcd's.
    Status {
        /// A configuration file with a [cluster] section.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum IdCmd {
    /// Print an ID's time, worker and sequence.
    Decode {
        /// The ID.
        id: u64,
        /// The epoch in Unix milliseconds, if not the default.
        #[arg(long, default_value_t = shardwire::ids::DEFAULT_EPOCH_MS)]
        epoch_ms: u64,
    },
    /// Issue IDs from one generator for a while and print the rate.
    Bench {
        /// Seconds to run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Serve { .. } | Cmd::Demo { .. }) {
        // A command whose output is piped into `head` ends quietly when the reader goes, as
        // command-line tools do (Rust ignores SIGPIPE, and println! then panics). Not for the
        // server: its sockets' peers may leave at any time.
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Cmd::Check { file } => {
            let map = match load_any(&file)? {
                Loaded::Config(c) => {
                    println!(
                        "{}: ok ({} shard(s), {} user(s))",
                        file.display(),
                        c.shards.len(),
                        c.users.len()
                    );
                    for s in &c.shards {
                        println!(
                            "  shard {}: primary {:?}, {} replica(s)",
                            s.name,
                            s.primary,
                            s.replicas.len()
                        );
                    }
                    c.map.clone()
                }
                Loaded::Map(m) => {
                    println!("{}: ok (shard map)", file.display());
                    m
                }
            };
            println!(
                "  map version {}, shards {}, default shard {}",
                map.version,
                map.shards.join(", "),
                map.shards[map.default_shard]
            );
            for (group, kind, per_shard, tables) in shardwire::shardmap::describe(&map) {
                println!("  group {group}: {kind}, partitions per shard {per_shard}, tables {tables}");
            }
            Ok(())
        }
        Cmd::Id {
            command: IdCmd::Decode { id, epoch_ms },
        } => {
            let d = shardwire::ids::decode(id, epoch_ms);
            let secs = (d.unix_ms / 1000) as i64;
            let t = time_text(secs, d.unix_ms % 1000);
            println!(
                "id {id}: time {t} (unix ms {}), worker {}, sequence {}",
                d.unix_ms, d.worker, d.sequence
            );
            Ok(())
        }
        Cmd::Id {
            command: IdCmd::Bench { seconds },
        } => {
            let g = shardwire::ids::Generator::new(
                shardwire::ids::DEFAULT_EPOCH_MS,
                1,
                5,
                Box::new(shardwire::ids::SystemClock),
                0,
            );
            let start = std::time::Instant::now();
            let mut n = 0u64;
            let mut last = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                for _ in 0..1000 {
                    let id = g.next()?;
                    anyhow::ensure!(id > last, "IDs must increase");
                    last = id;
                }
                n += 1000;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{n} IDs in {secs:.2} s: {:.0} IDs/s from one generator (one at a time)",
                n as f64 / secs
            );
            let start = std::time::Instant::now();
            let mut m = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                m += g.next_n(1000)?.len() as u64;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{m} IDs in {secs:.2} s: {:.0} IDs/s in batches of 1000",
                m as f64 / secs
            );
            Ok(())
        }
        Cmd::Rebalance { command } => cli_rebalance::run(command),
        Cmd::Cluster {
            command: ClusterCmd::Status { config },
        } => {
            let c = shardwire::config::load(&config)?;
            let Some(cluster) = c.cluster else {
                anyhow::bail!(
                    "{} has no [cluster] section: this instance shares nothing",
                    config.display()
                );
            };
            let behind = shardwire::serve::block_on(1, async move { cluster_status(&cluster).await })??;
            if behind {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Diff { old, new } => {
            let map_of = |p: &PathBuf| -> Result<Arc<shardwire::shardmap::ShardMap>> {
                Ok(match load_any(p)? {
                    Loaded::Config(c) => c.map.clone(),
                    Loaded::Map(m) => m,
                })
            };
            let (a, b) = (map_of(&old)?, map_of(&new)?);
            let moves = shardwire::shardmap::diff::moves(&a, &b);
            println!("version {} -> {}", a.version, b.version);
            if moves.is_empty() {
                println!("no stored row changes shard");
                return Ok(());
            }
            for m in &moves {
                println!("moves: {m}");
            }
            println!("RELOAD refuses this change until the data is in place (then: RELOAD DATA IN PLACE)");
            std::process::exit(1);
        }
        Cmd::Locate { map, table, key } => {
            let m = match load_any(&map)? {
                Loaded::Config(c) => c.map.clone(),
                Loaded::Map(m) => m,
            };
            let (p, g) = m.locate(&table, &key).map_err(|e| anyhow::anyhow!(e))?;
            let partition = p.partition.map_or("-".to_string(), |p| p.to_string());
            println!(
                "table {table} group {} key {key} partition {partition} shard {}",
                g.name, m.shards[p.shard]
            );
            Ok(())
        }
        Cmd::Serve { config } => {
            let c = shardwire::config::load(&config)?;
            shardwire::serve::block_on(c.server.workers, serve(c, Some(config), |_, _| {}))?
        }
        Cmd::Demo {
            replicas,
            listen,
            shards,
            mysql: false,
        } => cli_demo::demo(replicas, shards.max(1), &listen),
        Cmd::Demo { replicas, shards, .. } => cli_demo::demo_mysql(replicas, shards.max(1)),
    }
}

/// Prints the cluster's state; whether an instance serves another map version than etcd holds.
async fn cluster_status(c: &shardwire::config::ClusterConfig) -> Result<bool> {
    let mut store = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        shardwire::etcd::Store::connect(&c.etcd, &c.prefix),
    )
    .await
    .map_err(|_| anyhow::anyhow!("etcd ({}) did not answer within 5 s", c.etcd.join(", ")))??;
    let etcd_version = match store.map().await? {
        Some((text, _)) => shardwire::shardmap::parse(&text)
            .map(|m| m.version.to_string())
            .unwrap_or_else(|e| format!("invalid ({e})")),
        None => "none yet".into(),
    };
    println!(
        "etcd {} prefix {}: map version {etcd_version}",
        c.etcd.join(","),
        c.prefix
    );
    let now = shardwire::etcd::now_ms();
    let instances = store.instances().await?;
    println!(
        "{:<24} {:>11} {:>17}  {:<22} pid",
        "name", "map_version", "heartbeat_age_ms", "listen"
    );
    let mut behind = false;
    for i in &instances {
        behind |= i.version.to_string() != etcd_version;
        println!(
            "{:<24} {:>11} {:>17}  {:<22} {}",
            i.name,
            i.version,
            now.saturating_sub(i.heartbeat_ms),
            i.listen,
            i.pid
        );
    }
    println!("{} instance(s)", instances.len());
    Ok(behind)
}

/// UTC time of Unix seconds, as `YYYY-MM-DD HH:MM:SS.mmm UTC` (civil-from-days, no time crate).
fn time_text(secs: i64, ms: u64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

enum Loaded {
    Config(Box<shardwire::config::Config>),
    Map(Arc<shardwire::shardmap::ShardMap>),
}

/// A configuration (it has a [server] table) or a shard map.
fn load_any(file: &std::path::Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let is_config = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("server"));
    Ok(if is_config {
        Loaded::Config(Box::new(shardwire::config::load(file)?))
    } else {
        Loaded::Map(Arc::new(shardwire::shardmap::load(file)?))
    })
}

/// Serves until Ctrl-C or SIGTERM; SIGHUP reloads.
async fn serve(
    c: shardwire::config::Config,
    path: Option<PathBuf>,
    on_bound: impl FnOnce(Bound, Arc<Shared>),
) -> Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        stop.cancel();
    });
    shardwire::serve::run(c, path, shutdown, |bound, shared| {
        tokio::spawn(reload_on_sighup(shared.clone()));
        on_bound(bound, shared);
    })
    .await
    .context("serving")
}

async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match shared.reload(false).await {
            Ok(m) => tracing::info!("{m}"),
            Err(e) => tracing::error!(error = %e, "reload rejected; the running configuration stays"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_in_utc() {
        assert_eq!(super::time_text(0, 0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(super::time_text(1_704_067_200, 5), "2024-01-01 00:00:00.005 UTC");
        assert_eq!(
            super::time_text(951_782_400 + 86_399, 999),
            "2000-02-29 23:59:59.999 UTC"
        );
    }

    #[test]
    fn demo_maps_are_valid() {
        for n in 2..=7 {
            let m = shardwire::shardmap::parse(&super::cli_demo::demo_map(n)).unwrap();
            assert_eq!(m.shards.len(), n);
        }
    }
}
