//! Keeps the partition moves' progress at hand for the metrics endpoint: while the map has a
//! partition moving or fenced (or a move read last time was still open), the moves recorded on
//! the shards are read every few seconds (`rebalance::status`). Nothing is read otherwise, so a
//! cluster that moves nothing pays nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;

/// How often moves are read while any is under way.
const EVERY: Duration = Duration::from_secs(2);

/// Watches until `token` fires.
pub async fn run(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let rt = shared.runtime.load_full();
        let moving = rt.config.map.groups.iter().any(|g| !g.states.is_empty());
        let open = shared.moves().iter().any(|m| m.open());
        if moving || open {
            let (moves, errors) = crate::rebalance::status::read(&rt.config.shards).await;
            if !errors.is_empty() {
                tracing::debug!(errors = %errors.join("; "), "reading partition moves");
            }
            shared.set_moves(moves);
        }
    }
}
