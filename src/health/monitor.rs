//! The monitor task: on every interval, the primary's WAL position and each replica's replay
//! position and replay age, over a dedicated tokio-postgres connection per node, each query under
//! a timeout. Results are published into `Node::health`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::{Bounds, HealthState, NodeHealth, Observation, next_replica_health};
use crate::backend::{Cluster, Node};

/// Monitor settings.
#[derive(Clone, Copy, Debug)]
pub struct MonitorSettings {
    /// Lag bound.
    pub bounds: Bounds,
    /// Check interval.
    pub interval: Duration,
    /// Good checks before a replica rejoins.
    pub healthy_after: u32,
    /// Connect timeout for monitor connections.
    pub connect_timeout: Duration,
}

const PRIMARY_SQL: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
const REPLICA_SQL: &str = "SELECT pg_is_in_recovery(), \
     (COALESCE(pg_last_wal_replay_lsn(), '0/0'::pg_lsn) - '0/0'::pg_lsn)::bigint, \
     extract(epoch from (now() - pg_last_xact_replay_timestamp()))::float8, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END";

/// Runs until `token` is cancelled.
pub async fn run(cluster: Arc<Cluster>, settings: MonitorSettings, token: CancellationToken) {
    let mut primary_client: Option<Client> = None;
    let mut replica_clients: Vec<Option<Client>> = cluster.replicas.iter().map(|_| None).collect();
    let mut prev_primary_lsn: Option<u64> = None;
    let mut last_primary_lsn: Option<u64> = None;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        cluster.primary.cool_down();
        cluster.replicas.iter().for_each(|r| r.cool_down());
        let query_timeout = settings.interval.max(Duration::from_millis(500));
        let primary_lsn = match query(
            &cluster.primary,
            &mut primary_client,
            PRIMARY_SQL,
            settings,
            query_timeout,
        )
        .await
        {
            Ok(row) => row
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse::<u64>().ok()),
            Err(why) => {
                tracing::warn!(node = %cluster.primary.config.name, %why, "primary check failed");
                None
            }
        };
        publish_primary(&cluster.primary, primary_lsn);
        // With the primary unreachable, replicas are judged against the last position it was
        // seen at: one that has replayed up to it has everything the primary had then, and goes
        // on serving reads (no write can be acknowledged while the primary is down); one behind it
        // is judged by its replay time as usual. Without this, a primary outage took every read
        // down with it.
        if primary_lsn.is_some() {
            last_primary_lsn = primary_lsn;
        }
        let (judge_lsn, judge_prev) = match primary_lsn {
            Some(_) => (primary_lsn, prev_primary_lsn),
            None => (last_primary_lsn, last_primary_lsn),
        };
        let checks = cluster
            .replicas
            .iter()
            .zip(replica_clients.iter_mut())
            .map(|(node, client)| async move {
                let obs = match query(node, client, REPLICA_SQL, settings, query_timeout).await {
                    Ok(row) => parse_replica_row(&row),
                    Err(why) => Observation::Failed(why),
                };
                (node, obs)
            });
        for (node, obs) in futures_util::future::join_all(checks).await {
            let prev = node.health.load();
            let next = next_replica_health(
                &prev,
                judge_lsn,
                judge_prev,
                obs,
                settings.bounds,
                settings.healthy_after,
                Instant::now(),
            );
            if next.in_rotation != prev.in_rotation {
                tracing::info!(node = %node.config.name, in_rotation = next.in_rotation, reason = %next.reason, "replica rotation changed");
            }
            node.health.store(Arc::new(next));
        }
        prev_primary_lsn = primary_lsn;
    }
}

fn publish_primary(node: &Node, lsn: Option<u64>) {
    let prev = node.health.load();
    let (state, reason) = match lsn {
        Some(_) => (HealthState::Up, "ok".to_string()),
        None => (HealthState::Down, "check failed".to_string()),
    };
    node.health.store(Arc::new(NodeHealth {
        state,
        in_rotation: lsn.is_some(),
        lsn: lsn.or(prev.lsn),
        reason,
        checked: Some(Instant::now()),
        ..NodeHealth::initial()
    }));
}

fn parse_replica_row(row: &[Option<String>]) -> Observation {
    let get = |i: usize| row.get(i).and_then(|v| v.as_deref());
    match (get(0), get(1).and_then(|v| v.parse::<u64>().ok())) {
        (Some(rec), Some(replay_lsn)) => Observation::Replica {
            in_recovery: rec == "t",
            replay_lsn,
            replay_age_secs: get(2).and_then(|v| v.parse::<f64>().ok()),
            replay_paused: get(3) == Some("t"),
        },
        _ => Observation::Failed("unexpected answer to the lag query".into()),
    }
}

/// Runs `sql` on the node's monitor connection, opening it if needed; drops it on any error.
async fn query(
    node: &Node,
    client: &mut Option<Client>,
    sql: &str,
    settings: MonitorSettings,
    timeout: Duration,
) -> Result<Vec<Option<String>>, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let cfg = node.config.pg_config(settings.connect_timeout);
        let (c, conn) = tokio::time::timeout(settings.connect_timeout, cfg.connect(NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect failed: {e}"))?;
        let name = node.config.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(node = %name, error = %e, "monitor connection closed");
            }
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("set just above");
    let result = tokio::time::timeout(timeout, c.simple_query(sql)).await;
    let messages = match result {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            *client = None;
            return Err(format!("check failed: {e}"));
        }
        Err(_) => {
            *client = None;
            return Err(format!("check timed out after {timeout:?}"));
        }
    };
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            return Ok((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    Err("check returned no row".into())
}
