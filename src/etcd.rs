//! The cluster's shared state in etcd (`[cluster]`): the shard map every instance serves, changed
//! only by compare-and-swap on its etcd revision, and the instances themselves, each listed under a
//! lease with the map version it serves and a heartbeat. etcd is the store built for exactly this
//! (consensus, leases, watches); the `etcd-client` crate speaks its v3 API.
//!
//! Keys, under the configured prefix: `map` (the map's TOML text, as in a map file) and
//! `instances/<name>` (an [`Instance`] record, TOML, attached to the instance's lease).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    Txn, TxnOp, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};

/// Every request gives up after this long: an instance never waits on etcd for longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Why etcd did not answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out, or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value under our keys that is not what we write there.
    #[error("etcd holds an unreadable value at {0}")]
    Unreadable(String),
    /// The watch ended (etcd restarted or the connection dropped).
    #[error("etcd watch ended: {0}")]
    WatchEnded(String),
}

/// What an instance publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its `[cluster] name`.
    pub name: String,
    /// The shard map version it serves.
    pub version: u64,
    /// Its last heartbeat, milliseconds since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Where clients connect to it.
    pub listen: String,
    /// Its process id.
    pub pid: u32,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A connection to the cluster's etcd. Cheap to clone (one channel underneath).
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

impl Store {
    /// Connects to `endpoints` (`[cluster] etcd`), for the keys under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Store, StoreError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.starts_with("http://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Store {
            client,
            prefix: prefix.to_owned(),
        })
    }

    fn map_key(&self) -> String {
        format!("{}/map", self.prefix)
    }

    fn instance_key(&self, name: &str) -> String {
        format!("{}/instances/{name}", self.prefix)
    }

    /// The map's text and its etcd revision, if etcd holds one.
    pub async fn map(&mut self) -> Result<Option<(String, i64)>, StoreError> {
        let key = self.map_key();
        let r = self.client.get(key.clone(), None).await?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let text = kv.value_str().map_err(|_| StoreError::Unreadable(key))?;
                Ok(Some((text.to_owned(), kv.mod_revision())))
            }
        }
    }

    /// Stores `text` as the map if etcd holds none yet (the first instance seeds it from its
    /// file); whether it did.
    pub async fn create_map(&mut self, text: &str) -> Result<bool, StoreError> {
        let key = self.map_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, text, None)]);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    /// Replaces the map with `text` if it is still at `revision` (no other change came first);
    /// whether it did.
    pub async fn replace_map(&mut self, text: &str, revision: i64) -> Result<bool, StoreError> {
        let key = self.map_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, text, None)]);
        Ok(self.client.txn(txn).await?.succeeded())
    }

    /// The map's changes from `revision` on.
    pub async fn watch_map(&mut self, revision: i64) -> Result<MapWatch, StoreError> {
        let stream = self
            .client
            .watch(self.map_key(), Some(WatchOptions::new().with_start_revision(revision)))
            .await?;
        Ok(MapWatch(stream))
    }

    /// A lease of `ttl`, kept alive through the returned keeper.
    pub async fn lease(&mut self, ttl: Duration) -> Result<Lease, StoreError> {
        let granted = self.client.lease_grant(ttl.as_secs().max(1) as i64, None).await?;
        let (keeper, stream) = self.client.lease_keep_alive(granted.id()).await?;
        Ok(Lease {
            id: granted.id(),
            keeper,
            stream,
        })
    }

    /// Ends a lease now: its keys go at once instead of after the TTL.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        self.client.lease_revoke(lease).await?;
        Ok(())
    }

    /// Publishes `me` under `lease`.
    pub async fn publish(&mut self, me: &Instance, lease: i64) -> Result<(), StoreError> {
        let text = toml::to_string(me).map_err(|e| StoreError::Unreadable(e.to_string()))?;
        self.client
            .put(
                self.instance_key(&me.name),
                text,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// Claims the lowest worker id up to `max` no live lease holds, under `lease`: the id and the last
    /// millisecond its holders issued IDs in (recorded by [`Store::worker_issued`]).
    pub async fn claim_worker(&mut self, lease: i64, holder: &str, max: u16) -> Result<Option<(u16, u64)>, StoreError> {
        let taken = self
            .client
            .get(
                format!("{}/workers/", self.prefix),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let taken: Vec<String> = taken
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
            .collect();
        for id in 0..=max {
            let key = format!("{}/workers/{id}", self.prefix);
            if taken.contains(&key) {
                continue;
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, holder, Some(PutOptions::new().with_lease(lease)))]);
            if self.client.txn(txn).await?.succeeded() {
                let last = self.client.get(self.worker_last_key(id), None).await?;
                let last_ms = last
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok()?.parse().ok())
                    .unwrap_or(0);
                return Ok(Some((id, last_ms)));
            }
        }
        Ok(None)
    }

    fn worker_last_key(&self, id: u16) -> String {
        format!("{}/worker-last-ms/{id}", self.prefix)
    }

    /// Records that worker `id` issued IDs up to `last_ms`: whoever holds the id next starts
    /// after it, even on a clock that went back.
    pub async fn worker_issued(&mut self, id: u16, last_ms: u64) -> Result<(), StoreError> {
        self.client
            .put(self.worker_last_key(id), last_ms.to_string(), None)
            .await?;
        Ok(())
    }

    /// The instances listed now (their leases alive), by name.
    pub async fn instances(&mut self) -> Result<Vec<Instance>, StoreError> {
        let prefix = format!("{}/instances/", self.prefix);
        let r = self.client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let mut out: Vec<Instance> = r
            .kvs()
            .iter()
            .filter_map(|kv| toml::from_str(kv.value_str().ok()?).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// A lease and what keeps it alive.
pub struct Lease {
    /// The lease id.
    pub id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Lease {
    /// Renews the lease; an error when etcd no longer has it (expired while unreachable).
    pub async fn renew(&mut self) -> Result<(), StoreError> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::WatchEnded(format!("lease {:x} expired", self.id))),
        }
    }
}

/// New texts of the map as they are stored.
pub struct MapWatch(WatchStream);

impl MapWatch {
    /// The next texts stored (with their revisions); an error when the watch ends.
    pub async fn next(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        match self.0.message().await? {
            None => Err(StoreError::WatchEnded("closed".into())),
            Some(r) if r.canceled() => Err(StoreError::WatchEnded(r.cancel_reason().to_owned())),
            Some(r) => Ok(r
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| {
                    let kv = e.kv()?;
                    Some((kv.value_str().ok()?.to_owned(), kv.mod_revision()))
                })
                .collect()),
        }
    }
}
