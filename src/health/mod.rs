//! Health and lag of every node: a monitor task per cluster (`monitor.rs`) checks each node on an
//! interval and publishes a [`NodeHealth`] snapshot the routing path reads without locks. The
//! rules that turn observations into rotation decisions are pure functions here.

pub mod gtid;
pub mod lineage;
pub mod monitor;
pub mod mysql;

use std::time::{Duration, Instant};

pub use crate::backend::node_health::{HealthState, NodeHealth, mark_down};

/// One check of a replica.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The replica answered.
    Replica {
        /// Replay position in bytes.
        replay_lsn: u64,
        /// Seconds since the last replayed transaction committed on the primary, if known.
        replay_age_secs: Option<f64>,
        /// `pg_is_in_recovery()`.
        in_recovery: bool,
        /// `pg_is_wal_replay_paused()`: replay stopped on purpose.
        replay_paused: bool,
    },
    /// The check failed: connection or query error, or timeout.
    Failed(String),
}

/// The lag bound.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Time.
    pub max_lag: Duration,
    /// Bytes.
    pub max_lag_bytes: u64,
}

/// Bytes and seconds behind.
///
/// A replica that has replayed up to the primary's position is not behind, however long ago the
/// last transaction was: an idle primary is not lag. Time lag (now minus the replay time of the
/// last replayed transaction) counts only while the replica has not replayed WAL the primary
/// already had at the previous check: a replica a few milliseconds behind a write that followed
/// an idle hour is not an hour behind. So a stalled replica is caught within two checks.
pub fn lag(
    primary_lsn: u64,
    prev_primary_lsn: Option<u64>,
    replay_lsn: u64,
    replay_age_secs: Option<f64>,
) -> (u64, TimeLag) {
    let bytes = primary_lsn.saturating_sub(replay_lsn);
    if bytes == 0 {
        return (0, TimeLag::Secs(0.0));
    }
    if prev_primary_lsn.is_none_or(|p| replay_lsn >= p) {
        return (bytes, TimeLag::UnderOneCheck);
    }
    match replay_age_secs {
        Some(s) => (bytes, TimeLag::Secs(s.max(0.0))),
        None => (bytes, TimeLag::Unknown),
    }
}

/// Time lag as far as the monitor can tell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeLag {
    /// Measured.
    Secs(f64),
    /// Behind, but only by WAL written since the previous check.
    UnderOneCheck,
    /// Behind by older WAL, with no replay timestamp to measure by.
    Unknown,
}

/// The next health of a replica. It leaves the rotation on the first bad check (a read must never
/// be served over the bound) and comes back after `healthy_after` good ones in a row; a replica
/// never seen bad joins on its first good check.
pub fn next_replica_health(
    prev: &NodeHealth,
    primary_lsn: Option<u64>,
    prev_primary_lsn: Option<u64>,
    obs: Observation,
    bounds: Bounds,
    healthy_after: u32,
    now: Instant,
) -> NodeHealth {
    let (verdict, lag_bytes, lag_secs, lsn) = match obs {
        Observation::Failed(why) => (Err(why), None, None, None),
        Observation::Replica {
            in_recovery: false,
            replay_lsn,
            ..
        } => (
            Err("not in recovery: promoted or not a replica".to_string()),
            None,
            None,
            Some(replay_lsn),
        ),
        Observation::Replica {
            replay_lsn,
            replay_age_secs,
            replay_paused,
            ..
        } => match primary_lsn {
            None => (
                Err("primary position unknown".to_string()),
                None,
                None,
                Some(replay_lsn),
            ),
            Some(p) => {
                let (bytes, time) = lag(p, prev_primary_lsn, replay_lsn, replay_age_secs);
                let verdict = match time {
                    _ if bytes > bounds.max_lag_bytes => {
                        Err(format!("lag {bytes} bytes over bound {}", bounds.max_lag_bytes))
                    }
                    // Paused replay with WAL waiting will not catch up by itself: stale from now on.
                    _ if replay_paused && bytes > 0 => Err(format!("replay paused with {bytes} bytes not replayed")),
                    TimeLag::Secs(s) if s > bounds.max_lag.as_secs_f64() => {
                        Err(format!("lag {s:.3}s over bound {:?}", bounds.max_lag))
                    }
                    TimeLag::Unknown => Err(format!("behind by {bytes} bytes with no replay timestamp")),
                    _ => Ok(()),
                };
                let secs = match time {
                    TimeLag::Secs(s) => Some(s),
                    _ => None,
                };
                (verdict, Some(bytes), secs, Some(replay_lsn))
            }
        },
    };
    let h = NodeHealth {
        lag_bytes,
        lag_secs,
        lsn,
        checked: Some(now),
        ..prev.clone()
    };
    apply_verdict(prev, h, verdict, healthy_after)
}

/// The rotation rule on its own: a bad check takes a replica out at once, `healthy_after` good
/// ones in a row bring it back; one never seen bad joins on its first good check. `h` is the
/// new observation's health with the state fields still those of `prev`.
pub fn apply_verdict(
    prev: &NodeHealth,
    mut h: NodeHealth,
    verdict: Result<(), String>,
    healthy_after: u32,
) -> NodeHealth {
    match verdict {
        Err(reason) => {
            h.state = HealthState::Down;
            h.in_rotation = false;
            h.good_streak = 0;
            h.reason = reason;
        }
        Ok(()) => {
            h.good_streak = prev.good_streak.saturating_add(1);
            let rejoin = prev.state == HealthState::Unknown || prev.in_rotation || h.good_streak >= healthy_after;
            h.state = HealthState::Up;
            h.in_rotation = rejoin;
            h.reason = if rejoin {
                "ok".into()
            } else {
                format!("recovering ({}/{healthy_after} good checks)", h.good_streak)
            };
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        max_lag: Duration::from_secs(1),
        max_lag_bytes: 1000,
    };

    fn obs(replay_lsn: u64, age: Option<f64>) -> Observation {
        Observation::Replica {
            replay_lsn,
            replay_age_secs: age,
            in_recovery: true,
            replay_paused: false,
        }
    }

    #[test]
    fn paused_replay_with_pending_wal_leaves_at_once() {
        let now = Instant::now();
        let up = next_replica_health(&NodeHealth::initial(), Some(500), None, obs(500, Some(0.1)), B, 3, now);
        let paused = |lsn| Observation::Replica {
            replay_lsn: lsn,
            replay_age_secs: Some(0.1),
            in_recovery: true,
            replay_paused: true,
        };
        let idle_paused = next_replica_health(&up, Some(500), Some(500), paused(500), B, 3, now);
        assert!(idle_paused.in_rotation, "paused but nothing to replay: not stale");
        let behind = next_replica_health(&up, Some(600), Some(500), paused(500), B, 3, now);
        assert!(!behind.in_rotation && behind.reason.contains("paused"), "{behind:?}");
    }

    #[test]
    fn idle_primary_is_not_lag() {
        assert_eq!(lag(500, Some(500), 500, Some(3600.0)), (0, TimeLag::Secs(0.0)));
        assert_eq!(lag(500, None, 500, None), (0, TimeLag::Secs(0.0)));
        assert_eq!(lag(500, Some(500), 600, None), (0, TimeLag::Secs(0.0)));
        let h = next_replica_health(
            &NodeHealth::initial(),
            Some(500),
            Some(500),
            obs(500, Some(3600.0)),
            B,
            3,
            Instant::now(),
        );
        assert!(h.in_rotation, "{h:?}");
    }

    #[test]
    fn time_lag_counts_only_wal_older_than_one_check() {
        // A write after a long idle period, not yet replayed: not an hour of lag.
        assert_eq!(lag(700, Some(500), 500, Some(3600.0)), (200, TimeLag::UnderOneCheck));
        assert_eq!(lag(700, None, 500, Some(3600.0)), (200, TimeLag::UnderOneCheck));
        // Still not replayed at the next check: the replay age is the lag.
        assert_eq!(lag(900, Some(700), 500, Some(2.5)), (400, TimeLag::Secs(2.5)));
        assert_eq!(lag(900, Some(700), 500, None), (400, TimeLag::Unknown));
        let now = Instant::now();
        let up = next_replica_health(
            &NodeHealth::initial(),
            Some(500),
            Some(500),
            obs(500, Some(3600.0)),
            B,
            3,
            now,
        );
        let first = next_replica_health(&up, Some(700), Some(500), obs(500, Some(3600.0)), B, 3, now);
        assert!(first.in_rotation, "one check behind is not lag: {first:?}");
        let second = next_replica_health(&first, Some(700), Some(700), obs(500, Some(3600.0)), B, 3, now);
        assert!(!second.in_rotation, "stalled over two checks leaves: {second:?}");
    }

    #[test]
    fn over_bound_leaves_at_once_and_returns_with_hysteresis() {
        let now = Instant::now();
        let up = next_replica_health(&NodeHealth::initial(), Some(100), None, obs(100, None), B, 3, now);
        assert!(up.in_rotation);
        let by_time = next_replica_health(&up, Some(200), Some(150), obs(100, Some(1.5)), B, 3, now);
        assert!(
            !by_time.in_rotation && by_time.reason.contains("s over bound"),
            "{by_time:?}"
        );
        let by_bytes = next_replica_health(&up, Some(5000), None, obs(100, Some(0.1)), B, 3, now);
        assert!(!by_bytes.in_rotation && by_bytes.reason.contains("bytes"));
        let unknown_age = next_replica_health(&up, Some(200), Some(150), obs(100, None), B, 3, now);
        assert!(!unknown_age.in_rotation);
        let mut h = by_time;
        for i in 1..3 {
            h = next_replica_health(&h, Some(200), Some(200), obs(200, None), B, 3, now);
            assert!(!h.in_rotation, "check {i} must not rejoin yet");
        }
        h = next_replica_health(&h, Some(200), Some(200), obs(200, None), B, 3, now);
        assert!(h.in_rotation);
    }

    #[test]
    fn failures_and_promotion_leave_rotation() {
        let now = Instant::now();
        let up = next_replica_health(&NodeHealth::initial(), Some(1), None, obs(1, None), B, 3, now);
        let down = next_replica_health(&up, Some(1), None, Observation::Failed("refused".into()), B, 3, now);
        assert!(!down.in_rotation && down.state == HealthState::Down);
        let promoted = Observation::Replica {
            replay_lsn: 1,
            replay_age_secs: None,
            in_recovery: false,
            replay_paused: false,
        };
        assert!(!next_replica_health(&up, Some(1), None, promoted, B, 3, now).in_rotation);
        assert!(!next_replica_health(&up, None, None, obs(1, None), B, 3, now).in_rotation);
    }
}
