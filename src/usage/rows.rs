//! Counts waiting to be flushed, as hourly rows: pure, no I/O.
//!
//! A count belongs to the hour in which it was taken out of memory (at most
//! one flush interval after the evaluation). Rows are keyed by hour first,
//! so the oldest hour is dropped first when the database (or the upstream)
//! has been away long enough for the rows to reach their bound.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// What a usage row counts: one flag's answers of one variant for one
/// reason in one hour.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageKey {
    /// The start of the hour.
    pub hour: DateTime<Utc>,
    /// The flag's key.
    pub flag: String,
    /// The variant answered.
    pub variant: String,
    /// Why: a [`Reason`](crate::flags::Reason)'s name.
    pub reason: &'static str,
}

/// A row and its count.
pub type UsageRow = (UsageKey, u64);

/// The start of the hour `at` falls in.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

/// Rows waiting, at most `max_rows` of them.
#[derive(Debug, Clone)]
pub struct Pending {
    rows: BTreeMap<UsageKey, u64>,
    max_rows: usize,
}

impl Pending {
    /// No rows, never more than `max_rows` (at least one).
    pub fn new(max_rows: usize) -> Self {
        Self {
            rows: BTreeMap::new(),
            max_rows: max_rows.max(1),
        }
    }

    /// Adds `count` to row `key`; returns the evaluations dropped to stay
    /// within the bound (the oldest rows' counts).
    pub fn add(&mut self, key: UsageKey, count: u64) -> u64 {
        if count == 0 {
            return 0;
        }
        let row = self.rows.entry(key).or_default();
        *row = row.saturating_add(count);
        let mut dropped = 0u64;
        while self.rows.len() > self.max_rows {
            match self.rows.pop_first() {
                Some((_, count)) => dropped = dropped.saturating_add(count),
                None => break,
            }
        }
        dropped
    }

    /// Takes out the oldest `at_most` rows.
    pub fn take(&mut self, at_most: usize) -> Vec<UsageRow> {
        let mut taken = Vec::with_capacity(at_most.min(self.rows.len()));
        while taken.len() < at_most {
            match self.rows.pop_first() {
                Some(row) => taken.push(row),
                None => break,
            }
        }
        taken
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row waits.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Evaluations waiting.
    pub fn total(&self) -> u64 {
        self.rows.values().fold(0, |sum, n| sum.saturating_add(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::Reason;
    use proptest::prelude::*;

    fn key(hour: i64, flag: u8, variant: u8, reason: usize) -> UsageKey {
        UsageKey {
            hour: DateTime::UNIX_EPOCH + TimeDelta::hours(hour),
            flag: format!("f{flag}"),
            variant: format!("v{variant}"),
            reason: Reason::ALL[reason % Reason::ALL.len()].as_str(),
        }
    }

    #[test]
    fn hours_start_on_the_hour() {
        let at = DateTime::UNIX_EPOCH + TimeDelta::seconds(7 * 3600 + 59 * 60 + 59);
        assert_eq!(hour_of(at), DateTime::UNIX_EPOCH + TimeDelta::hours(7));
        assert_eq!(hour_of(hour_of(at)), hour_of(at));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever order counts come in and however they are taken out,
        /// every evaluation is either in a taken row or counted as dropped,
        /// never both, never twice; rows never exceed the bound; and rows
        /// are dropped only at the bound.
        #[test]
        fn every_count_is_kept_or_dropped_exactly_once(
            adds in prop::collection::vec((0i64..6, 0u8..4, 0u8..3, 0usize..7, 1u64..1000), 0..200),
            max_rows in 1usize..40,
            takes in prop::collection::vec(0usize..10, 0..20),
        ) {
            let mut pending = Pending::new(max_rows);
            let mut expected = std::collections::BTreeMap::<UsageKey, u64>::new();
            let mut dropped = 0u64;
            let mut taken = std::collections::BTreeMap::<UsageKey, u64>::new();
            let mut takes = takes.into_iter();
            for (hour, flag, variant, reason, count) in adds {
                let k = key(hour, flag, variant, reason);
                *expected.entry(k.clone()).or_default() += count;
                let before = pending.total();
                let lost = pending.add(k.clone(), count);
                dropped += lost;
                prop_assert!(pending.len() <= max_rows);
                prop_assert_eq!(pending.total() + lost, before + count);
                if lost > 0 {
                    // Rows are dropped only to stay within the bound.
                    prop_assert_eq!(pending.len(), max_rows);
                }
                if let Some(n) = takes.next() {
                    for (k, c) in pending.take(n) {
                        *taken.entry(k).or_default() += c;
                    }
                }
            }
            for (k, c) in pending.take(usize::MAX) {
                *taken.entry(k).or_default() += c;
            }
            let expected_total: u64 = expected.values().sum();
            let taken_total: u64 = taken.values().sum();
            prop_assert_eq!(taken_total + dropped, expected_total);
            for (k, c) in &taken {
                prop_assert!(*c <= expected[k]);
            }
            if dropped == 0 {
                prop_assert_eq!(taken, expected);
            }
        }

        /// Rows are taken oldest hour first.
        #[test]
        fn rows_are_taken_oldest_first(
            adds in prop::collection::vec((0i64..48, 0u8..4, 0u8..3, 0usize..7, 1u64..10), 1..100),
            n in 1usize..20,
        ) {
            let mut pending = Pending::new(1000);
            for (hour, flag, variant, reason, count) in adds {
                pending.add(key(hour, flag, variant, reason), count);
            }
            let first = pending.take(n);
            let rest = pending.take(usize::MAX);
            if let (Some(last_first), Some(first_rest)) = (first.last(), rest.first()) {
                prop_assert!(last_first.0.hour <= first_rest.0.hour);
            }
        }
    }
}
