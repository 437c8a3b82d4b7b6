//! A move without logical replication (a shard with `wal_level` below logical, a login that may
//! not subscribe, a table whose replica identity lacks the shard key): the partition is copied
//! while it serves, then fenced for a second, final copy and the check. Its statements wait for
//! one whole copy of the partition, so this suits small partitions; the logical way holds them
//! only for a moment.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, TryStreamExt};

use super::ctx::Ctx;
use super::{Report, sql};

/// How long a fenced copy waits for transactions already open on the source.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

impl Ctx {
    pub(super) async fn run_copy(&self, from: &str) -> Result<Report> {
        let mut report = Report::default();
        let mut step = from.to_owned();
        loop {
            match step.as_str() {
                "new" | "started" => {
                    self.record("started", None).await?;
                    self.set_state("moving").await?;
                    self.all_leave_out_copies().await?;
                    self.count_source().await?;
                    let n = self.copy().await?;
                    self.progress(&format!("copied {n} rows while serving"), Some(n as i64), None)
                        .await?;
                    self.record("copied", None).await?;
                    step = "copied".into();
                }
                "copied" => {
                    let fenced = Instant::now();
                    self.set_state("fenced").await?;
                    if let Err(e) = self.all_serve(Duration::from_secs(2)).await {
                        // An instance that does not hold the partition's statements could write
                        // to the source during the final copy: no cutover.
                        self.set_state("moving").await?;
                        bail!(
                            "cutover rolled back, the partition keeps serving from {}: {e}; run the move again to retry",
                            self.source_name
                        );
                    }
                    // A statement planned just before the fence may not have reached the source yet.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.drain(&self.source, &self.source_name, DRAIN_WAIT).await?;
                    self.copy().await?;
                    report.rows = self.verify().await?;
                    self.record("verified", None).await?;
                    self.assign(&self.target_name, "moving").await?;
                    report.fenced_for = fenced.elapsed();
                    self.record("switched", None).await?;
                    step = "switched".into();
                }
                "verified" => {
                    // Resumed after the check: the switch is safe to repeat.
                    self.assign(&self.target_name, "moving").await?;
                    self.record("switched", None).await?;
                    step = "switched".into();
                }
                "switched" => {
                    // `moving` until the source's copy is gone: statements over several shards
                    // leave out the rows a shard holds only as a copy while the state says so.
                    self.clear(&self.source, &self.source_name).await?;
                    self.set_state("serving").await?;
                    self.record("done", None).await?;
                    return Ok(report);
                }
                other => bail!("unknown move step `{other}` in shardwire_moves"),
            }
        }
    }

    /// Copies every table's partition rows from the source, replacing the target's; the rows.
    async fn copy(&self) -> Result<u64> {
        self.clear(&self.target, &self.target_name).await?;
        let mut rows = 0;
        for (t, filter, _) in &self.tables {
            let table = sql::ident(t);
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

    /// Back to before the move: the partition serves from the source, the target's copy goes.
    pub(super) async fn roll_back_copy(&self) -> Result<()> {
        self.set_state("moving").await?;
        self.clear(&self.target, &self.target_name).await?;
        self.set_state("serving").await?;
        self.record("aborted", None).await
    }
}
