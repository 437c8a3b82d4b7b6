use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A clock the test moves; sleeping advances it by at least a millisecond.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn sleep_ms(&self, ms: u64) {
        self.0.fetch_add(ms.max(1), Ordering::SeqCst);
    }
}

const EPOCH: u64 = DEFAULT_EPOCH_MS;

fn generator(start: u64, worker: u16, tolerance: u64) -> (Generator, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(start));
    (
        Generator::new(EPOCH, worker, tolerance, Box::new(TestClock(t.clone())), 0),
        t,
    )
}

#[test]
fn layout_round_trips() {
    let (g, _) = generator(EPOCH + 123_456, 777, 5);
    let id = g.next().unwrap();
    let d = decode(id, EPOCH);
    assert_eq!((d.unix_ms, d.worker), (EPOCH + 123_456, 777));
    assert!(d.sequence < START_SPREAD);
}

#[test]
fn strictly_increasing_and_exhaustion_waits_for_the_next_millisecond() {
    let (g, t) = generator(EPOCH + 1000, 1, 5);
    // More than one millisecond's worth while the clock stands still except when waited on.
    let ids = g.next_n(5000).unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    let first = decode(ids[0], EPOCH).unix_ms;
    let last = decode(ids[4999], EPOCH).unix_ms;
    assert!(
        last > first,
        "the sequence ran out and the generator moved to a later millisecond"
    );
    assert!(t.load(Ordering::SeqCst) > EPOCH + 1000);
    // Within one millisecond at most 4096 IDs.
    let per_ms = ids.iter().filter(|&&id| decode(id, EPOCH).unix_ms == first).count();
    assert!(per_ms <= 4096 && per_ms > 3000, "{per_ms}");
}

#[test]
fn a_small_step_back_is_waited_out() {
    let (g, t) = generator(EPOCH + 10_000, 2, 5);
    let a = g.next().unwrap();
    t.store(EPOCH + 9_997, Ordering::SeqCst); // 3 ms back, within tolerance
    let b = g.next().unwrap();
    assert!(b > a);
    assert!(decode(b, EPOCH).unix_ms >= EPOCH + 10_000);
    assert_eq!(g.stats.clock_backwards.load(Ordering::Relaxed), 1);
}

#[test]
fn a_large_step_back_is_refused_never_a_duplicate() {
    let (g, t) = generator(EPOCH + 10_000, 3, 5);
    let a = g.next().unwrap();
    t.store(EPOCH + 9_000, Ordering::SeqCst); // 1 s back
    assert_eq!(
        g.next(),
        Err(IdError::ClockMovedBack {
            by_ms: 1000,
            tolerance_ms: 5
        })
    );
    assert_eq!(g.stats.refused.load(Ordering::Relaxed), 1);
    t.store(EPOCH + 10_001, Ordering::SeqCst);
    assert!(g.next().unwrap() > a);
}

#[test]
fn a_restart_never_reissues_before_the_leased_last_timestamp() {
    let t = Arc::new(AtomicU64::new(EPOCH + 5_000));
    // The lease says this worker issued IDs up to EPOCH + 8000; the clock is behind that.
    let g = Generator::new(EPOCH, 4, 5, Box::new(TestClock(t.clone())), EPOCH + 8_000);
    assert!(matches!(g.next(), Err(IdError::ClockMovedBack { .. })));
    t.store(EPOCH + 8_001, Ordering::SeqCst);
    assert_eq!(decode(g.next().unwrap(), EPOCH).unix_ms, EPOCH + 8_001);
}

#[test]
fn epoch_limits() {
    let (g, _) = generator(EPOCH - 1, 0, 5);
    assert_eq!(g.next(), Err(IdError::BeforeEpoch));
    let (g, _) = generator(EPOCH + (1 << TIME_BITS) - 1, 0, 5);
    let id = g.next().unwrap();
    assert_eq!(id >> 63, 0, "the sign bit stays clear: IDs fit a bigint");
    let (g, _) = generator(EPOCH + (1 << TIME_BITS), 0, 5);
    assert_eq!(g.next(), Err(IdError::EpochExhausted));
}

#[test]
fn low_bits_are_balanced_at_low_rates() {
    // One ID per millisecond: a sequence restarting at 0 would make every ID even.
    let (g, t) = generator(EPOCH + 1, 5, 5);
    let mut odd = 0;
    let mut mod8 = [0u32; 8];
    for _ in 0..4000 {
        t.fetch_add(1, Ordering::SeqCst);
        let id = g.next().unwrap();
        odd += (id % 2) as u32;
        mod8[(id % 8) as usize] += 1;
    }
    assert!((1700..2300).contains(&odd), "odd {odd} of 4000");
    assert!(mod8.iter().all(|&c| (350..650).contains(&c)), "{mod8:?}");
}

#[test]
fn disabled_generators_refuse() {
    let (g, _) = generator(EPOCH + 1, 6, 5);
    g.disable("lease lost");
    assert_eq!(g.next(), Err(IdError::Unavailable("lease lost".into())));
    g.enable(7, 0);
    assert_eq!(decode(g.next().unwrap(), EPOCH).worker, 7);
}
