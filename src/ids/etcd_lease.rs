//! Worker ids leased through the cluster's etcd (`[ids] lease = "etcd"`): an instance claims the
//! lowest id no live etcd lease holds, with a create-only transaction, under a lease of its own;
//! etcd deletes the claim when the lease expires. Renewals every third of the TTL also record the
//! last millisecond the instance issued IDs in, so the next holder of the id (a restart, even on a
//! clock that went back) starts after it. As with the PostgreSQL lease store, IDs stop two thirds
//! of a TTL after the last renewal that succeeded, before etcd can give the id to another instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Generator, MAX_WORKER};
use crate::etcd::{Lease, Store, StoreError};

/// Where the cluster's etcd is (`[cluster]`), and this instance's name there.
#[derive(Debug, Clone)]
pub struct EtcdLease {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// The cluster's key prefix.
    pub prefix: String,
    /// This instance's name.
    pub name: String,
    /// Lease length.
    pub ttl: Duration,
}

/// Holds a worker id for `generator` until cancelled.
pub async fn run(generator: Arc<Generator>, lease: EtcdLease, token: CancellationToken) {
    let ttl = lease.ttl;
    let holder = format!("{} (pid {})", lease.name, std::process::id());
    loop {
        let outcome = tokio::select! {
            () = token.cancelled() => return,
            r = hold(&generator, &lease, &holder) => r,
        };
        let why = match outcome {
            Ok(()) => "the worker id lease ended".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(%why, "worker id lease through etcd lost; taking one again");
        // Issuing stops by itself when the last renewal is two thirds of a TTL old.
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(ttl / 3) => {}
        }
    }
}

async fn hold(generator: &Generator, lease_at: &EtcdLease, holder: &str) -> Result<(), StoreError> {
    let ttl = lease_at.ttl;
    let mut store = Store::connect(&lease_at.endpoints, &lease_at.prefix).await?;
    let started = Instant::now();
    let mut lease: Lease = store.lease(ttl).await?;
    let Some((worker, last_ms)) = store.claim_worker(lease.id, holder, MAX_WORKER).await? else {
        generator.disable("every worker id is leased by another instance");
        return Ok(());
    };
    generator.set_valid_until(Some(started + ttl * 2 / 3));
    generator.enable(worker, last_ms);
    tracing::info!(worker, %holder, "leased worker id through etcd");
    loop {
        tokio::time::sleep(ttl / 3).await;
        let started = Instant::now();
        lease.renew().await?;
        generator.set_valid_until(Some(started + ttl * 2 / 3));
        store.worker_issued(worker, generator.last_ms()).await?;
    }
}
