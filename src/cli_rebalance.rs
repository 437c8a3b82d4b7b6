//! `shardwire rebalance plan | move | apply`: the command line of `shardwire::rebalance`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use shardwire::rebalance::plan::{Goal, PlannedMove, plan};
use shardwire::rebalance::{Move, move_partition};

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
        /// Roll back an unfinished move of this partition instead.
        #[arg(long)]
        abort: bool,
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
    },
}

fn config(path: &std::path::Path) -> Result<shardwire::config::Config> {
    shardwire::config::load(path).with_context(|| format!("loading {}", path.display()))
}

async fn one(path: &std::path::Path, admin: &str, m: &Move, abort: bool) -> Result<()> {
    // The map changes with every move: read it again each time.
    let c = config(path)?;
    let r = move_partition(&c, admin, m, abort).await?;
    if abort {
        println!(
            "rolled back: partition {} of {} serves where it was",
            m.partition, m.group
        );
    } else {
        println!(
            "moved partition {} of {} to {}: {} rows in the final copy, statements on it held {:.0} ms",
            m.partition,
            m.group,
            m.to,
            r.rows,
            r.fenced_for.as_secs_f64() * 1000.0
        );
    }
    Ok(())
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
        RebalanceCmd::Move {
            config: path,
            admin,
            group,
            partition,
            to,
            abort,
        } => {
            let m = Move { group, partition, to };
            shardwire::serve::block_on(1, async move { one(&path, &admin, &m, abort).await })?
        }
        RebalanceCmd::Apply {
            config: path,
            admin,
            plan: file,
        } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let moves: Vec<PlannedMove> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
            shardwire::serve::block_on(1, async move {
                for pm in moves {
                    let m = Move {
                        group: pm.group,
                        partition: pm.partition,
                        to: pm.to,
                    };
                    one(&path, &admin, &m, false).await?;
                }
                Ok::<_, anyhow::Error>(())
            })?
        }
    }
}
