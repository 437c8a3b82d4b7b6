//! Reloading when the configuration or shard map file changes (`[server] watch_files`): both
//! files are checked every interval, and a change of their contents reloads exactly as SIGHUP
//! does. A file caught mid-write fails validation and leaves the running configuration serving;
//! the next check, once the writer is done, applies it. Polling, not inotify: two files, checked
//! once a second, cost nothing, and an editor's rename-over-the-file is seen the same way.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;

/// The contents of the configuration and map files, hashed.
pub fn fingerprint(shared: &Shared) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let map = shared.runtime.load().config.map_path.clone();
    for path in [shared.config_path.clone(), map].into_iter().flatten() {
        std::fs::read(&path).ok().hash(&mut h);
    }
    h.finish()
}

/// Watches until `token` fires; `seen`: the files' fingerprint when serving began.
pub async fn run(shared: Arc<Shared>, mut seen: u64, every: Duration, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = fingerprint(&shared);
        if now == seen {
            continue;
        }
        match shared.reload(false).await {
            Ok(m) => tracing::info!("files changed: {m}"),
            Err(e) => {
                tracing::error!(error = %e, "files changed but were not applied; the running configuration stays")
            }
        }
        // The contents seen before the reload, not the files as they are after it: a write that
        // landed meanwhile (or that the reload read half done) is seen at the next check. A write
        // the reload already applied costs one more reload that changes nothing.
        seen = now;
    }
}
