//! The rate limit per token on the client-facing endpoints (OFREP
//! evaluation, `GET /api/feature-flags/{key}`; the event stream is bounded
//! by the stream limit instead): a leaked client token, or
//! one page gone wrong, cannot take the whole surface. Past the limit the
//! answer is `429` with `Retry-After`.
//!
//! The rule is GCRA (the generic cell rate algorithm, as `governor` and
//! most limiters use): one "theoretical arrival time" per token, so a
//! token costs 16 bytes and a decision a few comparisons. Written here
//! rather than taken from `governor` because the rule is these few lines
//! and that crate brings a dozen more for it. Keys are the tokens that
//! passed the token check (and "no token" where reads are open), so the
//! table cannot grow past the configured tokens; the console's sign-in
//! throttle keys by peer address, and the table is capped for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests per second per token by default; the burst is one second's.
pub const DEFAULT_PER_SECOND: u32 = 1000;

/// Most keys remembered (keyed by peer address, as the console's sign-in
/// is, a table could otherwise grow with every address seen).
const MAX_KEYS: usize = 10_000;

/// A limit of `per_second` requests per second per key, with bursts of
/// up to `per_second`.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now a key's theoretical arrival time may run.
    tolerance: u64,
    /// Where time counts from.
    start: Instant,
    /// Theoretical arrival time per key, in nanoseconds since `start`.
    arrivals: Mutex<HashMap<u64, u64>>,
}

impl RateLimit {
    /// A limit of `per_second` per key; `None` for 0 (no limit).
    pub fn new(per_second: u32) -> Option<RateLimit> {
        if per_second == 0 {
            return None;
        }
        Some(RateLimit::every(
            Duration::from_nanos(1_000_000_000 / u64::from(per_second)),
            per_second,
        ))
    }

    /// A limit of one request per `interval` per key, with bursts of up
    /// to `burst` (at least 1).
    pub fn every(interval: Duration, burst: u32) -> RateLimit {
        let interval = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        RateLimit {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
            start: Instant::now(),
            arrivals: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request of the caller presenting `credential` (`None`:
    /// no token), or says how long until one would be admitted.
    pub fn admit(&self, credential: Option<&[u8]>) -> Result<(), Duration> {
        let mut hasher = std::hash::DefaultHasher::new();
        credential.hash(&mut hasher);
        let key = hasher.finish();
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if arrivals.len() >= MAX_KEYS && !arrivals.contains_key(&key) {
            // A key whose arrival time has passed is back to a full burst:
            // forgetting it changes nothing. Past that, forget everyone
            // rather than grow (or refuse keys never seen).
            arrivals.retain(|_, arrival| *arrival > now);
            if arrivals.len() >= MAX_KEYS {
                arrivals.clear();
            }
        }
        let arrival = arrivals.entry(key).or_insert(0);
        match decide(*arrival, now, self.interval, self.tolerance) {
            Ok(next) => {
                *arrival = next;
                Ok(())
            }
            Err(wait) => Err(Duration::from_nanos(wait)),
        }
    }
}

/// GCRA: a request at `now` of a key whose theoretical arrival time is
/// `arrival` is admitted when that time is at most `tolerance` ahead of
/// now (giving the key's next arrival time), else refused with the wait
/// until it would be admitted.
pub fn decide(arrival: u64, now: u64, interval: u64, tolerance: u64) -> Result<u64, u64> {
    let arrival = arrival.max(now);
    let ahead = arrival - now;
    if ahead > tolerance {
        Err(ahead - tolerance)
    } else {
        Ok(arrival.saturating_add(interval))
    }
}

/// `Retry-After` for a wait: whole seconds, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs requests at `times` (sorted) through the rule; which were
    /// admitted.
    fn run(times: &[u64], interval: u64, tolerance: u64) -> Vec<bool> {
        let mut arrival = 0;
        times
            .iter()
            .map(|&now| match decide(arrival, now, interval, tolerance) {
                Ok(next) => {
                    arrival = next;
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    proptest! {
        /// In any stretch of time, no more are admitted than the burst and
        /// the steady rate allow.
        #[test]
        fn never_more_than_the_burst_and_the_rate(
            mut times in proptest::collection::vec(0u64..10_000, 1..300),
            interval in 1u64..200,
            burst in 1u64..20,
        ) {
            times.sort_unstable();
            let tolerance = interval * (burst - 1);
            let admitted = run(&times, interval, tolerance);
            for (i, &from) in times.iter().enumerate() {
                for (j, &to) in times.iter().enumerate().skip(i) {
                    let count = admitted[i..=j].iter().filter(|&&a| a).count() as u64;
                    prop_assert!(
                        count <= burst + (to - from) / interval,
                        "{count} admitted between {from} and {to}"
                    );
                }
            }
        }

        /// Requests no faster than the rate are all admitted.
        #[test]
        fn the_steady_rate_is_always_admitted(
            gaps in proptest::collection::vec(0u64..50, 1..200),
            interval in 1u64..50,
            burst in 1u64..10,
        ) {
            let mut now = 0;
            let times: Vec<u64> = gaps.iter().map(|gap| { now += interval + gap; now }).collect();
            let admitted = run(&times, interval, interval * (burst - 1));
            prop_assert!(admitted.iter().all(|&a| a));
        }

        /// A refused request is told a wait after which it is admitted.
        #[test]
        fn the_wait_is_enough(
            arrival in 0u64..1_000_000,
            now in 0u64..1_000_000,
            interval in 1u64..1000,
            tolerance in 0u64..10_000,
        ) {
            if let Err(wait) = decide(arrival, now, interval, tolerance) {
                prop_assert!(wait > 0);
                prop_assert!(decide(arrival, now + wait, interval, tolerance).is_ok());
            }
        }
    }

    #[test]
    fn keys_are_limited_apart() {
        let limit = RateLimit::new(2).expect("a limit");
        assert!(limit.admit(Some(b"a")).is_ok());
        assert!(limit.admit(Some(b"a")).is_ok());
        let wait = limit.admit(Some(b"a")).expect_err("past the burst");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(limit.admit(Some(b"b")).is_ok(), "another token");
        assert!(limit.admit(None).is_ok(), "no token is a key too");
        assert!(RateLimit::new(0).is_none());
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
