//! Changes to a shard's replicas from the admin console (`ADD REPLICA s1 'postgres://...'`,
//! `REMOVE REPLICA s1 'postgres://...'`): the configuration file is edited in place (toml_edit
//! keeps the DBA's comments and layout), written back atomically and reloaded. The reload checks
//! it as any other (a new node must accept a connection) and keeps the pools of every node that
//! did not change; if it is refused, the file is put back and nothing changes.

use toml_edit::{DocumentMut, Item, Value};

use super::Shared;
use super::map_change::write_off_runtime;
use crate::config::ConfigError;

/// Adding or removing one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChange {
    /// The shard's name.
    pub shard: String,
    /// The replica's URL, as written in the configuration.
    pub url: String,
    /// Add it (or remove it).
    pub add: bool,
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// `text` with the change made to its `[[shards]]` entry.
pub fn edit(text: &str, change: &ReplicaChange) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("the file does not parse: {e}"))?;
    let shards = doc
        .get_mut("shards")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or("the file has no [[shards]]")?;
    let names: Vec<String> = shards
        .iter()
        .filter_map(|t| t.get("name").and_then(Item::as_str).map(str::to_owned))
        .collect();
    let shard = shards
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(change.shard.as_str()))
        .ok_or_else(|| format!("no shard named {} (shards: {})", change.shard, names.join(", ")))?;
    if shard.get("replicas").is_none() {
        shard.insert("replicas", Item::Value(Value::Array(Default::default())));
    }
    let replicas = shard
        .get_mut("replicas")
        .and_then(Item::as_array_mut)
        .ok_or("`replicas` of the shard is not a list")?;
    let at = replicas.iter().position(|v| v.as_str() == Some(change.url.as_str()));
    match (change.add, at) {
        (true, Some(_)) => return Err(format!("shard {} already has this replica", change.shard)),
        (true, None) => replicas.push(change.url.as_str()),
        (false, Some(i)) => {
            replicas.remove(i);
        }
        (false, None) => {
            return Err(format!(
                "shard {} has no replica with this URL (written exactly as in the configuration; SHOW REPLICAS lists them)",
                change.shard
            ));
        }
    }
    Ok(doc.to_string())
}

impl Shared {
    /// Makes `change` to the configuration file and reloads it. Returns what was done.
    pub async fn change_replicas(&self, change: &ReplicaChange, by: &str) -> Result<String, ConfigError> {
        // One change at a time in this process, shared with the map's: each rewrites a file whole.
        let _one = self.map_edit.lock().await;
        let Some(path) = self.config_path.clone() else {
            return Err(invalid("ADD REPLICA", "not serving from a config file"));
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let on_disk = crate::config::parse(&text).map_err(|e| invalid(&shown, e.to_string()))?;
        if on_disk.shards != self.runtime.load().config.shards {
            return Err(invalid(
                &shown,
                "the file holds changes to [[shards]] not loaded yet: RELOAD them first, or undo them",
            ));
        }
        let new_text = edit(&text, change).map_err(|m| invalid(&shown, m))?;
        write_off_runtime(&path, &new_text)
            .await
            .map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
        if let Err(e) = self.reload_as(false, by).await {
            // The file no longer matches what serves: put the old one back.
            let _ = write_off_runtime(&path, &text).await;
            return Err(e);
        }
        let what = if change.add { "added to" } else { "removed from" };
        tracing::info!(%by, shard = %change.shard, "replica {what} the shard by an admin command");
        Ok(format!("replica {what} shard {}; configuration reloaded", change.shard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# the DBA's comment stays
[[shards]]
name = "s0"
primary = "postgres://p0/app"

[[shards]]
name = "s1"
primary = "postgres://p1/app"
replicas = ["postgres://r1/app"] # and this one
"#;

    fn change(shard: &str, url: &str, add: bool) -> ReplicaChange {
        ReplicaChange {
            shard: shard.into(),
            url: url.into(),
            add,
        }
    }

    #[test]
    fn replicas_are_added_and_removed_in_place() {
        let added = edit(TEXT, &change("s0", "postgres://r0/app", true)).unwrap();
        assert!(added.contains("# the DBA's comment stays") && added.contains("# and this one"));
        let c: toml::Value = toml::from_str(&added).unwrap();
        assert_eq!(c["shards"][0]["replicas"][0].as_str(), Some("postgres://r0/app"));
        let second = edit(&added, &change("s1", "postgres://r2/app", true)).unwrap();
        let c: toml::Value = toml::from_str(&second).unwrap();
        assert_eq!(c["shards"][1]["replicas"].as_array().unwrap().len(), 2);
        let removed = edit(&second, &change("s1", "postgres://r1/app", false)).unwrap();
        let c: toml::Value = toml::from_str(&removed).unwrap();
        assert_eq!(c["shards"][1]["replicas"][0].as_str(), Some("postgres://r2/app"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = edit(TEXT, &change("s9", "postgres://x/app", true)).unwrap_err();
        assert!(e.contains("no shard named s9") && e.contains("s0, s1"), "{e}");
        let e = edit(TEXT, &change("s1", "postgres://r1/app", true)).unwrap_err();
        assert!(e.contains("already has"), "{e}");
        let e = edit(TEXT, &change("s1", "postgres://nope/app", false)).unwrap_err();
        assert!(e.contains("no replica with this URL"), "{e}");
    }
}
