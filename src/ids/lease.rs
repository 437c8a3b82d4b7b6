//! Worker ids leased from a PostgreSQL database, so running instances never share one. The lease
//! table holds, per worker id, its holder, the expiry and the last millisecond the holder issued
//! IDs in. An instance takes the lowest free or expired id, renews every third of the TTL, and
//! records its last issued millisecond with each renewal (a restart, even on a clock that went
//! back, starts after it). If renewals fail, the instance stops issuing IDs two thirds of a TTL
//! after its last successful renewal, before the lease can expire and be taken by another
//! instance; it takes a lease again (perhaps another id) when the store is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::Generator;

/// Creates the lease table if needed.
pub const LEASE_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS shardwire_worker_leases (
    worker_id int PRIMARY KEY CHECK (worker_id BETWEEN 0 AND 1023),
    holder text NOT NULL,
    expires_at timestamptz NOT NULL,
    last_ms bigint NOT NULL DEFAULT 0)";

/// Where and how long.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Connection to the lease store.
    pub store: tokio_postgres::Config,
    /// Lease length.
    pub ttl: Duration,
    /// This instance's name in the table.
    pub holder: String,
}

async fn connect(s: &LeaseSettings) -> Result<Client, String> {
    let (c, conn) = tokio::time::timeout(s.ttl / 3, s.store.connect(NoTls))
        .await
        .map_err(|_| "timed out connecting to the lease store".to_string())?
        .map_err(|e| format!("cannot reach the lease store: {e}"))?;
    tokio::spawn(conn);
    Ok(c)
}

/// Takes the lowest free or expired worker id; returns it and its last issued millisecond.
pub async fn acquire(c: &mut Client, s: &LeaseSettings) -> Result<(u16, u64), String> {
    let e = |e: tokio_postgres::Error| format!("lease store: {e}");
    c.batch_execute(LEASE_TABLE_DDL).await.map_err(e)?;
    let tx = c.transaction().await.map_err(e)?;
    // One acquisition at a time, so two instances never pick the same free id.
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('shardwire_worker_leases'))")
        .await
        .map_err(e)?;
    let ttl_ms = s.ttl.as_millis() as i64;
    let row = tx
        .query_opt(
            "SELECT g, coalesce(l.last_ms, 0) FROM generate_series(0, 1023) g
             LEFT JOIN shardwire_worker_leases l ON l.worker_id = g
             WHERE l.worker_id IS NULL OR l.expires_at < now() OR l.holder = $1
             ORDER BY (l.holder = $1) DESC NULLS LAST, (l.worker_id IS NULL), g LIMIT 1",
            &[&s.holder],
        )
        .await
        .map_err(e)?
        .ok_or("all 1024 worker ids are leased")?;
    let (id, last_ms): (i32, i64) = (row.get(0), row.get(1));
    tx.execute(
        "INSERT INTO shardwire_worker_leases (worker_id, holder, expires_at, last_ms)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4)
         ON CONFLICT (worker_id) DO UPDATE SET holder = $2, expires_at = EXCLUDED.expires_at",
        &[&id, &s.holder, &(ttl_ms as f64), &last_ms],
    )
    .await
    .map_err(e)?;
    tx.commit().await.map_err(e)?;
    Ok((id as u16, last_ms.max(0) as u64))
}

/// Extends the lease and records the last issued millisecond; `Ok(false)` if the lease is no
/// longer ours.
pub async fn renew(c: &Client, s: &LeaseSettings, worker: u16, last_ms: u64) -> Result<bool, String> {
    let n = c
        .execute(
            "UPDATE shardwire_worker_leases SET expires_at = now() + $3 * interval '1 millisecond',
                 last_ms = greatest(last_ms, $4)
             WHERE worker_id = $1 AND holder = $2",
            &[
                &(worker as i32),
                &s.holder,
                &(s.ttl.as_millis() as f64),
                &(last_ms as i64),
            ],
        )
        .await
        .map_err(|e| format!("lease store: {e}"))?;
    Ok(n == 1)
}

/// Holds a lease for `generator` until cancelled: acquire, renew every third of the TTL, stop the
/// generator when renewals fail for two thirds of it.
pub async fn run(generator: Arc<Generator>, s: LeaseSettings, token: CancellationToken) {
    let every = s.ttl / 3;
    let mut client: Option<Client> = None;
    let mut held: Option<(u16, Instant)> = None;
    loop {
        let outcome: Result<(), String> = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = Some(connect(&s).await?);
            }
            let c = client.as_mut().ok_or("no lease store connection")?;
            match held {
                Some((worker, _)) => {
                    let started = Instant::now();
                    if renew(c, &s, worker, generator.last_ms()).await? {
                        held = Some((worker, started));
                        generator.set_valid_until(Some(started + s.ttl * 2 / 3));
                    } else {
                        generator.disable(&format!("the lease on worker id {worker} was lost"));
                        held = None;
                    }
                }
                None => {
                    let started = Instant::now();
                    let (worker, last_ms) = acquire(c, &s).await?;
                    generator.set_valid_until(Some(started + s.ttl * 2 / 3));
                    generator.enable(worker, last_ms);
                    tracing::info!(worker, holder = %s.holder, "leased worker id");
                    held = Some((worker, started));
                }
            }
            Ok(())
        }
        .await;
        if let Err(why) = outcome {
            tracing::warn!(%why, "worker id lease not renewed");
            client = None;
            if held.is_none() {
                generator.disable(&why);
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
