//! One instance of a cluster sharing its shard map through etcd (`[cluster]`): it serves the map
//! etcd holds (seeding etcd from its file when etcd holds none), follows every change through a
//! watch, publishes under a lease the version it serves with a heartbeat, and makes the admin
//! console's map changes as compare-and-swaps on the map's etcd revision. With etcd unreachable
//! it keeps serving the last map it had, refuses changes, and catches up when etcd is back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::{ClusterConfig, ConfigError};
use crate::etcd::{Instance, Store, StoreError, now_ms};

/// The cluster's state as this instance last saw it.
#[derive(Default)]
pub struct ClusterState {
    /// A connection to etcd while it answers; `None` while it does not.
    store: tokio::sync::Mutex<Option<Store>>,
    /// Why etcd is not connected, or "connected".
    status: std::sync::Mutex<String>,
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

impl ClusterState {
    /// "connected", or why not.
    pub fn status(&self) -> String {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if s.is_empty() { "connecting".into() } else { s }
    }

    fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    /// The connection to etcd, or the error a map change gets without one.
    pub(super) async fn store(&self, serving: u64) -> Result<Store, ConfigError> {
        self.store.lock().await.clone().ok_or_else(|| {
            invalid(
                "cluster.etcd",
                format!(
                    "etcd is unreachable ({}): map changes are refused until it answers again; this instance keeps serving map version {serving}",
                    self.status()
                ),
            )
        })
    }
}

impl Shared {
    /// Serves `text` (a map from etcd) if it is valid and newer than the one serving; what it
    /// did, for the log.
    /// `first`: the first map read after connecting, served whatever its version (etcd's map is
    /// the cluster's; the file's only seeds etcd).
    pub(super) fn adopt_map(&self, text: &str, by: &str, first: bool) -> Result<bool, String> {
        let map = crate::shardmap::parse(text).map_err(|e| format!("{}: {}", e.path, e.message))?;
        let old = self.runtime.load_full();
        if map == *old.config.map {
            return Ok(false);
        }
        if map.version <= old.config.map.version && !first {
            return Err(format!(
                "etcd holds map version {}, not newer than the {} serving",
                map.version, old.config.map.version
            ));
        }
        let config = old.config.with_map(map)?;
        let moves = crate::shardmap::diff::moves(&old.config.map, &config.map);
        let versions = (old.config.map.version, config.map.version);
        let next = super::Runtime::new(config, Some(&old));
        self.runtime.store(next.clone());
        old.replaced_by(&next);
        self.shapes.clear();
        self.forget_columns();
        self.stats.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = if moves.is_empty() {
            "map from etcd".to_string()
        } else {
            format!("map from etcd, moving: {}", moves.join("; "))
        };
        tracing::info!(old_version = versions.0, new_version = versions.1, %what, "shard map changed");
        self.record_change(versions.0, versions.1, by, what);
        Ok(true)
    }

    /// A map change made through etcd: `new_text` replaces the map at `revision` unless another
    /// change came first; then this instance serves it and waits (bounded) for the others.
    pub(super) async fn store_map_change(
        &self,
        mut store: Store,
        new_text: &str,
        revision: i64,
        version: u64,
        by: &str,
    ) -> Result<String, ConfigError> {
        let unreachable = |e: StoreError| invalid("cluster.etcd", format!("{e}; nothing was changed"));
        if !store.replace_map(new_text, revision).await.map_err(unreachable)? {
            return Err(invalid(
                "cluster",
                "another change to the shard map was stored in etcd first: see SHOW MAP and SHOW MAP HISTORY, then make the change again based on the new version",
            ));
        }
        self.adopt_map(new_text, by, false).map_err(|m| invalid("cluster", m))?;
        Ok(self.acknowledged(&mut store, version).await)
    }

    /// Waits up to five seconds for every listed instance to serve `version`.
    async fn acknowledged(&self, store: &mut Store, version: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match store.instances().await {
                Ok(all) => {
                    let behind: Vec<String> = all
                        .iter()
                        .filter(|i| i.version < version)
                        .map(|i| format!("{} (serving {})", i.name, i.version))
                        .collect();
                    if behind.is_empty() {
                        return format!("acknowledged by all {} instances", all.len());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return format!("stored in etcd; not yet acknowledged by {}", behind.join(", "));
                    }
                }
                Err(e) => return format!("stored in etcd; acknowledgements unknown ({e})"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The instances etcd lists, or why it cannot be asked.
    pub async fn cluster_instances(&self) -> Result<Vec<Instance>, String> {
        let serving = self.runtime.load().config.map.version;
        let mut store = self.cluster.store(serving).await.map_err(|e| e.to_string())?;
        store.instances().await.map_err(|e| e.to_string())
    }
}

/// Keeps this instance in its cluster until `stop`: connects, serves etcd's map, publishes
/// itself, follows changes; reconnects after any failure.
pub async fn run(shared: Arc<Shared>, c: ClusterConfig, listen: String, stop: CancellationToken) {
    loop {
        let r = tokio::select! {
            () = stop.cancelled() => return,
            r = member(&shared, &c, &listen, &stop) => r,
        };
        *shared.cluster.store.lock().await = None;
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "etcd: not following the cluster's shard map; serving the last one and retrying");
                shared.cluster.set_status(format!("unreachable: {e}"));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn member(shared: &Shared, c: &ClusterConfig, listen: &str, stop: &CancellationToken) -> Result<(), StoreError> {
    let mut store = Store::connect(&c.etcd, &c.prefix).await?;
    let (text, revision) = match store.map().await? {
        Some(m) => m,
        None => {
            let path = shared.runtime.load().config.map_path.clone();
            let text = path.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            if store.create_map(&text).await? {
                tracing::info!("etcd held no shard map: seeded it with this instance's map file");
            }
            store.map().await?.ok_or_else(|| StoreError::Unreadable("map".into()))?
        }
    };
    follow(shared, &text, true);
    let mut lease = store.lease(c.ttl).await?;
    let me = |shared: &Shared| Instance {
        name: c.name.clone(),
        version: shared.runtime.load().config.map.version,
        heartbeat_ms: now_ms(),
        listen: listen.to_owned(),
        pid: std::process::id(),
    };
    store.publish(&me(shared), lease.id).await?;
    let mut watch = store.watch_map(revision + 1).await?;
    *shared.cluster.store.lock().await = Some(store.clone());
    shared.cluster.set_status("connected".into());
    let mut beat = tokio::time::interval(c.ttl / 3);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // Leave the list at once rather than after the TTL.
                let _ = tokio::time::timeout(Duration::from_secs(1), store.revoke(lease.id)).await;
                return Ok(());
            }
            _ = beat.tick() => {
                lease.renew().await?;
                store.publish(&me(shared), lease.id).await?;
            }
            changes = watch.next() => {
                for (text, _) in changes? {
                    follow(shared, &text, false);
                }
                store.publish(&me(shared), lease.id).await?;
            }
        }
    }
}

/// Serves `text` if newer; a bad map is logged and counted, and the running one stays.
fn follow(shared: &Shared, text: &str, first: bool) {
    if let Err(why) = shared.adopt_map(text, "etcd", first) {
        shared
            .stats
            .rejected_reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(reason = %why, "the shard map in etcd was not applied; the running map keeps serving");
    }
}
