//! The monitor task: on every interval, the writer's WAL position and timeline and each other
//! node's replay position, replay age and recovery state, over a dedicated tokio-postgres
//! connection per node, each query under a timeout. Results are published into `Node::health`.
//! With `failover = "follow"`, a replica found promoted (out of recovery, on a timeline above the
//! writer's, or with the writer unreachable) becomes the writer and the old one is fenced. Nodes
//! of another cluster, and replicas not streaming the writer's timeline, are kept out (see
//! `lineage`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::lineage::{self, Lineage};
use super::{Bounds, HealthState, NodeHealth, Observation, next_replica_health};
use crate::backend::{Cluster, Node, Role};

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
    /// Follow a promoted replica.
    pub follow: bool,
}

/// A server's timeline out of recovery: the first 8 hex digits of its current WAL file's name.
const TIMELINE: &str = "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int";

fn writer_sql() -> String {
    format!("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, {TIMELINE}")
}

fn replica_sql() -> String {
    format!(
        "SELECT pg_is_in_recovery(), \
         (COALESCE(pg_last_wal_replay_lsn(), '0/0'::pg_lsn) - '0/0'::pg_lsn)::bigint, \
         extract(epoch from (now() - pg_last_xact_replay_timestamp()))::float8, \
         CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
         CASE WHEN pg_is_in_recovery() THEN NULL ELSE {TIMELINE} END, \
         (SELECT CASE WHEN received_tli IS NULL THEN 'hidden' ELSE received_tli::text END FROM pg_stat_wal_receiver)"
    )
}

/// The monitor's connection to one node, and what never changes while it is open.
#[derive(Default)]
struct Conn {
    client: Option<Client>,
    /// The node's system identifier, read when the connection opened (`None`: not allowed, or
    /// not answered).
    system_id: Option<u64>,
}

/// Runs until `token` is cancelled.
pub async fn run(cluster: Arc<Cluster>, settings: MonitorSettings, token: CancellationToken) {
    let (writer_sql, replica_sql) = (writer_sql(), replica_sql());
    let nodes: Vec<Arc<Node>> = cluster.nodes().cloned().collect();
    let mut conns: Vec<Conn> = nodes.iter().map(|_| Conn::default()).collect();
    let mut prev_primary_lsn: Option<u64> = None;
    let mut last_primary_lsn: Option<u64> = None;
    let mut writer_timeline: Option<u32> = None;
    // The shard's system identifier, once known; and whether this monitor followed a promotion
    // (replicas must then show they stream the new writer's timeline).
    let mut cluster_id: Option<u64> = None;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        nodes.iter().for_each(|n| n.cool_down());
        let query_timeout = settings.interval.max(Duration::from_millis(500));
        let writer = cluster.writer();
        let wi = nodes.iter().position(|n| Arc::ptr_eq(n, &writer)).unwrap_or(0);
        let primary_lsn = match query(&writer, &mut conns[wi], &writer_sql, settings, query_timeout).await {
            Ok(row) => {
                let get = |i: usize| row.get(i).and_then(|v| v.as_deref());
                if let Some(tl) = get(1).and_then(|v| v.parse::<u32>().ok()) {
                    writer_timeline = Some(tl);
                }
                get(0).and_then(|v| v.parse::<u64>().ok())
            }
            Err(why) => {
                tracing::warn!(node = %writer.config.name, %why, "primary check failed");
                None
            }
        };
        publish_primary(&writer, primary_lsn);
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
        let writer_id = conns[wi].system_id;
        let checks = nodes
            .iter()
            .zip(conns.iter_mut())
            .enumerate()
            .filter(|(i, (n, _))| *i != wi && n.role() != Role::Fenced)
            .map(|(_, (node, conn))| {
                let sql = &replica_sql;
                async move {
                    match query(node, conn, sql, settings, query_timeout).await {
                        Ok(row) => parse_replica_row(&row, conn.system_id),
                        Err(why) => ((Observation::Failed(why), None), Lineage::default()),
                    }
                }
                .map_to(node)
            });
        let checked = futures_util::future::join_all(checks).await;
        // The writer's identifier whenever it is known (a vote among replicas only stands in
        // while it is not).
        cluster_id = writer_id.or(cluster_id);
        if cluster_id.is_none() {
            let in_recovery = checked.iter().filter_map(|(_, ((obs, _), l))| match obs {
                Observation::Replica { in_recovery: true, .. } => l.system_id,
                _ => None,
            });
            cluster_id = lineage::cluster_id(writer_id, in_recovery);
        }
        // A node of another cluster is neither followed nor read from: as if its check failed.
        let (results, lineages): (Vec<_>, Vec<_>) = checked
            .into_iter()
            .map(|(node, ((obs, tl), l))| {
                if lineage::foreign(l.system_id, cluster_id) {
                    let why = lineage::replica_refusal(l, cluster_id, None, false).unwrap_or_default();
                    ((node, (Observation::Failed(why), None)), l)
                } else {
                    ((node, (obs, tl)), l)
                }
            })
            .unzip();
        if settings.follow
            && let Some((node, timeline)) = promoted(&results, writer_timeline, primary_lsn.is_none())
        {
            tracing::warn!(
                shard = %cluster.name,
                old = %writer.config.name,
                new = %node.config.name,
                timeline,
                "failover: the replica was promoted; writes go to it and the old primary is fenced"
            );
            cluster.promote(node);
            writer_timeline = Some(timeline);
            last_primary_lsn = None;
            writer.health.store(Arc::new(NodeHealth {
                reason: format!("fenced: replaced by {} (timeline {timeline})", node.config.name),
                ..NodeHealth::initial()
            }));
        }
        for ((node, (obs, _)), l) in results.into_iter().zip(lineages) {
            if node.role() != Role::Replica {
                continue;
            }
            // In recovery but not replaying what the writer writes: out, whatever its lag says.
            let obs = match obs {
                Observation::Replica { in_recovery: true, .. } => {
                    let after_failover = cluster.after_failover.load(std::sync::atomic::Ordering::Relaxed);
                    match lineage::replica_refusal(l, cluster_id, writer_timeline, after_failover) {
                        Some(why) => Observation::Failed(why),
                        None => obs,
                    }
                }
                other => other,
            };
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

/// The node to follow: the promoted one (out of recovery) on the highest timeline, if that is
/// above the writer's, or if the writer is unreachable and its timeline unknown.
fn promoted<'a>(
    results: &[(&'a Arc<Node>, Checked)],
    writer_timeline: Option<u32>,
    writer_down: bool,
) -> Option<(&'a Arc<Node>, u32)> {
    let (node, timeline) = results
        .iter()
        .filter_map(|(n, (obs, tl))| match obs {
            Observation::Replica { in_recovery: false, .. } => tl.map(|t| (*n, t)),
            _ => None,
        })
        .max_by_key(|(_, t)| *t)?;
    let newer = match writer_timeline {
        Some(w) => timeline > w,
        None => writer_down,
    };
    newer.then_some((node, timeline))
}

/// Pairs a check's result with its node.
trait MapTo: Sized + std::future::Future {
    fn map_to<N>(self, node: N) -> impl std::future::Future<Output = (N, Self::Output)> {
        async move { (node, self.await) }
    }
}

impl<F: std::future::Future> MapTo for F {}

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

/// A replica check's answer, and the node's timeline when it is out of recovery.
type Checked = (Observation, Option<u32>);

fn parse_replica_row(row: &[Option<String>], system_id: Option<u64>) -> (Checked, Lineage) {
    let get = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let obs = match (get(0), get(1).and_then(|v| v.parse::<u64>().ok())) {
        (Some(rec), Some(replay_lsn)) => Observation::Replica {
            in_recovery: rec == "t",
            replay_lsn,
            replay_age_secs: get(2).and_then(|v| v.parse::<f64>().ok()),
            replay_paused: get(3) == Some("t"),
        },
        _ => Observation::Failed("unexpected answer to the lag query".into()),
    };
    let lineage = Lineage {
        system_id,
        receiver: match get(5) {
            None => lineage::Receiver::None,
            Some(v) => v.parse().map_or(lineage::Receiver::Hidden, lineage::Receiver::Timeline),
        },
    };
    ((obs, get(4).and_then(|v| v.parse::<u32>().ok())), lineage)
}

/// The node's system identifier; `None` if the monitor's user may not read it (it is then not
/// compared) or the node does not answer in time.
async fn system_id(c: &Client, timeout: Duration) -> Option<u64> {
    let sql = "SELECT system_identifier FROM pg_control_system()";
    match tokio::time::timeout(timeout, c.simple_query(sql)).await {
        Ok(Ok(messages)) => messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        }),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "system identifier not readable; nodes' clusters are not compared");
            None
        }
        Err(_) => None,
    }
}

/// Runs `sql` on the node's monitor connection, opening it if needed; drops it on any error.
async fn query(
    node: &Node,
    conn: &mut Conn,
    sql: &str,
    settings: MonitorSettings,
    timeout: Duration,
) -> Result<Vec<Option<String>>, String> {
    if conn.client.as_ref().is_none_or(|c| c.is_closed()) {
        let cfg = node.config.pg_config(settings.connect_timeout);
        let (c, connection) = tokio::time::timeout(settings.connect_timeout, cfg.connect(NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect failed: {e}"))?;
        let name = node.config.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(node = %name, error = %e, "monitor connection closed");
            }
        });
        conn.system_id = system_id(&c, timeout).await;
        conn.client = Some(c);
    }
    let client = &mut conn.client;
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [server]
        listen = "127.0.0.1:6432"
        [[users]]
        name = "app"
        password = "secret"
        [[shards]]
        name = "main"
        primary = "postgres://postgres@127.0.0.1:5432/app"
        replicas = ["postgres://postgres@127.0.0.1:5433/app", "postgres://postgres@127.0.0.1:5434/app"]
    "#;

    /// A primary and two replicas (pools open lazily, but building one wants a runtime).
    fn cluster() -> (tokio::runtime::Runtime, Arc<Cluster>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = crate::config::parse(CONFIG).unwrap();
        let cluster = {
            let _in = rt.enter();
            Cluster::new(&c.shards[0], &c.pool)
        };
        (rt, cluster)
    }

    fn replica(in_recovery: bool) -> Observation {
        Observation::Replica {
            in_recovery,
            replay_lsn: 0,
            replay_age_secs: None,
            replay_paused: false,
        }
    }

    #[test]
    fn only_a_promoted_node_on_a_newer_timeline_is_followed() {
        let (_rt, cluster) = cluster();
        let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
        let pick = |results: &[(&Arc<Node>, Checked)], writer_tl, writer_down| {
            promoted(results, writer_tl, writer_down).map(|(n, tl)| (n.config.name.clone(), tl))
        };
        let name = |n: &Arc<Node>| n.config.name.clone();
        // Both still replicas.
        assert_eq!(
            pick(
                &[(r0, (replica(true), None)), (r1, (replica(true), None))],
                Some(1),
                true
            ),
            None
        );
        // One promoted (timeline 2) while the writer (timeline 1) is down: followed.
        assert_eq!(
            pick(
                &[(r0, (replica(true), None)), (r1, (replica(false), Some(2)))],
                Some(1),
                true
            ),
            Some((name(r1), 2))
        );
        // A node out of recovery on an older timeline than the writer's (a returning old primary).
        assert_eq!(pick(&[(r1, (replica(false), Some(2)))], Some(3), false), None);
        // Two primaries at once: the newer timeline wins, even with the writer up.
        assert_eq!(
            pick(&[(r1, (replica(false), Some(2)))], Some(1), false),
            Some((name(r1), 2))
        );
        // The writer up and its timeline not known yet: which is newer cannot be told.
        assert_eq!(pick(&[(r1, (replica(false), Some(2)))], None, false), None);
        assert_eq!(
            pick(&[(r1, (replica(false), Some(2)))], None, true),
            Some((name(r1), 2))
        );
        // The highest timeline among several; a failed check is never a promotion.
        assert_eq!(
            pick(
                &[(r0, (replica(false), Some(4))), (r1, (replica(false), Some(3)))],
                Some(2),
                true
            ),
            Some((name(r0), 4))
        );
        assert_eq!(
            pick(&[(r0, (Observation::Failed("down".into()), Some(9)))], Some(1), true),
            None
        );
    }

    #[test]
    fn promotion_fences_the_old_writer() {
        let (_rt, cluster) = cluster();
        let r1 = cluster.replicas[1].clone();
        cluster.promote(&r1);
        assert!(Arc::ptr_eq(&cluster.writer(), &r1));
        assert_eq!(cluster.primary.role(), Role::Fenced);
        assert_eq!(r1.role(), Role::Primary);
        assert_eq!(cluster.failovers.load(std::sync::atomic::Ordering::Relaxed), 1);
        // The new writer no longer serves replica reads, even marked in rotation.
        for n in &cluster.replicas {
            n.health.store(Arc::new(NodeHealth {
                in_rotation: true,
                ..NodeHealth::initial()
            }));
        }
        for _ in 0..4 {
            let picked = cluster.pick_replica(crate::config::Balance::RoundRobin, None).unwrap();
            assert!(Arc::ptr_eq(&picked, &cluster.replicas[0]));
        }
        // Promoting the writer again changes nothing.
        cluster.promote(&r1);
        assert_eq!(cluster.failovers.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
