//! `shardwire rebalance plan | move | apply`: the command line of `shardwire::rebalance`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use shardwire::rebalance::plan::{Goal, PlannedMove, plan};
use shardwire::rebalance::{Action, Move, Options};

/// How a move runs, shared by `move` and `apply`.
#[derive(clap::Args, Clone)]
pub struct MoveOpts {
    /// The longest a partition's statements are held at its cutover (then they are released,
    /// the partition keeps serving where it was, and the cutover is tried again).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    hold: std::time::Duration,
    /// Stop after the switch with changes flowing back to the old shard, so the move can still be
    /// rolled back without losing a write; finish it later with `complete` (or `move --abort`).
    #[arg(long)]
    keep_way_back: bool,
}

/// One partition's move, and where shardwire serves: shared by `move` and `complete`.
#[derive(clap::Args)]
pub struct WhichMove {
    /// The configuration file shardwire serves.
    #[arg(long, short)]
    config: PathBuf,
    /// The admin console of the running shardwire, e.g. postgres://admin:pw@127.0.0.1:6432/shardwire.
    #[arg(long)]
    admin: String,
    /// The table group.
    #[arg(long)]
    group: String,
    /// The hash partition.
    #[arg(long)]
    partition: u32,
    /// The target shard.
    #[arg(long)]
    to: String,
}

#[derive(Subcommand)]
pub enum RebalanceCmd {
    /// Print the partition moves that even out partitions per shard, one per line
    /// (`move <group> <partition> <from> <to>`), for review and `apply`.
    Plan {
        /// The configuration file (its shard map is planned).
        #[arg(long, short)]
        config: PathBuf,
        /// Empty this shard: its partitions go to the others.
        #[arg(long, conflicts_with = "add_shard")]
        drain: Option<String>,
        /// A shard listed in the map (and the configuration) with no partitions yet: give it its
        /// share. The same as evening out every shard.
        #[arg(long)]
        add_shard: Option<String>,
    },
    /// Move one partition to a shard, while shardwire serves (or resume, or --abort, a move of it
    /// left unfinished).
    Move {
        #[command(flatten)]
        which: WhichMove,
        /// Roll back an unfinished move of this partition instead (after its switch: a cutover
        /// back to the old shard, with the writes made in between).
        #[arg(long)]
        abort: bool,
        #[command(flatten)]
        opts: MoveOpts,
    },
    /// Finish a move left waiting with --keep-way-back: the changes stop flowing back and the
    /// old shard's copy of the partition is deleted.
    Complete {
        #[command(flatten)]
        which: WhichMove,
    },
    /// Print the partition moves recorded on the shards (under way, stopped, finished), with
    /// their step, rows copied of the total, replication lag and time left.
    Status {
        /// The configuration file shardwire serves.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the moves of a plan file, one after another.
    Apply {
        /// The configuration file shardwire serves.
        #[arg(long, short)]
        config: PathBuf,
        /// The admin console of the running shardwire.
        #[arg(long)]
        admin: String,
        /// The plan (`shardwire rebalance plan` output).
        plan: PathBuf,
        /// Moves run at once (each holds a replication slot and worker on its shards).
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        #[command(flatten)]
        opts: MoveOpts,
    },
}

fn config(path: &std::path::Path) -> Result<shardwire::config::Config> {
    shardwire::config::load(path).with_context(|| format!("loading {}", path.display()))
}

async fn one(path: &std::path::Path, admin: &str, m: &Move, action: Action, opts: &MoveOpts) -> Result<()> {
    // The map changes with every move: read it again each time.
    let c = config(path)?;
    let options = Options {
        hold: opts.hold,
        keep_way_back: opts.keep_way_back,
    };
    let r = shardwire::rebalance::run(&c, admin, m, action, &options)
        .await
        .with_context(|| format!("partition {} of {} to {}", m.partition, m.group, m.to))?;
    match action {
        Action::Abort => println!(
            "rolled back: partition {} of {} serves where it was",
            m.partition, m.group
        ),
        Action::Complete => println!("completed: partition {} of {} is on {}", m.partition, m.group, m.to),
        Action::Run => println!(
            "moved partition {} of {} to {}: {} rows, statements on it held {:.0} ms{}",
            m.partition,
            m.group,
            m.to,
            r.rows,
            r.fenced_for.as_secs_f64() * 1000.0,
            if opts.keep_way_back {
                " (changes flow back until `complete`)"
            } else {
                ""
            }
        ),
    }
    Ok(())
}

fn run_one(which: WhichMove, action: Action, opts: MoveOpts) -> Result<()> {
    let m = Move {
        group: which.group,
        partition: which.partition,
        to: which.to,
    };
    let (path, admin) = (which.config, which.admin);
    shardwire::serve::block_on(1, async move { one(&path, &admin, &m, action, &opts).await })?
}

pub fn run(cmd: RebalanceCmd) -> Result<()> {
    match cmd {
        RebalanceCmd::Plan {
            config: path,
            drain,
            add_shard,
        } => {
            let c = config(&path)?;
            if let Some(s) = &add_shard
                && !c.map.shards.contains(s)
            {
                bail!(
                    "add {s} to the map's `shards` (and a [[shards]] entry) first, then RELOAD; it starts with no partitions"
                );
            }
            let goal = drain.map_or(Goal::Even, Goal::Drain);
            let moves = plan(&c.map, &goal).map_err(anyhow::Error::msg)?;
            for m in &moves {
                println!("{m}");
            }
            eprintln!("{} move(s) (map version {})", moves.len(), c.map.version);
            Ok(())
        }
        RebalanceCmd::Move { which, abort, opts } => {
            let action = if abort { Action::Abort } else { Action::Run };
            run_one(which, action, opts)
        }
        RebalanceCmd::Status { config: path } => {
            let c = config(&path)?;
            let (moves, errors) =
                shardwire::serve::block_on(1, async move { shardwire::rebalance::status::read(&c.shards).await })?;
            println!("group\tpartition\tsource\ttarget\tstep\tmode\trows\tlag_ms\teta_s\tdetail");
            for m in &moves {
                let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}/{}\t{}\t{}\t{}",
                    m.group,
                    m.partition,
                    m.source,
                    m.target,
                    m.step,
                    m.mode,
                    opt(m.rows_copied),
                    opt(m.rows_total),
                    opt(m.lag_ms),
                    m.eta_secs().map_or("-".to_string(), |e| format!("{e:.0}")),
                    m.detail
                );
            }
            for e in &errors {
                eprintln!("unreadable: {e}");
            }
            if errors.is_empty() {
                Ok(())
            } else {
                bail!("{} shard(s) could not be read", errors.len())
            }
        }
        RebalanceCmd::Complete { which } => {
            let opts = MoveOpts {
                hold: std::time::Duration::from_secs(2),
                keep_way_back: false,
            };
            run_one(which, Action::Complete, opts)
        }
        RebalanceCmd::Apply {
            config: path,
            admin,
            plan: file,
            parallel,
            opts,
        } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let moves: Vec<PlannedMove> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            shardwire::serve::block_on(
                2,
                async move { apply(&path, &admin, moves, parallel.max(1), &opts).await },
            )?
        }
    }
}

/// Runs a plan's moves, `parallel` at a time; stops starting new ones after the first failure.
async fn apply(
    path: &std::path::Path,
    admin: &str,
    moves: Vec<PlannedMove>,
    parallel: usize,
    opts: &MoveOpts,
) -> Result<()> {
    use futures_util::StreamExt;
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<()>> = futures_util::stream::iter(moves)
        .map(|pm| {
            let failed = &failed;
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                let m = Move {
                    group: pm.group,
                    partition: pm.partition,
                    to: pm.to,
                };
                let r = one(path, admin, &m, Action::Run, opts).await;
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !errors.is_empty() {
        bail!("{} move(s) failed:\n{}", errors.len(), errors.join("\n"));
    }
    Ok(())
}
