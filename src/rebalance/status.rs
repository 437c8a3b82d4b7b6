//! Where partition moves stand, read from the `shardwire_moves` tables of the shards' primaries
//! (each move records its step and progress on its target): for `SHOW MOVES`, the metrics
//! endpoint and `shardwire rebalance status`.

use std::time::Duration;

use crate::config::{Engine, ShardConfig};

/// One move, as its target recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveStatus {
    /// The group.
    pub group: String,
    /// The hash partition.
    pub partition: u32,
    /// Where it comes from.
    pub source: String,
    /// Where it goes.
    pub target: String,
    /// The step recorded last (`done` and `aborted` are finished moves).
    pub step: String,
    /// `logical` or `copy`.
    pub mode: String,
    /// Rows of the partition on the source when the copy started (all tables).
    pub rows_total: Option<i64>,
    /// Rows copied so far.
    pub rows_copied: Option<i64>,
    /// The last measured replication lag, ms.
    pub lag_ms: Option<i64>,
    /// Seconds since the step began.
    pub step_secs: f64,
    /// Progress in words.
    pub detail: String,
}

impl MoveStatus {
    /// Still under way (or stopped half way).
    pub fn open(&self) -> bool {
        self.step != "done" && self.step != "aborted"
    }

    /// Seconds left to copy at the rate so far, while copying.
    pub fn eta_secs(&self) -> Option<f64> {
        let (total, copied) = (self.rows_total?, self.rows_copied?);
        if self.step != "syncing" || copied <= 0 || copied >= total || self.step_secs <= 0.0 {
            return None;
        }
        Some((total - copied) as f64 / (copied as f64 / self.step_secs))
    }
}

const QUERY: &str = "SELECT group_name, partition, source, target, step, coalesce(mode, 'copy'), rows_total, rows_copied, lag_ms, \
    extract(epoch FROM now() - coalesce(step_at, updated_at))::float8, coalesce(detail, '') FROM shardwire_moves ORDER BY group_name, partition";

/// The moves recorded on every PostgreSQL shard of `shards`; shards that cannot be read are
/// named in the error list instead.
pub async fn read(shards: &[ShardConfig]) -> (Vec<MoveStatus>, Vec<String>) {
    let reads = shards
        .iter()
        .filter(|s| s.primary.engine == Engine::Postgres)
        .map(|s| async move { (s.name.clone(), read_one(s).await) });
    let mut moves = Vec::new();
    let mut errors = Vec::new();
    for (name, r) in futures_util::future::join_all(reads).await {
        match r {
            Ok(m) => moves.extend(m),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    moves.sort_by(|a, b| (&a.group, a.partition).cmp(&(&b.group, b.partition)));
    (moves, errors)
}

async fn read_one(shard: &ShardConfig) -> Result<Vec<MoveStatus>, String> {
    let timeout = Duration::from_secs(2);
    let work = async {
        let (c, conn) = shard
            .primary
            .pg_config(timeout)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let exists: bool = c
            .query_one(
                "SELECT to_regclass('shardwire_moves') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_attribute \
                 WHERE attrelid = 'shardwire_moves'::regclass AND attname = 'step_at')",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let rows = if exists {
            c.query(QUERY, &[]).await.map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        drop(c);
        let _ = conn.await;
        Ok(rows
            .iter()
            .map(|r| MoveStatus {
                group: r.get(0),
                partition: r.get::<_, i32>(1) as u32,
                source: r.get(2),
                target: r.get(3),
                step: r.get(4),
                mode: r.get(5),
                rows_total: r.get(6),
                rows_copied: r.get(7),
                lag_ms: r.get(8),
                step_secs: r.get::<_, Option<f64>>(9).unwrap_or(0.0),
                detail: r.get(10),
            })
            .collect())
    };
    tokio::time::timeout(timeout * 2, work)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::MoveStatus;

    #[test]
    fn the_eta_follows_the_copy_rate() {
        let mut m = MoveStatus {
            group: "g".into(),
            partition: 1,
            source: "s0".into(),
            target: "s1".into(),
            step: "syncing".into(),
            mode: "logical".into(),
            rows_total: Some(1000),
            rows_copied: Some(250),
            lag_ms: None,
            step_secs: 10.0,
            detail: String::new(),
        };
        assert_eq!(m.eta_secs(), Some(30.0));
        m.rows_copied = Some(1000);
        assert_eq!(m.eta_secs(), None);
        m.step = "caught_up".into();
        m.rows_copied = Some(10);
        assert_eq!(m.eta_secs(), None);
        assert!(m.open());
        m.step = "done".into();
        assert!(!m.open());
    }
}
