//! Globally unique IDs in place of auto-increment: 64-bit snowflakes of 41 bits of milliseconds
//! since a configurable epoch, 10 bits of worker id and 12 bits of sequence. Strictly increasing
//! per worker; when a millisecond's sequence runs out the generator waits for the next one; a
//! clock that steps back by at most the tolerance is waited out, a larger step is refused (never
//! a duplicate). Each millisecond's sequence starts at a varying offset below 512, so the low bits
//! of IDs issued at low rates are spread evenly (`id % n` stays balanced).
//!
//! Written here rather than taken from a crate: the snowflake crates seen do not refuse large
//! backward clock steps, do not take an injectable clock for testing, or restart each millisecond
//! at sequence 0 (which skews the low bits). The clock is a trait so tests drive time by hand.
#![warn(missing_docs)]

pub mod etcd_lease;
pub mod lease;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Bits of the sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Bits of the worker id.
pub const WORKER_BITS: u32 = 10;
/// Bits of the timestamp.
pub const TIME_BITS: u32 = 41;
/// Largest worker id.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;
/// A millisecond's first sequence number is below this.
const START_SPREAD: u16 = 512;
/// The default epoch: 2024-01-01T00:00:00Z, in Unix milliseconds (IDs last until 2093).
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now_ms(&self) -> u64;
    /// Waits about `ms` milliseconds (tests advance their clock instead).
    fn sleep_ms(&self, ms: u64);
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    fn sleep_ms(&self, ms: u64) {
        // Waiting for the next millisecond is shorter than the sleep granularity: yield instead.
        if ms == 0 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

/// Why no ID was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The clock went back further than the tolerance.
    #[error("the clock moved back by {by_ms} ms (tolerance {tolerance_ms} ms); no ID is issued until it catches up")]
    ClockMovedBack {
        /// How far.
        by_ms: u64,
        /// The configured tolerance.
        tolerance_ms: u64,
    },
    /// The time is before the epoch.
    #[error("the clock is before the ID epoch")]
    BeforeEpoch,
    /// 41 bits of milliseconds are used up.
    #[error("the ID epoch is exhausted (41 bits of milliseconds); configure a later epoch")]
    EpochExhausted,
    /// The generator has no valid worker id (its lease was lost).
    #[error("IDs are not available: {0}")]
    Unavailable(String),
}

/// The parts of an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Unix milliseconds.
    pub unix_ms: u64,
    /// Worker id.
    pub worker: u16,
    /// Sequence within the millisecond.
    pub sequence: u16,
}

/// Splits an ID into its parts.
pub fn decode(id: u64, epoch_ms: u64) -> Decoded {
    Decoded {
        unix_ms: (id >> (WORKER_BITS + SEQUENCE_BITS)) + epoch_ms,
        worker: ((id >> SEQUENCE_BITS) & MAX_WORKER as u64) as u16,
        sequence: (id & MAX_SEQUENCE as u64) as u16,
    }
}

struct State {
    last_ms: u64,
    seq: u16,
    /// xorshift state for the per-millisecond start offset.
    rng: u64,
}

/// Counters for SHOW IDS and metrics.
#[derive(Default)]
pub struct IdStats {
    /// IDs issued.
    pub issued: AtomicU64,
    /// Backward clock steps seen (waited out or refused).
    pub clock_backwards: AtomicU64,
    /// Requests refused.
    pub refused: AtomicU64,
}

/// An ID generator for one worker id.
pub struct Generator {
    epoch_ms: u64,
    worker: AtomicU64,
    tolerance_ms: u64,
    clock: Box<dyn Clock>,
    state: Mutex<State>,
    /// Off while the worker id is not safely held (a lease that could not be renewed).
    enabled: AtomicBool,
    /// With a lease: IDs are issued only before this moment (the last renewal plus two thirds
    /// of the TTL), even if the renewal task is late.
    valid_until: Mutex<Option<std::time::Instant>>,
    disabled_reason: Mutex<String>,
    /// Counters.
    pub stats: IdStats,
}

impl Generator {
    /// A generator for `worker` (0..=1023); `not_before_ms` is a time no earlier than the last ID
    /// this worker id ever issued (from its lease), so a restart on a clock that went back never
    /// reissues a range.
    pub fn new(epoch_ms: u64, worker: u16, tolerance_ms: u64, clock: Box<dyn Clock>, not_before_ms: u64) -> Generator {
        let seed = clock.now_ms() ^ ((worker as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Generator {
            epoch_ms,
            worker: AtomicU64::new(worker.min(MAX_WORKER) as u64),
            tolerance_ms,
            clock,
            state: Mutex::new(State {
                last_ms: not_before_ms,
                seq: MAX_SEQUENCE,
                rng: seed | 1,
            }),
            enabled: AtomicBool::new(true),
            valid_until: Mutex::new(None),
            disabled_reason: Mutex::new(String::new()),
            stats: IdStats::default(),
        }
    }

    /// The worker id.
    pub fn worker(&self) -> u16 {
        self.worker.load(Ordering::Relaxed) as u16
    }

    /// The epoch, in Unix milliseconds.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// The millisecond of the last ID issued.
    pub fn last_ms(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).last_ms
    }

    /// Stops issuing IDs (the worker id may be taken by another instance).
    pub fn disable(&self, why: &str) {
        *self.disabled_reason.lock().unwrap_or_else(|e| e.into_inner()) = why.to_owned();
        self.enabled.store(false, Ordering::SeqCst);
    }

    /// Issues IDs again, possibly under a new worker id (a fresh lease) and not before
    /// `not_before_ms`.
    pub fn enable(&self, worker: u16, not_before_ms: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.worker() != worker {
            st.last_ms = not_before_ms;
            st.seq = MAX_SEQUENCE;
        } else {
            st.last_ms = st.last_ms.max(not_before_ms);
        }
        self.worker.store(worker.min(MAX_WORKER) as u64, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Whether a lease limits issuing, and how long IDs may still be issued without a renewal.
    pub fn lease_left(&self) -> Option<Duration> {
        (*self.valid_until.lock().unwrap_or_else(|e| e.into_inner()))
            .map(|u| u.saturating_duration_since(std::time::Instant::now()))
    }

    /// Limits issuing to before `until` (a lease's safe end), or lifts the limit.
    pub fn set_valid_until(&self, until: Option<std::time::Instant>) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Whether IDs are issued, and why not.
    pub fn status(&self) -> Result<(), String> {
        if let Some(until) = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
            && std::time::Instant::now() >= until
        {
            return Err("the worker id lease could not be renewed in time; no ID is issued until it is".into());
        }
        if self.enabled.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.disabled_reason.lock().unwrap_or_else(|e| e.into_inner()).clone())
        }
    }

    /// The next ID.
    pub fn next(&self) -> Result<u64, IdError> {
        self.next_n(1).map(|v| v[0])
    }

    /// `n` IDs, increasing.
    pub fn next_n(&self, n: usize) -> Result<Vec<u64>, IdError> {
        if let Err(why) = self.status() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IdError::Unavailable(why));
        }
        let mut out = Vec::with_capacity(n);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let worker = self.worker.load(Ordering::Relaxed);
        while out.len() < n {
            let mut now = self.clock.now_ms();
            if now < st.last_ms {
                let back = st.last_ms - now;
                self.stats.clock_backwards.fetch_add(1, Ordering::Relaxed);
                if back > self.tolerance_ms {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(IdError::ClockMovedBack {
                        by_ms: back,
                        tolerance_ms: self.tolerance_ms,
                    });
                }
                // A small step back: wait until the clock is past the last ID's millisecond.
                while now < st.last_ms {
                    self.clock.sleep_ms(st.last_ms - now);
                    now = self.clock.now_ms();
                }
            }
            if now < self.epoch_ms {
                return Err(IdError::BeforeEpoch);
            }
            if now - self.epoch_ms >= 1 << TIME_BITS {
                return Err(IdError::EpochExhausted);
            }
            if now == st.last_ms {
                if st.seq >= MAX_SEQUENCE {
                    // This millisecond is used up: wait for the next.
                    while self.clock.now_ms() <= st.last_ms {
                        self.clock.sleep_ms(0);
                    }
                    continue;
                }
                st.seq += 1;
            } else {
                st.last_ms = now;
                // xorshift64: a new start below START_SPREAD each millisecond.
                st.rng ^= st.rng << 13;
                st.rng ^= st.rng >> 7;
                st.rng ^= st.rng << 17;
                st.seq = (st.rng % START_SPREAD as u64) as u16;
            }
            out.push(
                ((now - self.epoch_ms) << (WORKER_BITS + SEQUENCE_BITS)) | (worker << SEQUENCE_BITS) | st.seq as u64,
            );
        }
        self.stats.issued.fetch_add(n as u64, Ordering::Relaxed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
