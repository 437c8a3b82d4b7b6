//! Transactions and writes over several MySQL shards, atomic by XA two-phase commit.
//!
//! On a sharded cluster an explicit transaction (BEGIN, START TRANSACTION, not READ ONLY) runs
//! as an XA transaction from its first statement, with an id of the proxy's own; a shard it
//! reaches later joins with `XA START` of the same id. COMMIT ends it with `XA COMMIT ... ONE
//! PHASE` on one shard, or, on several: `XA END` and `XA PREPARE` everywhere, the decision
//! committed to `shardwire_xa_decisions` on the default shard's primary, then `XA COMMIT`
//! everywhere. A write over several shards outside a transaction (UPDATE/DELETE without the key,
//! an INSERT whose rows belong to several shards, a reference table's rows) is such a
//! transaction of its own. [`recover`] finishes what a crash left prepared: committed where a
//! decision exists, rolled back where none does after a minute.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::ClientError;
use super::session::Session;
use super::sync::Held;
use crate::backend::mysql::{MyError, MyShard};
use crate::protocol::mysql::{code, ok};
use crate::shardmap::ShardId;

/// Prefix of the proxy's XA ids.
const PREFIX: &str = "sw-";
/// A prepared branch without a decision older than this is rolled back by recovery.
const ABANDONED: Duration = Duration::from_secs(60);
/// The decision table (on the default shard's primary, in the configured database).
const TABLE: &str = "shardwire_xa_decisions";

/// A new XA id: `sw-<unix ms>-<random>`, its age readable by recovery.
pub(super) fn new_xid() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{PREFIX}{ms}-{:016x}", rand::random::<u64>())
}

fn age(xid: &str) -> Option<Duration> {
    let ms: u64 = xid.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(Duration::from_millis(now.saturating_sub(ms)))
}

fn server_error(e: &MyError) -> (u16, String, String) {
    match e {
        MyError::Server { code, state, message } => (*code, state.clone(), message.clone()),
        other => (code::SERVER_LOST, "HY000".into(), other.to_string()),
    }
}

/// A primary connection of `shard` for the proxy's own statements: autocommit, no session's
/// settings (a pooled connection may carry a client's `autocommit = 0`).
async fn internal(shard: &MyShard) -> Result<crate::backend::mysql::Pooled, MyError> {
    let mut conn = shard.primary.checkout().await?;
    let plain = super::sync::plain(&conn);
    super::sync::sync(&mut conn, &plain, 0).await?;
    Ok(conn)
}

/// XA ids this process is preparing or deciding: recovery leaves them alone (a transaction may
/// be older than recovery's age limit when it prepares).
fn in_flight() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static SET: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Records the commit decision of `xid`, committed on its own before any branch commits.
async fn decide(shard: &MyShard, xid: &str) -> Result<(), MyError> {
    let mut conn = internal(shard).await?;
    let insert = format!("INSERT INTO {TABLE} (xid) VALUES ('{xid}')");
    match conn.query(&insert).await {
        Err(MyError::Server { code: 1146, .. }) => {
            conn.query(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (xid VARCHAR(64) PRIMARY KEY, decided_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))"
            ))
            .await?;
            conn.query(&insert).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

async fn forget(shard: &MyShard, xid: &str) {
    if let Ok(mut conn) = internal(shard).await {
        let _ = conn.query(&format!("DELETE FROM {TABLE} WHERE xid = '{xid}'")).await;
    }
}

/// Commits `legs` of `xid`: one phase on one shard, two phases on several. `Err` when nothing
/// committed (everything rolled back), with the error to report.
async fn commit(legs: &mut [Held], xid: &str, decisions: &MyShard) -> Result<(), MyError> {
    if let [one] = legs {
        let r = one
            .conn
            .query(&format!("XA END '{xid}'; XA COMMIT '{xid}' ONE PHASE"))
            .await
            .map(|_| ());
        if r.is_err() {
            rollback(legs, xid).await;
        }
        return r;
    }
    in_flight().insert(xid.to_owned());
    let decided = prepare_and_decide(legs, xid, decisions).await;
    in_flight().remove(xid);
    if let Err(e) = decided {
        rollback(legs, xid).await;
        return Err(e);
    }
    // Decided: a branch that fails to commit now is committed by recovery.
    let mut all = true;
    for l in legs.iter_mut() {
        match l.conn.query(&format!("XA COMMIT '{xid}'")).await {
            Ok(_) => {}
            // Recovery got there first (the decision exists).
            Err(MyError::Server { code: 1397, .. }) => {}
            Err(e) => {
                tracing::warn!(xid, error = %e, "XA COMMIT failed after the decision; recovery will finish it");
                l.conn.broken = true;
                all = false;
            }
        }
    }
    if all {
        forget(decisions, xid).await;
    }
    Ok(())
}

async fn prepare_and_decide(legs: &mut [Held], xid: &str, decisions: &MyShard) -> Result<(), MyError> {
    let mut failed = None;
    for l in legs.iter_mut() {
        if let Err(e) = l.conn.query(&format!("XA END '{xid}'; XA PREPARE '{xid}'")).await {
            failed = Some(e);
            break;
        }
    }
    if failed.is_none()
        && let Err(e) = decide(decisions, xid).await
    {
        failed = Some(e);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Rolls back every branch of `xid`, whatever state it is in.
async fn rollback(legs: &mut [Held], xid: &str) {
    for l in legs.iter_mut() {
        // ACTIVE needs XA END first; IDLE or PREPARED take the ROLLBACK alone.
        let _ = l.conn.query(&format!("XA END '{xid}'")).await;
        if l.conn.query(&format!("XA ROLLBACK '{xid}'")).await.is_err() {
            l.conn.broken = true;
        }
    }
}

impl Session {
    /// Whether an explicit transaction starts as XA: a sharded cluster, not READ ONLY (also
    /// under `autocommit = 0`, where BEGIN is how a transaction reaches several shards).
    pub fn starts_xa(&self, read_only: bool) -> bool {
        !read_only && !self.rt.config.map.tables.is_empty()
    }

    /// Joins `shard` to the session's XA transaction: the held connection is parked and the
    /// shard's (parked or new, on its primary) becomes the held one. False when it failed
    /// (reported).
    pub async fn join_xa(&mut self, shard: ShardId) -> bool {
        let Some(xid) = self.xid.clone() else { return false };
        if let Some(h) = self.held.take() {
            self.parked.push(h);
        }
        if let Some(i) = self.parked.iter().position(|h| h.shard == shard) {
            let mut h = self.parked.swap_remove(i);
            if h.conn.settings != self.sig {
                // Settings changed on another shard since this one joined: applied here too,
                // without the reset that would end the branch.
                let sql: Vec<&str> = self.state.settings.iter().map(|(_, s)| s.as_str()).collect();
                if !sql.is_empty()
                    && let Err(e) = h.conn.query(&sql.join(";")).await
                {
                    self.held = Some(h);
                    self.backend_error(&e);
                    self.fail_xa().await;
                    return false;
                }
                h.conn.settings = self.sig;
            }
            self.held = Some(h);
            return true;
        }
        if !self.acquire(shard, true).await {
            // Reported by acquire.
            self.fail_xa().await;
            return false;
        }
        let Some(h) = self.held.as_mut() else { return false };
        match h.conn.query(&format!("XA START '{xid}'")).await {
            Ok(_) => {
                h.in_tx = true;
                true
            }
            Err(e) => {
                self.backend_error(&e);
                self.fail_xa().await;
                false
            }
        }
    }

    /// A shard could not join: the transaction cannot go on whole, so every branch rolls back
    /// and the client must end it.
    async fn fail_xa(&mut self) {
        let xid = self.xid.take().unwrap_or_default();
        let mut legs: Vec<Held> = self.parked.drain(..).collect();
        legs.extend(self.held.take());
        rollback(&mut legs, &xid).await;
        self.tx_lost = true;
    }

    /// COMMIT or ROLLBACK of the session's XA transaction, answered to the client.
    pub async fn end_xa(&mut self, commit_it: bool) -> Result<(), ClientError> {
        if self.finish_xa(commit_it).await {
            self.ok();
        }
        Ok(())
    }

    /// Commits or rolls back the session's XA transaction; false when the COMMIT failed (the
    /// error is reported, everything rolled back).
    pub async fn finish_xa(&mut self, commit_it: bool) -> bool {
        let Some(xid) = self.xid.take() else { return true };
        let mut legs: Vec<Held> = self.parked.drain(..).collect();
        legs.extend(self.held.take());
        if !commit_it {
            rollback(&mut legs, &xid).await;
            return true;
        }
        let wrote = legs.iter().any(|l| l.wrote);
        let decisions = self.rt.mysql[self.rt.config.map.default_shard].clone();
        if let Err(e) = commit(&mut legs, &xid, &decisions).await {
            let (c, state, msg) = server_error(&e);
            self.error(
                c,
                &state,
                &format!("COMMIT failed and the transaction rolled back: {msg}"),
            );
            return false;
        }
        if wrote {
            self.wrote_at = Some(std::time::Instant::now());
        }
        true
    }

    /// A write over several shards: one XA transaction of its own outside a transaction, the
    /// transaction's branches inside one. The client gets one OK with the rows affected.
    pub async fn multi_write(
        &mut self,
        parts: Vec<(ShardId, String)>,
        replicated: bool,
        first_id: u64,
    ) -> Result<(), ClientError> {
        if self.pinned.is_some() {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "a write over several shards in a session pinned to one connection (user variables, locks, temporary tables): write the rows of one shard key per statement, or reconnect",
            );
            return Ok(());
        }
        if self.in_tx() && self.xid.is_none() {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "a write over several shards in a transaction that did not start with BEGIN (autocommit = 0 opens one per statement, on one shard) or is READ ONLY: use BEGIN ... COMMIT",
            );
            return Ok(());
        }
        let own = self.xid.is_none();
        if own {
            self.xid = Some(new_xid());
        }
        let mut affected = 0u64;
        let mut warnings = 0u16;
        let mut failure = None;
        for (i, (shard, sql)) in parts.iter().enumerate() {
            if !self.join_xa(*shard).await {
                // Reported, and every branch rolled back, by join_xa.
                if own {
                    self.tx_lost = false;
                }
                return Ok(());
            }
            let Some(h) = self.held.as_mut() else { break };
            match h.conn.query(sql).await {
                Ok(r) => {
                    h.wrote = true;
                    if !replicated || i == 0 {
                        affected += r.affected;
                    }
                    warnings = warnings.saturating_add(r.warnings);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            let (c, state, msg) = server_error(&e);
            if own {
                self.abandon_own().await;
                self.error(c, &state, &msg);
            } else {
                // Part of the statement ran on other shards: the transaction cannot go on as if
                // it had not, so it is rolled back whole.
                let xid = self.xid.take().unwrap_or_default();
                let mut legs: Vec<Held> = self.parked.drain(..).collect();
                legs.extend(self.held.take());
                rollback(&mut legs, &xid).await;
                self.tx_lost = true;
                self.error(
                    c,
                    &state,
                    &format!("{msg}; the statement ran on several shards, so the transaction was rolled back (ROLLBACK to go on)"),
                );
            }
            return Ok(());
        }
        if own {
            let xid = self.xid.take().unwrap_or_default();
            let mut legs: Vec<Held> = self.parked.drain(..).collect();
            legs.extend(self.held.take());
            let decisions = self.rt.mysql[self.rt.config.map.default_shard].clone();
            if let Err(e) = commit(&mut legs, &xid, &decisions).await {
                let (c, state, msg) = server_error(&e);
                self.error(c, &state, &format!("the write over several shards rolled back: {msg}"));
                return Ok(());
            }
            self.wrote_at = Some(std::time::Instant::now());
        }
        if first_id != 0 {
            self.last_insert_id = first_id;
        }
        let mut seq = self.client.reply_seq;
        let p = ok(affected, first_id, self.status(), warnings, "");
        self.client.put(&mut seq, &p);
        Ok(())
    }

    async fn abandon_own(&mut self) {
        let xid = self.xid.take().unwrap_or_default();
        let mut legs: Vec<Held> = self.parked.drain(..).collect();
        legs.extend(self.held.take());
        rollback(&mut legs, &xid).await;
    }
}

/// Finishes prepared branches a crash left behind, every `every` until `stop`: committed when
/// the decision exists, rolled back when none does and they are older than a minute. Each round
/// takes the shards of the configuration serving then (a reload may add or remove some).
pub async fn recover(shared: Arc<crate::app::Shared>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rt = shared.runtime.load_full();
        let shards = &rt.mysql;
        if shards.len() < 2 {
            continue;
        }
        let default = rt.config.map.default_shard;
        for s in shards {
            if let Err(e) = recover_shard(s, &shards[default]).await {
                tracing::debug!(shard = %s.name, error = %e, "XA recovery check failed");
            }
        }
    }
}

async fn recover_shard(shard: &MyShard, decisions: &MyShard) -> Result<(), MyError> {
    let mut conn = internal(shard).await?;
    let prepared = conn.query("XA RECOVER").await?;
    for row in prepared.rows {
        let Some(xid) = row
            .get(3)
            .and_then(|d| d.as_ref())
            .map(|d| String::from_utf8_lossy(d).into_owned())
        else {
            continue;
        };
        if !xid.starts_with(PREFIX) || xid.contains('\'') || in_flight().contains(&xid) {
            continue;
        }
        let mut d = internal(decisions).await?;
        let decided = match d.query(&format!("SELECT 1 FROM {TABLE} WHERE xid = '{xid}'")).await {
            Ok(r) => !r.rows.is_empty(),
            Err(MyError::Server { code: 1146, .. }) => false,
            Err(e) => return Err(e),
        };
        if decided {
            conn.query(&format!("XA COMMIT '{xid}'")).await?;
            tracing::info!(shard = %shard.name, xid, "XA recovery committed a prepared branch");
        } else if age(&xid).is_some_and(|a| a > ABANDONED) {
            conn.query(&format!("XA ROLLBACK '{xid}'")).await?;
            tracing::info!(shard = %shard.name, xid, "XA recovery rolled back a branch without a decision");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_carry_their_age() {
        let x = super::new_xid();
        assert!(x.starts_with("sw-") && x.len() <= 64, "{x}");
        assert!(super::age(&x).unwrap() < std::time::Duration::from_secs(5));
        assert!(super::age("sw-1000-ab").unwrap() > std::time::Duration::from_secs(3600));
        assert!(super::age("other").is_none());
    }
}
