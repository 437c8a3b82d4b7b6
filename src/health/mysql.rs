//! The health and lag monitor of MySQL and MariaDB shards, through mysql_async: per check, the
//! primary's GTID position and a heartbeat row written on it (`shardwire_heartbeat`, the current
//! time to the microsecond), then each replica's replication status (`SHOW REPLICA STATUS`, or
//! `SHOW SLAVE STATUS` on servers that lack it), applied GTID position and heartbeat age.
//!
//! A replica serves reads while both replication threads run, `Seconds_Behind_Master` is known
//! (NULL is unknown, never zero) and under the bound, and its heartbeat row is no older than the
//! bound: the heartbeat measures lag end to end, below the second and also while the primary is
//! otherwise idle. It holds a session's writes once a check saw it apply the primary's position
//! read after that write committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use super::gtid::{self, Gtid};
use super::{HealthState, NodeHealth, apply_verdict};
use crate::backend::mysql::{Caught, MyNode, MyShard};
use crate::config::NodeConfig;

/// What the monitor checks against.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Time between checks.
    pub interval: Duration,
    /// Lag bound.
    pub max_lag: Duration,
    /// Good checks before a replica rejoins.
    pub healthy_after: u32,
}

/// A replica's replication status.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// The IO thread (receiving the binlog) runs.
    pub io_running: bool,
    /// The SQL thread (applying it) runs.
    pub sql_running: bool,
    /// `Seconds_Behind_Master`; `None` when the server does not know.
    pub seconds_behind: Option<u64>,
}

/// The heartbeat table, in the database shardwire logs in to.
const HEARTBEAT: &str = "shardwire_heartbeat";

/// The verdict on a replica from its status and heartbeat age: in rotation or why not.
pub fn verdict(status: Option<&ReplicaStatus>, heartbeat: Option<f64>, max_lag: Duration) -> Result<(), String> {
    let Some(s) = status else {
        return Err("not replicating (no replica status)".into());
    };
    if !s.io_running {
        return Err("replication IO thread not running".into());
    }
    if !s.sql_running {
        return Err("replication SQL thread not running".into());
    }
    if let Some(age) = heartbeat
        && age > max_lag.as_secs_f64()
    {
        return Err(format!("heartbeat {age:.3}s old, over bound {max_lag:?}"));
    }
    match s.seconds_behind {
        None => Err("lag unknown (Seconds_Behind_Master is NULL)".into()),
        Some(secs) if Duration::from_secs(secs) > max_lag => Err(format!("lag {secs}s over bound {max_lag:?}")),
        Some(_) => Ok(()),
    }
}

fn opts(node: &NodeConfig, timeout: Duration) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(node.host.clone())
        .tcp_port(node.port)
        .user(Some(node.user.clone()))
        .pass(node.password.clone())
        .db_name(Some(node.dbname.clone()))
        .prefer_socket(false)
        .wait_timeout(Some(60))
        .conn_ttl(Some(timeout * 10))
        .into()
}

struct Probe {
    node: Arc<MyNode>,
    conn: Option<mysql_async::Conn>,
    maria: bool,
}

impl Probe {
    async fn conn(&mut self, timeout: Duration) -> Result<&mut mysql_async::Conn, String> {
        if self.conn.is_none() {
            let c = tokio::time::timeout(timeout, mysql_async::Conn::new(opts(&self.node.config, timeout)))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            self.maria = is_maria(&c);
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    async fn position(&mut self, timeout: Duration, replica: bool) -> Result<Gtid, String> {
        self.conn(timeout).await?;
        let c = self.conn.as_mut().expect("connected above");
        let sql = match (self.maria, replica) {
            (true, true) => "SELECT @@gtid_slave_pos",
            (true, false) => "SELECT @@gtid_binlog_pos",
            (false, _) => "SELECT @@gtid_executed",
        };
        let v: Option<Option<String>> = c.query_first(sql).await.map_err(|e| e.to_string())?;
        gtid::parse(&v.flatten().unwrap_or_default()).ok_or_else(|| "unreadable GTID position".into())
    }

    /// Writes the heartbeat row (creating its table the first time).
    async fn beat(&mut self, timeout: Duration) -> Result<(), String> {
        let c = self.conn(timeout).await?;
        let write =
            format!("INSERT INTO {HEARTBEAT} (id, ts) VALUES (1, NOW(6)) ON DUPLICATE KEY UPDATE ts = VALUES(ts)");
        match c.query_drop(&write).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => {
                c.query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {HEARTBEAT} (id INT PRIMARY KEY, ts DATETIME(6) NOT NULL)"
                ))
                .await
                .map_err(|e| e.to_string())?;
                c.query_drop(&write).await.map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }

    /// Seconds since the heartbeat row a replica holds was written; `None` before it has one.
    async fn heartbeat_age(&mut self, timeout: Duration) -> Result<Option<f64>, String> {
        let c = self.conn(timeout).await?;
        let sql = format!("SELECT TIMESTAMPDIFF(MICROSECOND, ts, NOW(6)) FROM {HEARTBEAT} WHERE id = 1");
        match c.query_first::<Option<i64>, _>(sql).await {
            Ok(v) => Ok(v.flatten().map(|us| us.max(0) as f64 / 1e6)),
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn status(&mut self, timeout: Duration) -> Result<Option<ReplicaStatus>, String> {
        let c = self.conn(timeout).await?;
        let rows: Vec<mysql_async::Row> = match c.query("SHOW REPLICA STATUS").await {
            Ok(r) => r,
            Err(_) => c.query("SHOW SLAVE STATUS").await.map_err(|e| e.to_string())?,
        };
        let Some(row) = rows.first() else { return Ok(None) };
        let text = |names: &[&str]| -> Option<String> {
            names
                .iter()
                .find_map(|n| row.get_opt::<Option<String>, _>(*n).and_then(Result::ok).flatten())
        };
        Ok(Some(ReplicaStatus {
            io_running: text(&["Slave_IO_Running", "Replica_IO_Running"]).is_some_and(|v| v == "Yes"),
            sql_running: text(&["Slave_SQL_Running", "Replica_SQL_Running"]).is_some_and(|v| v == "Yes"),
            seconds_behind: text(&["Seconds_Behind_Master", "Seconds_Behind_Source"]).and_then(|v| v.parse().ok()),
        }))
    }
}

fn is_maria(c: &mysql_async::Conn) -> bool {
    // mysql_async reports MariaDB's own version (10.x, 11.x); MySQL is 5.x, 8.x, 9.x.
    c.server_version().0 >= 10
}

/// Checks every shard's nodes every `settings.interval` until `stop`.
pub async fn run(shards: Vec<Arc<MyShard>>, settings: Settings, stop: CancellationToken) {
    let mut probes: Vec<(Probe, Vec<Probe>, History)> = shards
        .iter()
        .map(|s| {
            let p = |n: &Arc<MyNode>| Probe {
                node: n.clone(),
                conn: None,
                maria: false,
            };
            (p(&s.primary), s.replicas.iter().map(p).collect(), History::new())
        })
        .collect();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (primary, replicas, history) in &mut probes {
            check_shard(primary, replicas, history, settings).await;
        }
    }
}

/// The primary's positions at recent checks, newest last: a replica holds every commit made
/// before the newest check whose position it has applied.
type History = std::collections::VecDeque<(Instant, Gtid)>;

/// Checks kept: with a 200 ms interval, a replica up to ~13 s behind still gets a position.
const HISTORY: usize = 64;

async fn check_shard(primary: &mut Probe, replicas: &mut [Probe], history: &mut History, s: Settings) {
    let timeout = s.interval.max(Duration::from_millis(500));
    let at = Instant::now();
    let pos = match tokio::time::timeout(timeout, primary.position(timeout, false)).await {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e)) => {
            primary.conn = None;
            publish(&primary.node, Err(format!("check failed: {e}")), s.healthy_after);
            None
        }
        Err(_) => {
            primary.conn = None;
            publish(&primary.node, Err("check timed out".into()), s.healthy_after);
            None
        }
    };
    if let Some(p) = &pos {
        history.push_back((at, p.clone()));
        if history.len() > HISTORY {
            history.pop_front();
        }
        publish(&primary.node, Ok(()), 1);
        // After the position: a replica caught up to it need not have the heartbeat yet.
        if let Err(e) = primary.beat(timeout).await {
            tracing::debug!(node = %primary.node.config.name, error = %e, "heartbeat write failed");
        }
    }
    for r in replicas {
        let checked = tokio::time::timeout(timeout, async {
            let status = r.status(timeout).await?;
            let applied = r.position(timeout, true).await?;
            let heartbeat = r.heartbeat_age(timeout).await?;
            Ok::<_, String>((status, applied, heartbeat))
        })
        .await
        .unwrap_or_else(|_| Err("check timed out".into()));
        match checked {
            Ok((status, applied, heartbeat)) => {
                let v = verdict(status.as_ref(), heartbeat, s.max_lag);
                tracing::trace!(node = %r.node.config.name, ?applied, primary = ?pos, "replica position");
                if v.is_ok()
                    && let Some((when, _)) = history.iter().rev().find(|(_, p)| gtid::covers(&applied, p))
                {
                    r.node.caught_up.store(Arc::new(Some(Caught { primary_at: *when })));
                }
                let lag = heartbeat.or(status.and_then(|st| st.seconds_behind).map(|l| l as f64));
                publish_lag(&r.node, v, lag, s.healthy_after);
            }
            Err(e) => {
                r.conn = None;
                publish(&r.node, Err(format!("check failed: {e}")), s.healthy_after);
            }
        }
    }
}

fn publish(node: &MyNode, v: Result<(), String>, healthy_after: u32) {
    publish_lag(node, v, None, healthy_after)
}

fn publish_lag(node: &MyNode, v: Result<(), String>, lag: Option<f64>, healthy_after: u32) {
    let prev = node.health.load();
    let was = prev.in_rotation;
    let h = NodeHealth {
        lag_secs: lag,
        checked: Some(Instant::now()),
        ..NodeHealth::clone(&prev)
    };
    let next = apply_verdict(&prev, h, v, healthy_after);
    if next.in_rotation != was || (next.state == HealthState::Down && prev.state != HealthState::Down) {
        tracing::info!(node = %node.config.name, in_rotation = next.in_rotation, reason = %next.reason, "node health changed");
    }
    node.health.store(Arc::new(next));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_verdicts() {
        let max = Duration::from_secs(1);
        let ok = ReplicaStatus {
            io_running: true,
            sql_running: true,
            seconds_behind: Some(0),
        };
        assert!(verdict(Some(&ok), None, max).is_ok());
        assert!(verdict(Some(&ok), Some(0.2), max).is_ok());
        assert!(
            verdict(Some(&ok), Some(1.5), max).unwrap_err().contains("heartbeat"),
            "an old heartbeat"
        );
        assert!(verdict(None, None, max).is_err());
        let stopped = ReplicaStatus {
            sql_running: false,
            seconds_behind: None,
            ..ok.clone()
        };
        assert!(verdict(Some(&stopped), None, max).unwrap_err().contains("SQL thread"));
        let unknown = ReplicaStatus {
            seconds_behind: None,
            ..ok.clone()
        };
        assert!(
            verdict(Some(&unknown), None, max).unwrap_err().contains("NULL"),
            "NULL is never zero"
        );
        let behind = ReplicaStatus {
            seconds_behind: Some(5),
            ..ok
        };
        assert!(verdict(Some(&behind), None, max).is_err());
    }
}
