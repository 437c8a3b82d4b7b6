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
    /// This configuration with `map` in place of its own: the map shared through etcd. Every
    /// shard it names needs a `[[shards]]` entry here (in any order); entries it does not name
    /// are kept aside, unconnected, for a map that will (a shard being added).
    pub fn with_map(&self, map: ShardMap) -> Result<Config, String> {
        let known = || self.shards.iter().chain(&self.spare_shards);
        let mut shards = Vec::with_capacity(map.shards.len());
        for name in &map.shards {
            let s = known().find(|s| s.name == *name).ok_or_else(|| {
                format!("the shard map names shard `{name}`, which this instance's configuration has no [[shards]] entry for")
            })?;
            shards.push(s.clone());
        }
        let spare_shards: Vec<_> = known().filter(|s| !map.shards.contains(&s.name)).cloned().collect();
        if self.cluster.is_none()
            && let Some(s) = spare_shards.first()
        {
            return Err(format!(
                "the shard map does not name shard `{}`, which this instance's configuration has",
                s.name
            ));
        }
        Ok(Config {
            shards,
            spare_shards,
            map: Arc::new(map),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    fn config(shards: usize, cluster: bool) -> Result<super::Config, super::ConfigError> {
        let map = std::env::temp_dir().join(format!("shardwire-cluster-map-{}.toml", std::process::id()));
        std::fs::write(
            &map,
            "version = 1\nshards = [\"s0\", \"s1\"]\ndefault_shard = \"s0\"\n[groups.g]\nkey_type = \"bigint\"\n\
             partitioning = { kind = \"hash\", partitions = 4 }\nassignment = { s0 = \"0-1\", s1 = \"2-3\" }\n\
             [tables.t]\ngroup = \"g\"\nkey = \"id\"\n",
        )
        .unwrap();
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[users]]\nname = \"app\"\nauth = \"trust\"\n[sharding]\nmap = \"{}\"\n",
            map.display()
        );
        for i in 0..shards {
            text.push_str(&format!(
                "[[shards]]\nname = \"s{i}\"\nprimary = \"postgres://u@127.0.0.1:{}/d\"\n",
                5000 + i
            ));
        }
        if cluster {
            text.push_str("[cluster]\netcd = [\"127.0.0.1:2379\"]\n");
        }
        crate::config::parse(&text)
    }

    #[test]
    fn a_cluster_keeps_shards_its_map_does_not_name_yet_for_the_map_that_will() {
        // Without [cluster], every [[shards]] entry must be in the map.
        assert!(config(3, false).is_err());
        let c = config(3, true).unwrap();
        assert_eq!(c.shards.len(), 2);
        assert_eq!(c.spare_shards[0].name, "s2");
        // The map from etcd names s2 now: it serves, in the map's order.
        let mut map = (*c.map).clone();
        map.shards = vec!["s2".into(), "s0".into(), "s1".into()];
        let with = c.with_map(map.clone()).unwrap();
        let names: Vec<&str> = with.shards.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s2", "s0", "s1"]);
        assert!(with.spare_shards.is_empty());
        // A map naming a shard no entry describes is refused.
        map.shards.push("s9".into());
        assert!(c.with_map(map).unwrap_err().contains("s9"));
    }
}
