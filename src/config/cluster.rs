//! `[cluster]`: several instances sharing one shard map through etcd, and a configuration with
//! another map swapped in (the one etcd holds) in place of the file's.

use std::sync::Arc;
use std::time::Duration;

use super::raw::RawConfig;
use super::{ClusterConfig, Config, ConfigError, err};
use crate::shardmap::ShardMap;

pub(super) fn cluster(raw: &RawConfig, listen: std::net::SocketAddr) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(c) = &raw.cluster else { return Ok(None) };
    if c.etcd.is_empty() {
        return Err(err(
            "cluster.etcd",
            "name at least one etcd endpoint, e.g. [\"127.0.0.1:2379\"]",
        ));
    }
    for (i, e) in c.etcd.iter().enumerate() {
        let hostport = e.strip_prefix("http://").unwrap_or(e);
        if hostport.is_empty() || !hostport.contains(':') || hostport.contains('/') {
            return Err(err(
                format!("cluster.etcd[{i}]"),
                format!("`{e}` is not an etcd endpoint like 127.0.0.1:2379 (TLS endpoints are not supported)"),
            ));
        }
    }
    if raw.sharding.is_none() {
        return Err(err(
            "cluster",
            "a cluster shares a shard map: configure one ([sharding] map), which seeds etcd when it holds none",
        ));
    }
    let prefix = c.prefix.clone().unwrap_or_else(|| "/shardwire".into());
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.len() < 2 {
        return Err(err(
            "cluster.prefix",
            format!("`{prefix}` must start with / and not end with one, e.g. /shardwire/prod"),
        ));
    }
    let ttl = c.ttl.unwrap_or(Duration::from_secs(5));
    if !(Duration::from_secs(2)..=Duration::from_secs(60)).contains(&ttl) {
        return Err(err("cluster.ttl", "must be between 2s and 60s"));
    }
    let name = match &c.name {
        Some(n) if n.is_empty() || n.contains('/') || n.len() > 100 => {
            return Err(err("cluster.name", "must be 1-100 characters without /"));
        }
        Some(n) => n.clone(),
        None => {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            let host = host.trim();
            format!("{}:{}", if host.is_empty() { "shardwire" } else { host }, listen.port())
        }
    };
    Ok(Some(ClusterConfig {
        etcd: c.etcd.clone(),
        prefix,
        name,
        ttl,
    }))
}

impl Config {
    /// This configuration with `map` in place of its own: the map shared through etcd. It must
    /// name the shards this configuration has (in any order).
    pub fn with_map(&self, map: ShardMap) -> Result<Config, String> {
        let mut shards = Vec::with_capacity(map.shards.len());
        for name in &map.shards {
            let s = self.shards.iter().find(|s| s.name == *name).ok_or_else(|| {
                format!("the shard map names shard `{name}`, which this instance's configuration has no [[shards]] entry for")
            })?;
            shards.push(s.clone());
        }
        if let Some(s) = self.shards.iter().find(|s| !map.shards.contains(&s.name)) {
            return Err(format!(
                "the shard map does not name shard `{}`, which this instance's configuration has",
                s.name
            ));
        }
        Ok(Config {
            shards,
            map: Arc::new(map),
            ..self.clone()
        })
    }
}
