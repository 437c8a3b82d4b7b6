//! `shardwire rebalance`: moving hash partitions between live shards while the application reads
//! and writes through shardwire.
//!
//! A move is a resumable state machine whose state is kept in the target shard's
//! `shardwire_moves` table (so a crash or SIGKILL of the tool resumes, or rolls back, from the
//! last step recorded), and which changes the map only through a running shardwire's admin
//! console (so every change is validated, versioned and written back there):
//!
//! 1. `started`: the partition is marked `moving`; every table of its group is copied to the
//!    target (`COPY ... TO STDOUT` / `FROM STDIN`, binary, rows selected by PostgreSQL's own
//!    partition hash), replacing any earlier partial copy. The application keeps writing.
//! 2. `copied`: the partition is `fenced`: statements that touch it wait in shardwire, others run.
//!    Transactions already open on the source are waited for (bounded), then the partition's rows
//!    are copied again (now that nothing writes them) and both sides compared (count and checksum).
//! 3. `verified`: the map gives the partition to the target (`DATA IN PLACE`) and it serves
//!    again: the waiting statements run on the target.
//! 4. `switched`: the source's copy of the partition is deleted. `done`.
//!
//! Any failure before `verified` rolls back: the partition serves from the source again and the
//! target's copy is deleted. The fenced window lasts one copy of the partition: small partitions
//! (many per shard) keep it short. Catching up changes by logical replication, to shorten it to a
//! moment, is not done yet.

pub mod plan;
pub mod sql;
mod verify;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::shardmap::{KeyType, Partitioning, TableRule};

/// The state table, on the target shard.
pub const STATE_DDL: &str = "CREATE TABLE IF NOT EXISTS shardwire_moves (group_name text NOT NULL, partition int NOT NULL, \
    source text NOT NULL, target text NOT NULL, step text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (group_name, partition))";

/// How long a fenced move waits for transactions already open on the source.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

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

/// What a move did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rows of the partition copied in the final (fenced) copy, over all tables.
    pub rows: u64,
    /// How long statements on the partition were held.
    pub fenced_for: Duration,
}

struct Ctx {
    source: Client,
    target: Client,
    admin: Client,
    group: String,
    partition: u32,
    source_name: String,
    target_name: String,
    /// (table, `WHERE` filter of the partition's rows, key column).
    tables: Vec<(String, String, String)>,
    key_type: KeyType,
}

async fn connect(url_or: &tokio_postgres::Config) -> Result<Client> {
    let (c, conn) = url_or.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// Moves a partition to `m.to` (or resumes, or with `abort` rolls back, a move of it left
/// unfinished), changing the map through the admin console at `admin_url`.
pub async fn move_partition(config: &Config, admin_url: &str, m: &Move, abort: bool) -> Result<Report> {
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
    target_db.batch_execute(STATE_DDL).await?;
    let recorded = target_db
        .query_opt(
            "SELECT source, target, step FROM shardwire_moves WHERE group_name = $1 AND partition = $2",
            &[&m.group, &(m.partition as i32)],
        )
        .await?
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)));
    // The source: where the map has it now, or, resuming after the switch, where the move began.
    let (source_name, step) = match recorded {
        Some((src, tgt, step)) if step != "done" && step != "aborted" => {
            if tgt != m.to {
                bail!(
                    "a move of partition {} of {} to {tgt} is unfinished: resume or abort that one",
                    m.partition,
                    m.group
                );
            }
            (src, step)
        }
        _ => {
            let src = map.shards[owner[m.partition as usize]].clone();
            if src == m.to {
                bail!("partition {} of {} is already on {}", m.partition, m.group, m.to);
            }
            (src, "new".to_owned())
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
    let ctx = Ctx {
        source: connect(&config.shards[source].primary.pg_config(timeout))
            .await
            .with_context(|| format!("connecting to {source_name}"))?,
        target: target_db,
        admin,
        group: m.group.clone(),
        partition: m.partition,
        source_name,
        target_name: m.to.clone(),
        tables,
        key_type: g.key_type,
    };
    if abort {
        if step == "switched" {
            bail!(
                "the map already gives the partition to {}: finish the move (run it again) instead",
                m.to
            );
        }
        ctx.roll_back().await?;
        return Ok(Report::default());
    }
    match ctx.run(&step).await {
        Ok(r) => Ok(r),
        Err(e) if step != "verified" && step != "switched" => {
            let why = format!("{e:#}");
            if let Err(r) = ctx.roll_back().await {
                bail!("{why}; rolling back failed too: {r:#} (run the move again with --abort)");
            }
            bail!(
                "{why}; the move was rolled back (the partition serves from {})",
                ctx.source_name
            );
        }
        Err(e) => Err(e),
    }
}

impl Ctx {
    async fn record(&self, step: &str) -> Result<()> {
        self.target
            .execute(
                "INSERT INTO shardwire_moves (group_name, partition, source, target, step) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (group_name, partition) DO UPDATE SET source = $3, target = $4, step = $5, updated_at = now()",
                &[&self.group, &(self.partition as i32), &self.source_name, &self.target_name, &step],
            )
            .await?;
        Ok(())
    }

    async fn admin(&self, command: &str) -> Result<()> {
        self.admin.simple_query(command).await.map(|_| ()).map_err(|e| {
            anyhow!(
                "{command}: {}",
                e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
            )
        })
    }

    /// Waits until every instance `SHOW CLUSTER` lists (this one alone without `[cluster]`)
    /// serves the map version this one serves; at most `within`.
    async fn all_serve(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let rows: Vec<Vec<String>> = self
                .admin
                .simple_query("SHOW CLUSTER")
                .await?
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
                    }
                    _ => None,
                })
                .collect();
            let mine = rows
                .iter()
                .find(|r| r.get(5).is_some_and(|t| t == "yes"))
                .map(|r| r[1].clone());
            let behind: Vec<String> = rows
                .iter()
                .filter(|r| Some(&r[1]) != mine.as_ref())
                .map(|r| format!("{} (serving map version {})", r[0], r[1]))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not acknowledged within {within:?} by {}", behind.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, from: &str) -> Result<Report> {
        let (g, p) = (&self.group, self.partition);
        let mut report = Report::default();
        let mut step = from.to_owned();
        loop {
            match step.as_str() {
                "new" | "started" => {
                    self.record("started").await?;
                    self.admin(&format!("SET PARTITION {g} {p} STATE moving")).await?;
                    let n = self.copy().await?;
                    tracing::info!(group = %g, partition = p, rows = n, "partition copied while serving");
                    self.record("copied").await?;
                    step = "copied".into();
                }
                "copied" => {
                    let fenced = Instant::now();
                    self.admin(&format!("SET PARTITION {g} {p} STATE fenced")).await?;
                    if let Err(e) = self.all_serve(Duration::from_secs(2)).await {
                        // An instance that does not hold the partition's statements could write
                        // to the source during the final copy: no cutover.
                        self.admin(&format!("SET PARTITION {g} {p} STATE moving")).await?;
                        bail!(
                            "cutover rolled back, the partition keeps serving from {}: {e}; run the move again to retry",
                            self.source_name
                        );
                    }
                    // A statement planned just before the fence may not have reached the source yet.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.drain().await?;
                    report.rows = self.copy().await?;
                    self.verify().await?;
                    self.record("verified").await?;
                    self.admin(&format!("SET PARTITION {g} {p} TO {} DATA IN PLACE", self.target_name))
                        .await?;
                    self.admin(&format!("SET PARTITION {g} {p} STATE serving")).await?;
                    report.fenced_for = fenced.elapsed();
                    self.record("switched").await?;
                    step = "switched".into();
                }
                "verified" => {
                    // Resumed after the check: the switch is safe to repeat.
                    self.admin(&format!("SET PARTITION {g} {p} TO {} DATA IN PLACE", self.target_name))
                        .await?;
                    self.admin(&format!("SET PARTITION {g} {p} STATE serving")).await?;
                    self.record("switched").await?;
                    step = "switched".into();
                }
                "switched" => {
                    for (t, filter, _) in &self.tables {
                        self.source
                            .execute(&format!("DELETE FROM {} WHERE {filter}", sql::ident(t)), &[])
                            .await?;
                    }
                    self.record("done").await?;
                    return Ok(report);
                }
                other => bail!("unknown move step `{other}` in shardwire_moves"),
            }
        }
    }

    /// Copies every table's partition rows from the source, replacing the target's; the rows.
    async fn copy(&self) -> Result<u64> {
        let mut rows = 0;
        for (t, filter, _) in &self.tables {
            let table = sql::ident(t);
            self.target
                .execute(&format!("DELETE FROM {table} WHERE {filter}"), &[])
                .await
                .with_context(|| format!("clearing {t} on {} (does the table exist there?)", self.target_name))?;
            let out = self
                .source
                .copy_out(&format!(
                    "COPY (SELECT * FROM {table} WHERE {filter}) TO STDOUT (FORMAT binary)"
                ))
                .await?;
            let sink = self
                .target
                .copy_in(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
                .await?;
            futures_util::pin_mut!(out);
            futures_util::pin_mut!(sink);
            while let Some(chunk) = out.try_next().await? {
                sink.send(chunk).await?;
            }
            rows += sink.finish().await?;
        }
        Ok(rows)
    }

    /// Waits for transactions open on the source since before the fence (they may still write
    /// the partition on their old route).
    async fn drain(&self) -> Result<()> {
        let fence_at: std::time::SystemTime = self.source.query_one("SELECT now()", &[]).await?.get(0);
        let started = Instant::now();
        loop {
            let open: i64 = self
                .source
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend' AND xact_start < $1",
                    &[&fence_at],
                )
                .await?
                .get(0);
            if open == 0 {
                return Ok(());
            }
            if started.elapsed() > DRAIN_WAIT {
                bail!(
                    "{open} transaction(s) opened before the fence are still open on {} after {} s",
                    self.source_name,
                    DRAIN_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Both sides hold the same rows of the partition, table by table.
    async fn verify(&self) -> Result<()> {
        for (t, filter, key) in &self.tables {
            let q = sql::fingerprint(t, filter);
            let a = self.source.query_one(&q, &[]).await?;
            let b = self.target.query_one(&q, &[]).await?;
            let (an, ah): (i64, String) = (a.get(0), a.get(1));
            let (bn, bh): (i64, String) = (b.get(0), b.get(1));
            if (an, &ah) != (bn, &bh) {
                let range = verify::differing_range(&self.source, &self.target, t, key, self.key_type, filter)
                    .await
                    .unwrap_or_else(|e| format!("(the range could not be narrowed: {e})"));
                bail!(
                    "{t}: {an} rows on {} and {bn} on {}, contents differing {range}",
                    self.source_name,
                    self.target_name
                );
            }
        }
        Ok(())
    }

    /// Back to before the move: the partition serves from the source, the target's copy goes.
    async fn roll_back(&self) -> Result<()> {
        let (g, p) = (&self.group, self.partition);
        self.admin(&format!("SET PARTITION {g} {p} STATE serving")).await?;
        for (t, filter, _) in &self.tables {
            self.target
                .execute(&format!("DELETE FROM {} WHERE {filter}", sql::ident(t)), &[])
                .await?;
        }
        self.record("aborted").await
    }
}
