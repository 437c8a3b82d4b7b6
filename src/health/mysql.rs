//! The health and lag monitor of MySQL and MariaDB shards, through mysql_async: per check, the
//! primary's GTID position, then each replica's replication status (`SHOW REPLICA STATUS`, or
//! `SHOW SLAVE STATUS` on servers that lack it) and applied GTID position.
//!
//! A replica serves reads while both replication threads run and `Seconds_Behind_Master` is
//! known and under the bound (NULL is unknown, never zero). It holds a session's writes once a
//! check saw it apply the primary's position read after that write committed.

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

/// The verdict on a replica from its status: in rotation or why not.
pub fn verdict(status: Option<&ReplicaStatus>, max_lag: Duration) -> Result<(), String> {
    let Some(s) = status else {
        return Err("not replicating (no replica status)".into());
    };
    if !s.io_running {
        return Err("replication IO thread not running".into());
    }
    if !s.sql_running {
        return Err("replication SQL thread not running".into());
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
    let mut probes: Vec<(Probe, Vec<Probe>)> = shards
        .iter()
        .map(|s| {
            let p = |n: &Arc<MyNode>| Probe {
                node: n.clone(),
                conn: None,
                maria: false,
            };
            (p(&s.primary), s.replicas.iter().map(p).collect())
        })
        .collect();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (primary, replicas) in &mut probes {
            check_shard(primary, replicas, settings).await;
        }
    }
}

async fn check_shard(primary: &mut Probe, replicas: &mut [Probe], s: Settings) {
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
    if pos.is_some() {
        publish(&primary.node, Ok(()), 1);
    }
    for r in replicas {
        let checked = tokio::time::timeout(timeout, async {
            let status = r.status(timeout).await?;
            let applied = r.position(timeout, true).await?;
            Ok::<_, String>((status, applied))
        })
        .await
        .unwrap_or_else(|_| Err("check timed out".into()));
        match checked {
            Ok((status, applied)) => {
                let v = verdict(status.as_ref(), s.max_lag);
                tracing::trace!(node = %r.node.config.name, ?applied, primary = ?pos, "replica position");
                if v.is_ok()
                    && let Some(p) = &pos
                    && gtid::covers(&applied, p)
                {
                    r.node.caught_up.store(Arc::new(Some(Caught { primary_at: at })));
                }
                let lag = status.and_then(|st| st.seconds_behind);
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

fn publish_lag(node: &MyNode, v: Result<(), String>, lag: Option<u64>, healthy_after: u32) {
    let prev = node.health.load();
    let was = prev.in_rotation;
    let h = NodeHealth {
        lag_secs: lag.map(|l| l as f64),
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
        assert!(verdict(Some(&ok), max).is_ok());
        assert!(verdict(None, max).is_err());
        let stopped = ReplicaStatus {
            sql_running: false,
            seconds_behind: None,
            ..ok.clone()
        };
        assert!(verdict(Some(&stopped), max).unwrap_err().contains("SQL thread"));
        let unknown = ReplicaStatus {
            seconds_behind: None,
            ..ok.clone()
        };
        assert!(
            verdict(Some(&unknown), max).unwrap_err().contains("NULL"),
            "NULL is never zero"
        );
        let behind = ReplicaStatus {
            seconds_behind: Some(5),
            ..ok
        };
        assert!(verdict(Some(&behind), max).is_err());
    }
}
