//! What every step of a move works with: connections to the source, the target and a running
//! shardwire's admin console, the partition's tables, and the durable step record on the target;
//! plus the steps both ways of moving share (map commands, acknowledgement by every instance,
//! draining transactions, comparing both sides, clearing a side).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::Client;

use super::{sql, verify};
use crate::config::NodeConfig;
use crate::shardmap::KeyType;

/// Rows deleted per statement when a side's copy of a partition goes: short transactions, so
/// the shard's other work and its replicas do not wait behind one huge delete.
const DELETE_BATCH: i64 = 10_000;

pub(super) struct Ctx {
    pub source: Client,
    pub target: Client,
    pub admin: Client,
    pub source_node: NodeConfig,
    pub target_node: NodeConfig,
    pub group: String,
    pub partition: u32,
    pub source_name: String,
    pub target_name: String,
    /// (table, `WHERE` filter of the partition's rows, key column).
    pub tables: Vec<(String, String, String)>,
    pub key_type: KeyType,
    /// `logical` or `copy` (see the module docs).
    pub mode: String,
}

impl Ctx {
    /// Records that the move reached `step` (and, for the switch, the target's WAL position it
    /// happened at). With `SHARDWIRE_MOVE_PAUSE_AT=<step>` in the environment the tool stops
    /// right after recording that step, so tests can kill it at each step and resume.
    pub async fn record(&self, step: &str, lsn: Option<&str>) -> Result<()> {
        self.target
            .execute(
                "INSERT INTO shardwire_moves (group_name, partition, source, target, step, mode, lsn, step_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                 ON CONFLICT (group_name, partition) DO UPDATE SET source = $3, target = $4, step = $5, mode = $6, \
                 lsn = coalesce($7, shardwire_moves.lsn), detail = NULL, updated_at = now(), \
                 step_at = CASE WHEN shardwire_moves.step = $5 THEN shardwire_moves.step_at ELSE now() END",
                &[&self.group, &(self.partition as i32), &self.source_name, &self.target_name, &step, &self.mode, &lsn],
            )
            .await?;
        tracing::info!(group = %self.group, partition = self.partition, step, "move step");
        if std::env::var("SHARDWIRE_MOVE_PAUSE_AT").is_ok_and(|s| s == step) {
            eprintln!("paused at {step}");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }

    /// Progress of the current step, for `SHOW MOVES`, the metrics and the log: in words, rows
    /// copied and replication lag (each kept as it was when `None`).
    pub async fn progress(&self, detail: &str, rows_copied: Option<i64>, lag_ms: Option<i64>) -> Result<()> {
        tracing::info!(group = %self.group, partition = self.partition, "{detail}");
        self.target
            .execute(
                "UPDATE shardwire_moves SET detail = $3, rows_copied = coalesce($4, rows_copied), \
                 lag_ms = coalesce($5, lag_ms), updated_at = now() WHERE group_name = $1 AND partition = $2",
                &[&self.group, &(self.partition as i32), &detail, &rows_copied, &lag_ms],
            )
            .await?;
        Ok(())
    }

    /// The partition's rows on the source, table by table, recorded (summed) as the move's total.
    pub async fn count_source(&self) -> Result<Vec<i64>> {
        let mut counts = Vec::with_capacity(self.tables.len());
        for (t, filter, _) in &self.tables {
            let n: i64 = self
                .source
                .query_one(&format!("SELECT count(*) FROM {} WHERE {filter}", sql::ident(t)), &[])
                .await?
                .get(0);
            counts.push(n);
        }
        self.target
            .execute(
                "UPDATE shardwire_moves SET rows_total = $3, rows_copied = 0 WHERE group_name = $1 AND partition = $2",
                &[&self.group, &(self.partition as i32), &counts.iter().sum::<i64>()],
            )
            .await?;
        Ok(counts)
    }

    /// The step recorded last.
    pub async fn recorded_step(&self) -> Result<String> {
        Ok(self
            .target
            .query_one(
                "SELECT step FROM shardwire_moves WHERE group_name = $1 AND partition = $2",
                &[&self.group, &(self.partition as i32)],
            )
            .await?
            .get(0))
    }

    /// The WAL position recorded with the switch.
    pub async fn recorded_lsn(&self) -> Result<String> {
        self.target
            .query_one(
                "SELECT lsn FROM shardwire_moves WHERE group_name = $1 AND partition = $2",
                &[&self.group, &(self.partition as i32)],
            )
            .await?
            .get::<_, Option<String>>(0)
            .ok_or_else(|| anyhow!("the move's record has no switch position"))
    }

    pub async fn admin(&self, command: &str) -> Result<()> {
        self.admin.simple_query(command).await.map(|_| ()).map_err(|e| {
            anyhow!(
                "{command}: {}",
                e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())
            )
        })
    }

    /// Sets the partition's state in the map (`serving`, `moving`, `fenced`).
    pub async fn set_state(&self, state: &str) -> Result<()> {
        self.admin(&format!(
            "SET PARTITION {} {} STATE {state}",
            self.group, self.partition
        ))
        .await
    }

    /// Gives the partition to `shard` in the map, in `state`, in one change; its rows are there
    /// already.
    pub async fn assign(&self, shard: &str, state: &str) -> Result<()> {
        self.admin(&format!(
            "SET PARTITION {} {} TO {shard} STATE {state} DATA IN PLACE",
            self.group, self.partition
        ))
        .await
    }

    /// Before rows of the partition reach the target: every instance serves the map that says
    /// `moving` (so statements over several shards leave the target's copy out), and statements
    /// planned under the map before have had time to reach their shards.
    pub async fn all_leave_out_copies(&self) -> Result<()> {
        self.all_serve(Duration::from_secs(10))
            .await
            .context("every instance must serve the map marking the partition moving before its rows are copied")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Waits until every instance `SHOW CLUSTER` lists (this one alone without `[cluster]`)
    /// serves the map version this one serves; at most `within`.
    pub async fn all_serve(&self, within: Duration) -> Result<()> {
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
                bail!("the fence not acknowledged in time by {}", behind.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits, at most `within`, for transactions open on `side` since before this call (they
    /// may still write the partition on their old route).
    pub async fn drain(&self, side: &Client, side_name: &str, within: Duration) -> Result<()> {
        let fence_at: std::time::SystemTime = side.query_one("SELECT now()", &[]).await?.get(0);
        let started = Instant::now();
        loop {
            let open: i64 = side
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND backend_type = 'client backend' AND xact_start < $1 \
                     AND coalesce(application_name, '') <> 'shardwire-move'",
                    &[&fence_at],
                )
                .await?
                .get(0);
            if open == 0 {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "{open} transaction(s) opened before the fence were still open on {side_name} after {} ms",
                    within.as_millis()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Both sides hold the same rows of the partition, table by table (count and checksum;
    /// where they differ, the key range is named); the rows on the target.
    pub async fn verify(&self) -> Result<u64> {
        let mut rows = 0;
        for (t, filter, key) in &self.tables {
            let q = sql::fingerprint(t, filter);
            // Both sides at once: the check runs inside the cutover's hold.
            let (a, b) = futures_util::try_join!(self.source.query_one(&q, &[]), self.target.query_one(&q, &[]))?;
            let (an, ah): (i64, String) = (a.get(0), a.get(1));
            let (bn, bh): (i64, String) = (b.get(0), b.get(1));
            if (an, &ah) != (bn, &bh) {
                let range = verify::differing_range(&self.source, &self.target, t, key, self.key_type, filter)
                    .await
                    .unwrap_or_else(|e| format!("(the range could not be narrowed: {e})"));
                bail!(
                    "verify: {t}: {an} rows on {} and {bn} on {}, contents differing {range}",
                    self.source_name,
                    self.target_name
                );
            }
            rows += bn as u64;
        }
        Ok(rows)
    }

    /// Deletes the partition's rows on `side`, in batches.
    pub async fn clear(&self, side: &Client, side_name: &str) -> Result<()> {
        for (t, filter, _) in &self.tables {
            let table = sql::ident(t);
            loop {
                let n = side
                    .execute(
                        &format!(
                            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {filter} LIMIT {DELETE_BATCH}))"
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| anyhow!("clearing {t} on {side_name} (does the table exist there?): {e}"))?;
                if n < DELETE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(())
    }
}
