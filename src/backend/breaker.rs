//! A circuit breaker per node: after a few connection failures in a row, checkouts fail at once
//! with the last error instead of each paying a connection attempt (or a connect timeout, when
//! the node does not answer at all), and one checkout per interval probes whether the node is
//! back. Pure state with an injected clock; `pool` consults it around bb8's checkout.

use std::time::{Duration, Instant};

/// Connection failures in a row that open the breaker.
pub const OPEN_AFTER: u32 = 3;
/// How long it stays open before one checkout may probe the node.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// The breaker's state.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    last_error: String,
}

impl Breaker {
    /// Whether a checkout may try the node now; the error to give it if not. Once the open
    /// interval is over, one caller is let through (the probe) and the others keep failing fast
    /// until it has succeeded or failed.
    pub fn admit(&mut self, now: Instant) -> Result<(), String> {
        match self.open_until {
            Some(until) if now < until => Err(self.last_error.clone()),
            Some(_) => {
                self.open_until = Some(now + OPEN_FOR);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A connection was had: the node is back.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    /// A connection attempt failed with `error`.
    pub fn failure(&mut self, now: Instant, error: &str) {
        self.failures += 1;
        self.last_error = error.to_owned();
        if self.failures >= OPEN_AFTER {
            self.open_until = Some(now + OPEN_FOR);
        }
    }

    /// Open: checkouts fail without trying.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_probes_once_per_interval() {
        let t0 = Instant::now();
        let mut b = Breaker::default();
        for i in 0..OPEN_AFTER {
            assert_eq!(b.admit(t0), Ok(()), "attempt {i} goes through");
            b.failure(t0, "connection refused");
        }
        assert!(b.is_open(t0));
        assert_eq!(b.admit(t0 + OPEN_FOR / 2), Err("connection refused".to_string()));
        // The interval is over: one probe, the rest still fail fast.
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.admit(t1), Ok(()));
        assert!(b.admit(t1).is_err());
        // The probe fails: open again for a whole interval.
        b.failure(t1, "still refused");
        assert_eq!(b.admit(t1 + OPEN_FOR / 2), Err("still refused".to_string()));
        // Next probe succeeds: closed.
        let t2 = t1 + OPEN_FOR * 2;
        assert_eq!(b.admit(t2), Ok(()));
        b.success();
        assert!(!b.is_open(t2));
        assert_eq!(b.admit(t2), Ok(()));
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let t = Instant::now();
        let mut b = Breaker::default();
        for _ in 0..OPEN_AFTER - 1 {
            b.failure(t, "x");
        }
        b.success();
        b.failure(t, "x");
        assert!(!b.is_open(t));
    }
}
