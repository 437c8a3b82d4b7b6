//! Changes to the running shard map from the admin console (`SET PARTITION ...`): the map file
//! (or, in a cluster, the map in etcd: `cluster_sync`) is edited (`shardmap::edit`), checked like any reload (a change that sends stored rows to
//! another shard needs `DATA IN PLACE`), written back atomically (a temporary file, fsync,
//! rename, fsync of the folder), and reloaded; or, with `DRY RUN`, only described. Every change
//! applied is kept in a short history for `SHOW MAP HISTORY`.

use std::io::Write;
use std::path::Path;

use super::Shared;
use crate::config::ConfigError;
use crate::shardmap::edit::{self, MapEdit};

/// How many applied changes `SHOW MAP HISTORY` keeps.
const HISTORY: usize = 100;

/// One applied change.
#[derive(Debug, Clone)]
pub struct MapChange {
    /// When, as seconds since the Unix epoch.
    pub at: u64,
    /// Version before.
    pub from: u64,
    /// Version after.
    pub to: u64,
    /// Who asked: the admin user, or "file" for a reload.
    pub by: String,
    /// What changed.
    pub what: String,
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

impl Shared {
    /// Applies `change` to the map, based on version `based_on` when given. Returns what was
    /// done (or, `dry_run`, what would be).
    pub async fn change_map(
        &self,
        change: &MapEdit,
        based_on: Option<u64>,
        data_in_place: bool,
        dry_run: bool,
        by: &str,
    ) -> Result<String, ConfigError> {
        let r = self.try_change_map(change, based_on, data_in_place, dry_run, by).await;
        if r.is_err() {
            self.stats
                .rejected_reloads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    async fn try_change_map(
        &self,
        change: &MapEdit,
        based_on: Option<u64>,
        data_in_place: bool,
        dry_run: bool,
        by: &str,
    ) -> Result<String, ConfigError> {
        // One change at a time in this process: the file is read, edited and written whole.
        let _one = self.map_edit.lock().await;
        let runtime = self.runtime.load_full();
        let serving = &runtime.config.map;
        if runtime.config.cluster.is_some() {
            // The map lives in etcd: edited from its text there, stored by compare-and-swap.
            let mut store = self.cluster.store(serving.version).await?;
            let (text, revision) = store
                .map()
                .await
                .map_err(|e| invalid("cluster.etcd", format!("{e}; nothing was changed")))?
                .ok_or_else(|| invalid("cluster.etcd", "etcd holds no shard map yet; try again in a moment"))?;
            let in_etcd =
                crate::shardmap::parse(&text).map_err(|e| invalid(&format!("etcd: {}", e.path), e.message))?;
            if in_etcd != **serving {
                return Err(invalid(
                    "cluster",
                    format!(
                        "this instance serves map version {} and etcd holds version {}: it is catching up; try again in a moment",
                        serving.version, in_etcd.version
                    ),
                ));
            }
            let (new_text, new_map, summary) = edited(&text, serving, change, based_on, data_in_place, "etcd")?;
            if dry_run {
                return Ok(format!("dry run, nothing changed: {summary}"));
            }
            let acks = self
                .store_map_change(store, &new_text, revision, new_map.version, by)
                .await?;
            tracing::info!(%by, change = %summary, "shard map changed by an admin command, through etcd");
            return Ok(format!("{summary}; {acks}"));
        }
        let Some(path) = runtime.config.map_path.clone() else {
            return Err(invalid(
                "sharding.map",
                "no shard map file is configured ([sharding] map)",
            ));
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let shown = path.display().to_string();
        let on_disk = crate::shardmap::parse(&text).map_err(|e| invalid(&format!("{shown}: {}", e.path), e.message))?;
        if on_disk != **serving {
            return Err(invalid(
                &shown,
                format!(
                    "the file holds changes not loaded yet (version {} on disk, {} serving): RELOAD them first, or undo them",
                    on_disk.version, serving.version
                ),
            ));
        }
        let (new_text, new_map, summary) = edited(&text, serving, change, based_on, data_in_place, &shown)?;
        if dry_run {
            return Ok(format!("dry run, nothing changed: {summary}"));
        }
        write_off_runtime(&path, &new_text)
            .await
            .map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
        // Only the map changed: the rest of the running configuration stays as it is (the file
        // is not read again, so a change to it waits for RELOAD as before).
        let config = runtime
            .config
            .as_ref()
            .clone()
            .with_map(new_map.clone())
            .map_err(|m| invalid(&shown, m))?;
        if let Err(e) = self.apply_config(config, data_in_place, by, &shown).await {
            // The file no longer matches what serves: put the old one back.
            let _ = write_off_runtime(&path, &text).await;
            return Err(e);
        }
        tracing::info!(%by, change = %summary, "shard map changed by an admin command");
        self.record_change(serving.version, new_map.version, by, change.to_string());
        Ok(summary)
    }

    /// Records a change applied (admin command or file reload).
    pub(crate) fn record_change(&self, from: u64, to: u64, by: &str, what: String) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut h = self.map_history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(MapChange {
            at,
            from,
            to,
            by: by.to_owned(),
            what,
        });
    }

    /// The changes applied, oldest first.
    pub fn map_history(&self) -> Vec<MapChange> {
        self.map_history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// `text` (the serving map's) with `change` applied: the new text, the new map and a summary. A
/// change that sends stored rows to another shard needs `data_in_place`.
fn edited(
    text: &str,
    serving: &crate::shardmap::ShardMap,
    change: &MapEdit,
    based_on: Option<u64>,
    data_in_place: bool,
    shown: &str,
) -> Result<(String, crate::shardmap::ShardMap, String), ConfigError> {
    let (new_text, new_map) = edit::apply(text, serving, change, based_on)
        .map_err(|e| invalid(&format!("{shown}: {}", e.path), e.message))?;
    let moves = crate::shardmap::diff::moves(serving, &new_map);
    if !moves.is_empty() && !data_in_place {
        return Err(invalid(
            shown,
            format!(
                "the change sends existing rows to another shard, where they are not yet: {}. Move the data first \
                 (shardwire rebalance), or, if it is already there, add DATA IN PLACE",
                moves.join("; ")
            ),
        ));
    }
    let summary = format!(
        "version {} -> {}: {change}{}",
        serving.version,
        new_map.version,
        if moves.is_empty() {
            String::new()
        } else {
            format!(" (moves {})", moves.join("; "))
        }
    );
    Ok((new_text, new_map, summary))
}

/// Replaces `path` with `text` so that a reader (or a crash) sees the old file or the new one,
/// never a part: a temporary file beside it, synced, renamed over it, and the folder synced.
/// [`write_atomically`] on a blocking thread: its fsyncs can take long on a busy disk, and the
/// runtime's workers serve clients meanwhile.
pub(super) async fn write_off_runtime(path: &Path, text: &str) -> std::io::Result<()> {
    let (path, text) = (path.to_owned(), text.to_owned());
    tokio::task::spawn_blocking(move || write_atomically(&path, &text))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

pub(super) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("map"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
