//! `[[shards]]` and `[sharding]`: the nodes of every shard and the shard map that names them.

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;
use super::err;
use super::nodes::ShardConfig;
use super::nodes::node;
use super::raw::{RawConfig, RawShard};
use crate::shardmap::{self, ShardMap};

/// The shards in map order, the map (a one-shard map when none is configured) and its file.
pub(super) fn shards_and_map(
    raw: &RawConfig,
    base: Option<&Path>,
) -> Result<(Vec<ShardConfig>, ShardMap, Option<std::path::PathBuf>), ConfigError> {
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
        return Ok((vec![shard(0, s)?], ShardMap::single(&s.name), None));
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
    if let Some((_, (i, s))) = by_name.into_iter().min_by_key(|(_, (i, _))| *i) {
        return Err(err(
            format!("shards[{i}]"),
            format!("shard `{}` is not in the shard map", s.name),
        ));
    }
    Ok((shards, map, Some(path)))
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
