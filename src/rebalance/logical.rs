//! A move carried by logical replication (see the module docs of `rebalance` for the steps): the
//! target subscribes to the partition's rows on the source, catches up while the application
//! writes, and the cutover holds the partition's statements only for a barrier and a check,
//! bounded by the hold time. After the switch the changes flow back to the source until the move
//! completes, so rolling back loses nothing.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

use super::ctx::Ctx;
use super::repl::{self, stream_name};
use super::{Action, Options, Report};

/// Catch-up is close enough to try a cutover when a barrier comes through within this.
const CAUGHT_UP: Duration = Duration::from_millis(500);
/// How long catch-up may fail to get the lag under [`CAUGHT_UP`] once the copy is done.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);
/// Cutover attempts before the move stops (resumable) instead of trying again.
const ATTEMPTS: u32 = 3;

/// Names the error of a cutover that never fit in its hold: the move stays caught up.
pub(super) const HOLD_TIMED_OUT: &str = "cutover hold timed out";

/// How an attempt at a cutover ended when it did not switch.
enum Attempt {
    /// It took longer than the hold allows: the statements were released, try again later.
    Retry(String),
    /// Something is wrong: the move cannot go on as it is.
    Stop(anyhow::Error),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Attempt {
        Attempt::Stop(e)
    }
}

impl Ctx {
    fn forward(&self) -> String {
        stream_name("fwd", &self.group, self.partition)
    }

    fn back(&self) -> String {
        stream_name("back", &self.group, self.partition)
    }

    /// Runs the move from `step` until it is done (or, with `keep_way_back`, until it waits in
    /// `reversing` for `complete` or `abort`).
    pub(super) async fn run_logical(&self, from: &str, action: Action, opts: &Options) -> Result<Report> {
        let mut report = Report::default();
        let mut step = from.to_owned();
        loop {
            step = match (step.as_str(), action) {
                ("new", _) => {
                    self.record("started", None).await?;
                    "started".into()
                }
                ("started", _) => {
                    self.start_stream().await?;
                    self.record("syncing", None).await?;
                    "syncing".into()
                }
                ("syncing", _) => {
                    self.catch_up().await?;
                    self.record("caught_up", None).await?;
                    "caught_up".into()
                }
                ("caught_up", _) => {
                    if !repl::has_subscription(&self.target, &self.forward()).await? {
                        // Its stream is gone (dropped by hand?): start over.
                        self.record("started", None).await?;
                        "started".into()
                    } else {
                        report = self.cut_over(opts.hold).await?;
                        "switched".into()
                    }
                }
                ("verified", _) => {
                    self.assign(&self.target_name, "moving").await?;
                    self.record("switched", None).await?;
                    "switched".into()
                }
                ("switched", _) => {
                    self.start_way_back().await?;
                    self.record("reversing", None).await?;
                    "reversing".into()
                }
                ("reversing", Action::Abort) => {
                    self.cut_back(opts.hold).await?;
                    "returning".into()
                }
                ("reversing", _) if opts.keep_way_back && action != Action::Complete => return Ok(report),
                ("reversing", _) => {
                    self.record("completing", None).await?;
                    "completing".into()
                }
                ("completing", _) => {
                    self.finish().await?;
                    self.record("done", None).await?;
                    return Ok(report);
                }
                ("returning", _) => {
                    // `moving` until the target's copy is gone: statements over several shards
                    // leave out the rows a shard holds only as a copy while the state says so.
                    self.assign(&self.source_name, "moving").await?;
                    self.clean_up().await?;
                    self.clear(&self.target, &self.target_name).await?;
                    self.set_state("serving").await?;
                    self.record("aborted", None).await?;
                    return Ok(report);
                }
                (other, _) => bail!("unknown move step `{other}` in shardwire_moves"),
            };
        }
    }

    /// Clears the target's rows of the partition and starts the stream that copies them from
    /// the source and then follows its changes.
    async fn start_stream(&self) -> Result<()> {
        self.set_state("moving").await?;
        self.all_leave_out_copies().await?;
        self.clean_up().await?;
        self.clear(&self.target, &self.target_name).await?;
        repl::create_publication(&self.source, &self.forward(), &self.tables).await?;
        repl::create_subscription(&self.target, &self.forward(), &self.source_node, true).await
    }

    /// Waits until the copy is done and the target follows the source closely.
    async fn catch_up(&self) -> Result<()> {
        let name = self.forward();
        let totals = self.count_source().await?;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut copied_at: Option<Instant> = None;
        loop {
            let failures = repl::errors(&self.target, &name).await?;
            if failures > 0 {
                bail!(
                    "the subscription on {} failed {failures} time(s) copying or applying the partition's rows \
                     (a row already there? see {}'s log)",
                    self.target_name,
                    self.target_name
                );
            }
            let tables = repl::sync_state(&self.target, &name, &self.tables).await?;
            let copied: i64 = tables
                .iter()
                .zip(&totals)
                .map(|((done, running), total)| if *done { *total } else { *running })
                .sum();
            if tables.iter().all(|(done, _)| *done) {
                let since = *copied_at.get_or_insert_with(Instant::now);
                if since.elapsed() > CATCH_UP_LIMIT {
                    bail!(
                        "replication lag stayed above {} ms for {} s after the copy: the target does not keep up with the writes",
                        CAUGHT_UP.as_millis(),
                        CATCH_UP_LIMIT.as_secs()
                    );
                }
                match repl::barrier(&self.source, &self.target, &name, Duration::from_secs(5)).await {
                    Ok(lag) if lag <= CAUGHT_UP => {
                        let ms = lag.as_millis() as i64;
                        self.progress(&format!("caught up (lag {ms} ms)"), Some(copied), Some(ms))
                            .await?;
                        return Ok(());
                    }
                    Ok(lag) => {
                        let ms = lag.as_millis() as i64;
                        self.progress(&format!("catching up (lag {ms} ms)"), Some(copied), Some(ms))
                            .await?
                    }
                    Err(e) => self.progress(&format!("catching up: {e}"), Some(copied), None).await?,
                }
            } else if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let left = tables.iter().filter(|(done, _)| !done).count();
                self.progress(
                    &format!(
                        "copying: {copied} of {} rows, {left} table(s) left, {} s",
                        totals.iter().sum::<i64>(),
                        started.elapsed().as_secs()
                    ),
                    Some(copied),
                    None,
                )
                .await?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The forward cutover, tried up to [`ATTEMPTS`] times; when it cannot be done within the
    /// hold, the move stays caught up (resumable) and the error says why.
    async fn cut_over(&self, hold: Duration) -> Result<Report> {
        self.set_state("moving").await?;
        // The way back is made before the fence: making a slot waits for the target's running
        // transactions, which the hold cannot afford.
        repl::drop_slot(&self.target, &self.back()).await?;
        repl::create_publication(&self.target, &self.back(), &self.tables).await?;
        repl::create_slot(&self.target, &self.back()).await?;
        let mut why = String::new();
        for attempt in 1..=ATTEMPTS {
            let fenced = Instant::now();
            match self.try_cut_over(hold).await {
                Ok(rows) => {
                    return Ok(Report {
                        rows,
                        fenced_for: fenced.elapsed(),
                    });
                }
                Err(Attempt::Retry(w)) => {
                    tracing::warn!(group = %self.group, partition = self.partition, attempt, "cutover released: {w}");
                    why = w;
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(Attempt::Stop(e)) => return Err(e),
            }
        }
        bail!(
            "{HOLD_TIMED_OUT} {ATTEMPTS} times: each time the cutover was rolled back and the statements released \
             ({why}); the partition serves from {}, the move stays caught up: run it again, or with a longer --hold",
            self.source_name
        )
    }

    async fn try_cut_over(&self, hold: Duration) -> Result<u64, Attempt> {
        let started = Instant::now();
        let left = || hold.saturating_sub(started.elapsed());
        self.set_state("fenced").await?;
        let held = async {
            self.all_serve(left())
                .await
                .map_err(|e| Attempt::Retry(e.to_string()))?;
            // A statement planned just before the fence may still be on its way to the source.
            tokio::time::sleep(Duration::from_millis(100).min(left())).await;
            self.drain(&self.source, &self.source_name, left())
                .await
                .map_err(|e| Attempt::Retry(e.to_string()))?;
            repl::barrier(&self.source, &self.target, &self.forward(), left())
                .await
                .map_err(|e| Attempt::Retry(e.to_string()))?;
            let rows = self.verify().await?;
            if started.elapsed() > hold {
                return Err(Attempt::Retry(format!(
                    "the check took the cutover past its hold of {} ms",
                    hold.as_millis()
                )));
            }
            // From here every change of the partition on the target is a client's: the way back
            // starts at this position.
            let lsn = repl::current_lsn(&self.target).await?;
            self.record("verified", Some(&lsn)).await?;
            Ok(rows)
        }
        .await;
        match held {
            Ok(rows) => {
                self.assign(&self.target_name, "moving").await?;
                self.record("switched", None).await?;
                Ok(rows)
            }
            Err(e) => {
                self.set_state("moving").await?;
                Err(e)
            }
        }
    }

    /// After the switch: the forward stream stops and the one back to the source starts at the
    /// switch's position.
    async fn start_way_back(&self) -> Result<()> {
        repl::drop_subscription(&self.target, &self.forward()).await?;
        repl::drop_publication(&self.source, &self.forward()).await?;
        if !repl::has_subscription(&self.source, &self.back()).await? {
            let lsn = self.recorded_lsn().await?;
            repl::advance_slot(&self.target, &self.back(), &lsn).await?;
            repl::create_subscription(&self.source, &self.back(), &self.target_node, false).await?;
        }
        Ok(())
    }

    /// Rollback after the switch: a cutover the other way, over the stream back.
    async fn cut_back(&self, hold: Duration) -> Result<()> {
        for attempt in 1..=ATTEMPTS {
            let started = Instant::now();
            let left = || hold.saturating_sub(started.elapsed());
            self.set_state("fenced").await?;
            let held: Result<(), Attempt> = async {
                self.all_serve(left())
                    .await
                    .map_err(|e| Attempt::Retry(e.to_string()))?;
                tokio::time::sleep(Duration::from_millis(100).min(left())).await;
                self.drain(&self.target, &self.target_name, left())
                    .await
                    .map_err(|e| Attempt::Retry(e.to_string()))?;
                repl::barrier(&self.target, &self.source, &self.back(), left())
                    .await
                    .map_err(|e| Attempt::Retry(e.to_string()))?;
                self.verify().await?;
                self.record("returning", None).await?;
                Ok(())
            }
            .await;
            match held {
                Ok(()) => return Ok(()),
                Err(Attempt::Retry(w)) => {
                    self.set_state("moving").await?;
                    tracing::warn!(group = %self.group, partition = self.partition, attempt, "rollback cutover released: {w}");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(Attempt::Stop(e)) => {
                    self.set_state("moving").await?;
                    return Err(e);
                }
            }
        }
        Err(anyhow!(
            "the rollback's cutover hold timed out {ATTEMPTS} times; the partition serves from {} with changes flowing back: run the rollback again",
            self.target_name
        ))
    }

    /// Drops whatever streams of this move exist, on both sides.
    pub(super) async fn clean_up(&self) -> Result<()> {
        repl::drop_subscription(&self.target, &self.forward()).await?;
        repl::drop_subscription(&self.source, &self.back()).await?;
        repl::drop_slot(&self.target, &self.back()).await?;
        repl::drop_publication(&self.source, &self.forward()).await?;
        repl::drop_publication(&self.target, &self.back()).await?;
        for (c, name) in [(&self.source, self.back()), (&self.target, self.forward())] {
            c.execute("DELETE FROM shardwire_move_barrier WHERE name = $1", &[&name])
                .await?;
        }
        Ok(())
    }

    /// `complete`: the way back stops, and the source's old copy goes.
    async fn finish(&self) -> Result<()> {
        self.clean_up().await?;
        self.clear(&self.source, &self.source_name).await?;
        self.set_state("serving").await
    }

    /// Rollback before the switch: the partition serves from the source as it always did.
    /// The state stays `moving` (a fence lifted) until the target's copy is gone.
    pub(super) async fn roll_back_logical(&self) -> Result<()> {
        self.set_state("moving").await?;
        self.clean_up().await?;
        self.clear(&self.target, &self.target_name).await?;
        self.set_state("serving").await?;
        self.record("aborted", None).await
    }
}
