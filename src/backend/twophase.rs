//! Recovery of two-phase commits: finds transactions shardwire prepared on a shard (gid
//! `sw:<coordinator shard>:<id>`) that nobody finished, because shardwire or a shard stopped
//! between PREPARE and COMMIT PREPARED. The coordinator shard's `shardwire_2pc` table holds a row
//! for every decided commit, written in the coordinator's own transaction: with the row, the
//! prepared transaction is committed; without it, once older than `abort_after` (so the
//! coordinator's commit cannot still be in flight), it is rolled back. Decision rows older than a
//! day are deleted.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// What a recovery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Prepared transactions committed.
    pub committed: usize,
    /// Prepared transactions rolled back.
    pub rolled_back: usize,
}

async fn connect(cluster: &Cluster, timeout: Duration) -> Option<Client> {
    let cfg = cluster.writer().config.pg_config(timeout);
    let (c, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls)).await.ok()?.ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// One pass over every shard.
pub async fn recover(clusters: &[Arc<Cluster>], abort_after: Duration, timeout: Duration) -> Recovered {
    let mut done = Recovered::default();
    let mut clients: Vec<Option<Client>> = Vec::new();
    for c in clusters {
        clients.push(connect(c, timeout).await);
    }
    for (i, client) in clients.iter().enumerate() {
        let Some(client) = client else { continue };
        let Ok(rows) = client
            .query(
                "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts \
                 WHERE gid LIKE 'sw:%' AND database = current_database()",
                &[],
            )
            .await
        else {
            continue;
        };
        for row in rows {
            let gid: String = row.get(0);
            let age: f64 = row.get(1);
            let Some(coord) = gid
                .strip_prefix("sw:")
                .and_then(|r| r.rsplit_once(':'))
                .map(|(name, _)| name)
                .and_then(|name| clusters.iter().position(|c| c.name == name))
            else {
                continue;
            };
            let Some(coord_client) = &clients[coord] else { continue };
            let decided = match coord_client
                .query_opt("SELECT 1 FROM public.shardwire_2pc WHERE gid = $1", &[&gid])
                .await
            {
                Ok(r) => r.is_some(),
                // No table: no decision was ever recorded there.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => false,
                Err(_) => continue,
            };
            let quoted = gid.replace('\'', "''");
            if decided {
                if client
                    .batch_execute(&format!("COMMIT PREPARED '{quoted}'"))
                    .await
                    .is_ok()
                {
                    tracing::info!(%gid, shard = %clusters[i].name, "recovered a decided two-phase commit: committed");
                    done.committed += 1;
                }
            } else if age > abort_after.as_secs_f64()
                && client
                    .batch_execute(&format!("ROLLBACK PREPARED '{quoted}'"))
                    .await
                    .is_ok()
            {
                tracing::info!(%gid, shard = %clusters[i].name, "rolled back an undecided two-phase commit");
                done.rolled_back += 1;
            }
        }
        let _ = client
            .batch_execute("DELETE FROM public.shardwire_2pc WHERE decided_at < now() - interval '1 day'")
            .await;
    }
    done
}

/// Runs recovery every `every` until cancelled.
pub async fn run(clusters: Vec<Arc<Cluster>>, every: Duration, abort_after: Duration, token: CancellationToken) {
    loop {
        recover(&clusters, abort_after, Duration::from_secs(5)).await;
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
