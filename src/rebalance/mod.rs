//! `shardwire rebalance`: moving hash partitions between live shards while the application reads
//! and writes through shardwire.
//!
//! A move is a resumable state machine whose step is recorded in the target shard's
//! `shardwire_moves` table (so a crash or SIGKILL of the tool resumes, or rolls back, from the
//! last step recorded), and which changes the map only through a running shardwire's admin
//! console (so every change is validated, versioned, shared with every instance and
//! acknowledged). With logical replication available on both shards (`logical`, `logical.rs`):
//!
//! 1. `started`: the partition is marked `moving` (DDL on its group is refused until the move
//!    ends); missing tables are created on the target; a row-filtered publication of the
//!    partition on the source, a subscription on the target (`repl.rs`).
//! 2. `syncing`: the subscription copies the rows from a snapshot, then applies every change
//!    since; the application keeps writing. `caught_up` once a barrier comes through quickly.
//! 3. cutover: the partition is `fenced` (its statements wait in shardwire, others run) and every
//!    instance must serve that map; transactions already open on the source are waited for; a
//!    barrier through the stream says the target has every change; both sides are compared
//!    (count and checksum per table); `verified`; the map gives the partition to the target and
//!    the statements run there. All of it within the hold (default 2 s): past it the statements
//!    are released, the partition keeps serving from the source, and the cutover is tried again.
//! 4. `switched` → `reversing`: the forward stream stops, one from the target back to the source
//!    starts at the switch's WAL position, so a rollback now is a cutover the other way that
//!    loses no write (`returning` → `aborted`).
//! 5. `completing` → `done`: the way back stops, the source's copy is deleted, publications and
//!    slots are dropped, the partition serves.
//!
//! Without logical replication (`copy`, `fenced_copy.rs`) the partition is copied while it
//! serves and copied again while fenced: the statements wait for one whole copy.
//!
//! Any failure before the switch rolls back: the partition serves from the source again and the
//! target's copy is deleted.

mod ctx;
mod fenced_copy;
mod logical;
pub mod plan;
mod repl;
mod schema;
pub mod sql;
pub mod status;
mod verify;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::shardmap::{KeyType, Partitioning, TableRule};
use ctx::Ctx;

pub use repl::BARRIER_DDL;

/// The state table, on the target shard.
pub const STATE_DDL: &str = "CREATE TABLE IF NOT EXISTS shardwire_moves (group_name text NOT NULL, partition int NOT NULL, \
    source text NOT NULL, target text NOT NULL, step text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (group_name, partition)); \
    ALTER TABLE shardwire_moves ADD COLUMN IF NOT EXISTS mode text, ADD COLUMN IF NOT EXISTS lsn text, \
    ADD COLUMN IF NOT EXISTS detail text, ADD COLUMN IF NOT EXISTS rows_total bigint, \
    ADD COLUMN IF NOT EXISTS rows_copied bigint, ADD COLUMN IF NOT EXISTS lag_ms bigint, \
    ADD COLUMN IF NOT EXISTS step_at timestamptz";

/// One partition to move.
#[derive(Debug, Clone)]
pub struct Move {
    /// The group.
    pub group: String,
    /// The hash partition.
    pub partition: u32,
    /// The target shard's name.
    pub to: String,
}

/// What to do with a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it, or resume it from its recorded step.
    Run,
    /// Roll it back: before the switch by dropping the target's copy, after it by a cutover back
    /// to the source.
    Abort,
    /// Finish a move left waiting in `reversing`.
    Complete,
}

/// How a move runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest the partition's statements are held at a cutover.
    pub hold: Duration,
    /// Stop after the switch with changes flowing back to the source, for `complete` or
    /// `abort` later.
    pub keep_way_back: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            hold: Duration::from_secs(2),
            keep_way_back: false,
        }
    }
}

/// What a move did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rows of the partition on the target at the check, over all tables.
    pub rows: u64,
    /// How long statements on the partition were held.
    pub fenced_for: Duration,
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (c, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Runs a move with the default options (`abort`: [`Action::Abort`], else [`Action::Run`]).
pub async fn move_partition(config: &Config, admin_url: &str, m: &Move, abort: bool) -> Result<Report> {
    let action = if abort { Action::Abort } else { Action::Run };
    run(config, admin_url, m, action, &Options::default()).await
}

/// Moves a partition to `m.to`, or resumes, completes or rolls back a move of it left
/// unfinished; the map changes through the admin console at `admin_url`.
pub async fn run(config: &Config, admin_url: &str, m: &Move, action: Action, opts: &Options) -> Result<Report> {
    let map = &config.map;
    let g = map
        .groups
        .iter()
        .find(|g| g.name == m.group)
        .ok_or_else(|| anyhow!("no group `{}` in the map", m.group))?;
    let gid = map.groups.iter().position(|x| x.name == g.name).unwrap_or(0);
    let Partitioning::Hash { owner } = &g.partitioning else {
        bail!("group {} is not hash-partitioned: only hash partitions move", g.name);
    };
    let partitions = owner.len() as u32;
    if m.partition >= partitions {
        bail!("partition {} is outside 0-{}", m.partition, partitions - 1);
    }
    let target = map
        .shards
        .iter()
        .position(|s| *s == m.to)
        .ok_or_else(|| anyhow!("no shard `{}` in the map", m.to))?;
    let timeout = Duration::from_secs(5);
    let admin = connect(&admin_url.parse().context("the admin URL")?)
        .await
        .context("connecting to the admin console")?;
    let target_db = connect(&config.shards[target].primary.pg_config(timeout))
        .await
        .with_context(|| format!("connecting to {}", m.to))?;
    schema::locked(&target_db, STATE_DDL).await?;
    let recorded = target_db
        .query_opt(
            "SELECT source, target, step, coalesce(mode, 'copy') FROM shardwire_moves WHERE group_name = $1 AND partition = $2",
            &[&m.group, &(m.partition as i32)],
        )
        .await?
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3)));
    // The source: where the map has it now, or, resuming after the switch, where the move began.
    let (source_name, step, mode) = match recorded {
        Some((src, tgt, step, mode)) if step != "done" && step != "aborted" => {
            if tgt != m.to {
                bail!(
                    "a move of partition {} of {} to {tgt} is unfinished: resume or abort that one",
                    m.partition,
                    m.group
                );
            }
            (src, step, Some(mode))
        }
        Some((_, tgt, step, _)) if step == "done" && tgt == m.to && action == Action::Abort => bail!(
            "the move of partition {} of {} to {tgt} is complete: move it back with a new move",
            m.partition,
            m.group
        ),
        _ if action != Action::Run => bail!(
            "no unfinished move of partition {} of {} to {}",
            m.partition,
            m.group,
            m.to
        ),
        _ => {
            let src = map.shards[owner[m.partition as usize]].clone();
            if src == m.to {
                bail!("partition {} of {} is already on {}", m.partition, m.group, m.to);
            }
            (src, "new".to_owned(), None)
        }
    };
    let source = map
        .shards
        .iter()
        .position(|s| *s == source_name)
        .ok_or_else(|| anyhow!("the move's source {source_name} is no longer in the map"))?;
    let tables: Vec<(String, String, String)> = {
        let mut t: Vec<(String, String, String)> = map
            .tables
            .iter()
            .filter_map(|(name, rule)| match rule {
                TableRule::Sharded { group, key } if *group == gid => Some((
                    name.clone(),
                    sql::in_partition(g.key_type, &sql::ident(key), m.partition, partitions),
                    key.clone(),
                )),
                _ => None,
            })
            .collect();
        t.sort();
        t
    };
    if g.key_type == KeyType::Text {
        tracing::info!("text keys hash with the column's collation on PostgreSQL: it must be deterministic");
    }
    let source_node = config.shards[source].primary.clone();
    let source_db = connect(&source_node.pg_config(timeout))
        .await
        .with_context(|| format!("connecting to {source_name}"))?;
    for c in [&source_db, &target_db] {
        schema::locked(c, BARRIER_DDL).await?;
    }
    if step == "new" {
        let created = schema::ensure(&source_db, &target_db, &tables).await?;
        if !created.is_empty() {
            tracing::info!("created on {}: {}", m.to, created.join(", "));
        }
    }
    let mode = match mode {
        Some(mode) => mode,
        None => match repl::unsupported(&source_db, &target_db, &tables).await? {
            None => "logical".to_owned(),
            Some(why) => {
                tracing::warn!(
                    "moving without logical replication, statements on the partition wait for a whole copy: {why}"
                );
                "copy".to_owned()
            }
        },
    };
    let ctx = Ctx {
        source: source_db,
        target: target_db,
        admin,
        source_node,
        target_node: config.shards[target].primary.clone(),
        group: m.group.clone(),
        partition: m.partition,
        source_name,
        target_name: m.to.clone(),
        tables,
        key_type: g.key_type,
        mode,
    };
    match (action, step.as_str()) {
        (Action::Abort, "completing") => bail!(
            "the move of partition {} of {} is completing (its way back is gone): run it again to finish, \
             then move the partition back with a new move",
            m.partition,
            m.group
        ),
        (Action::Complete, "returning") => bail!(
            "the move of partition {} of {} is being rolled back: run it with --abort to finish that",
            m.partition,
            m.group
        ),
        _ => {}
    }
    let logical = ctx.mode == "logical";
    let switched = switched_step(&step);
    if action == Action::Abort && !switched {
        if logical {
            ctx.roll_back_logical().await?;
        } else {
            ctx.roll_back_copy().await?;
        }
        return Ok(Report::default());
    }
    if !logical {
        if action == Action::Abort {
            bail!(
                "the map already gives the partition to {}: finish the move (run it again) instead",
                m.to
            );
        }
        return match ctx.run_copy(&step).await {
            // Only while the step recorded is still before the switch: after it the target
            // holds the partition's only rows (the source's may be deleted already).
            Err(e) if !switched => match ctx.recorded_step().await {
                Ok(s) if !switched_step(&s) => Err(roll_back(&ctx, e).await),
                _ => Err(e),
            },
            r => r,
        };
    }
    match ctx.run_logical(&step, action, opts).await {
        Err(e) if !switched && !e.to_string().contains(logical::HOLD_TIMED_OUT) => {
            // Unless the move got past the check (then it goes on when run again).
            let past = ctx.recorded_step().await.is_ok_and(|s| s != step && switched_step(&s));
            if past { Err(e) } else { Err(roll_back(&ctx, e).await) }
        }
        r => r,
    }
}

/// Steps from which a move only goes on (or back by a cutover the other way).
fn switched_step(step: &str) -> bool {
    ["verified", "switched", "reversing", "completing", "returning"].contains(&step)
}

/// Rolls a failed move back; the error to report.
async fn roll_back(ctx: &Ctx, e: anyhow::Error) -> anyhow::Error {
    let why = format!("{e:#}");
    let r = if ctx.mode == "logical" {
        ctx.roll_back_logical().await
    } else {
        ctx.roll_back_copy().await
    };
    match r {
        Ok(()) => anyhow!(
            "{why}; the move was rolled back (the partition serves from {})",
            ctx.source_name
        ),
        Err(r) => anyhow!("{why}; rolling back failed too: {r:#} (run the move again with --abort)"),
    }
}
