//! `[[shards]]` and `[sharding]`: the nodes of every shard and the shard map that names them.

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;
use super::err;
use super::nodes::ShardConfig;
use super::nodes::node;
use super::raw::{RawConfig, RawShard};
use crate::shardmap::{self, ShardMap};

/// The shards, the map, its file, and the shards besides.
pub(super) struct Sharding {
    /// In map order.
    pub shards: Vec<ShardConfig>,
    /// A one-shard map when none is configured.
    pub map: ShardMap,
    /// The map's file.
    pub path: Option<std::path::PathBuf>,
    /// Entries the map does not name (only with `[cluster]`, where the map is etcd's).
    pub spare: Vec<ShardConfig>,
}

/// The shards in map order, the map and its file.
pub(super) fn shards_and_map(raw: &RawConfig, base: Option<&Path>) -> Result<Sharding, ConfigError> {
    let mut by_name = HashMap::new();
    for (i, s) in raw.shards.iter().enumerate() {
        if by_name.insert(s.name.as_str(), (i, s)).is_some() {
            return Err(err(
                format!("shards[{i}].name"),
                format!("shard `{}` is listed twice", s.name),
            ));
        }
    }
    let Some(sharding) = &raw.sharding else {
        let [s] = &raw.shards[..] else {
            return Err(err(
                "shards",
                format!(
                    "{} [[shards]] entries but no [sharding] map: one shard serves every table unless a shard map says which rows live where",
                    raw.shards.len()
                ),
            ));
        };
        return Ok(Sharding {
            shards: vec![shard(0, s)?],
            map: ShardMap::single(&s.name),
            path: None,
            spare: Vec::new(),
        });
    };
    let path = match base {
        Some(b) => b.join(&sharding.map),
        None => Path::new(&sharding.map).to_path_buf(),
    };
    let map = shardmap::load(&path).map_err(|e| err("sharding.map", e.to_string()))?;
    let mut shards = Vec::new();
    for name in &map.shards {
        let (i, s) = by_name.remove(name.as_str()).ok_or_else(|| {
            err(
                "shards",
                format!("the shard map names shard `{name}`, which has no [[shards]] entry"),
            )
        })?;
        shards.push(shard(i, s)?);
    }
    let mut rest: Vec<(usize, &RawShard)> = by_name.into_values().collect();
    rest.sort_by_key(|(i, _)| *i);
    if raw.cluster.is_none()
        && let Some((i, s)) = rest.first()
    {
        return Err(err(
            format!("shards[{i}]"),
            format!("shard `{}` is not in the shard map", s.name),
        ));
    }
    let spare = rest
        .into_iter()
        .map(|(i, s)| shard(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Sharding {
        shards,
        map,
        path: Some(path),
        spare,
    })
}

fn shard(i: usize, s: &RawShard) -> Result<ShardConfig, ConfigError> {
    let primary = node(
        &format!("{}/primary", s.name),
        &format!("shards[{i}].primary"),
        &s.primary,
    )?;
    let replicas = s
        .replicas
        .iter()
        .enumerate()
        .map(|(r, url)| {
            node(
                &format!("{}/replica{r}", s.name),
                &format!("shards[{i}].replicas[{r}]"),
                url,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ShardConfig {
        name: s.name.clone(),
        primary,
        replicas,
    })
}
