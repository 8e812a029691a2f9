//! Stale flags: which flags are candidates for removal, and why. Pure: the
//! caller gathers the flags, their usage over the window and the keys that
//! exist, and passes the clock.
//!
//! Three reasons, each with its evidence:
//! - **not evaluated** in the window, for a flag older than the window (a
//!   new flag has not had the chance yet);
//! - **one variant**: every evaluation in the window served the same
//!   variant (fully rolled out or fully off), for a flag older than the
//!   window, so the one variant held for the whole window;
//! - **broken references**: prerequisites naming flags, or rules naming
//!   segments, that no longer exist (whatever the flag's age).
//!
//! Permanent flags (kill switches, ops toggles) are never listed. A flag
//! may be listed once per reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};

use super::rows::hour_of;

/// The window asked when none is given, in days.
pub const DEFAULT_DAYS: u32 = 30;

/// The longest window taken, in days (usage rows are not kept much longer).
pub const MAX_DAYS: u32 = 365;

/// What classification needs to know of one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagFacts {
    /// The flag's key.
    pub key: String,
    /// When the flag was created.
    pub created_at: DateTime<Utc>,
    /// Marked permanent: never listed.
    pub permanent: bool,
    /// Keys of the flags its prerequisites name.
    pub prerequisites: Vec<String>,
    /// Keys of the segments its rules name.
    pub segments: Vec<String>,
}

/// One flag's usage as the store aggregates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageAggregate {
    /// The latest hour with any evaluation, in or before the window (as
    /// far back as retention keeps rows).
    pub last_evaluated: Option<DateTime<Utc>>,
    /// Evaluations per variant in the window's hours.
    pub variants: BTreeMap<String, u64>,
}

/// Why a flag is listed, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Evidence {
    /// No evaluation in the window.
    NotEvaluated {
        /// The latest hour with an evaluation; `None`: never (as far as
        /// retention remembers).
        last_evaluated: Option<DateTime<Utc>>,
    },
    /// Every evaluation in the window served `variant`.
    OneVariant {
        /// The variant served (to 100 % of the evaluations).
        variant: String,
        /// Evaluations in the window.
        evaluations: u64,
    },
    /// References to flags or segments that no longer exist.
    BrokenReferences {
        /// Prerequisite flags that do not exist, sorted.
        missing_flags: Vec<String>,
        /// Segments that do not exist, sorted.
        missing_segments: Vec<String>,
    },
}

impl Evidence {
    /// The reason's name, as the API and the CLI show it.
    pub fn reason(&self) -> &'static str {
        match self {
            Evidence::NotEvaluated { .. } => "not_evaluated",
            Evidence::OneVariant { .. } => "one_variant",
            Evidence::BrokenReferences { .. } => "broken_references",
        }
    }
}

/// One listed flag with one reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlag {
    /// The flag's key.
    pub key: String,
    /// The reason and its evidence.
    pub evidence: Evidence,
}

/// The first hour of a window of `days` ending at `now`: usage rows of
/// this hour and later are in the window.
pub fn window_start(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    hour_of(now - TimeDelta::days(i64::from(days)))
}

/// The stale flags among `flags`, ordered by key then reason. `usage`
/// holds the aggregates of a window starting at `since` (a flag without an
/// entry was not evaluated); `flag_keys` and `segment_keys` are the keys
/// that exist now.
pub fn stale_flags(
    flags: &[FlagFacts],
    usage: &HashMap<String, UsageAggregate>,
    flag_keys: &HashSet<String>,
    segment_keys: &HashSet<String>,
    since: DateTime<Utc>,
) -> Vec<StaleFlag> {
    let empty = UsageAggregate::default();
    let mut listed = Vec::new();
    for flag in flags.iter().filter(|flag| !flag.permanent) {
        let aggregate = usage.get(&flag.key).unwrap_or(&empty);
        let served: Vec<(&String, u64)> = aggregate
            .variants
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(variant, count)| (variant, *count))
            .collect();
        // Only a flag that existed through the whole window can have gone
        // unread, or served one variant, for the whole window.
        let old_enough = flag.created_at <= since;
        if old_enough && served.is_empty() {
            listed.push(StaleFlag {
                key: flag.key.clone(),
                evidence: Evidence::NotEvaluated {
                    // Rows in the window with a zero count say nothing.
                    last_evaluated: aggregate.last_evaluated.filter(|hour| *hour < since),
                },
            });
        }
        if let [(variant, evaluations)] = served.as_slice()
            && old_enough
        {
            listed.push(StaleFlag {
                key: flag.key.clone(),
                evidence: Evidence::OneVariant {
                    variant: (*variant).clone(),
                    evaluations: *evaluations,
                },
            });
        }
        let missing = |keys: &[String], existing: &HashSet<String>| {
            let mut missing: Vec<String> = keys
                .iter()
                .filter(|key| !existing.contains(*key))
                .cloned()
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        let missing_flags = missing(&flag.prerequisites, flag_keys);
        let missing_segments = missing(&flag.segments, segment_keys);
        if !missing_flags.is_empty() || !missing_segments.is_empty() {
            listed.push(StaleFlag {
                key: flag.key.clone(),
                evidence: Evidence::BrokenReferences {
                    missing_flags,
                    missing_segments,
                },
            });
        }
    }
    listed.sort();
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day(n: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::days(20_000 + n)
    }

    fn flag(key: &str, created: i64) -> FlagFacts {
        FlagFacts {
            key: key.into(),
            created_at: day(created),
            permanent: false,
            prerequisites: Vec::new(),
            segments: Vec::new(),
        }
    }

    fn used(last: i64, variants: &[(&str, u64)]) -> UsageAggregate {
        UsageAggregate {
            last_evaluated: Some(day(last)),
            variants: variants.iter().map(|(v, n)| ((*v).into(), *n)).collect(),
        }
    }

    fn keys(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn the_window_starts_on_the_hour_days_before_now() {
        let now = day(40) + TimeDelta::minutes(90);
        assert_eq!(window_start(now, 30), day(10) + TimeDelta::hours(1));
    }

    #[test]
    fn a_hand_built_history_lists_each_flag_for_its_reasons() {
        let since = day(0);
        let mut broken = flag("broken", 5);
        broken.prerequisites = vec!["gone".into(), "kept".into(), "gone".into()];
        broken.segments = vec!["beta".into(), "vanished".into()];
        let mut kill = flag("kill-switch", -400);
        kill.permanent = true;
        let flags = vec![
            flag("unread", -90),
            flag("never-read", -40),
            flag("new", 25),
            flag("rolled-out", -100),
            flag("experiment", -100),
            flag("young-one-variant", 3),
            broken,
            kill,
            flag("kept", -100),
        ];
        let usage = HashMap::from([
            ("unread".into(), used(-45, &[])),
            ("rolled-out".into(), used(3, &[("on", 1_200)])),
            ("experiment".into(), used(3, &[("a", 10), ("b", 1)])),
            ("young-one-variant".into(), used(3, &[("off", 7)])),
            ("kept".into(), used(2, &[("on", 3), ("off", 4)])),
        ]);
        let listed = stale_flags(
            &flags,
            &usage,
            &keys(&["kept", "unread"]),
            &keys(&["beta"]),
            since,
        );
        assert_eq!(
            listed,
            vec![
                StaleFlag {
                    key: "broken".into(),
                    evidence: Evidence::BrokenReferences {
                        missing_flags: vec!["gone".into()],
                        missing_segments: vec!["vanished".into()],
                    },
                },
                StaleFlag {
                    key: "never-read".into(),
                    evidence: Evidence::NotEvaluated {
                        last_evaluated: None
                    },
                },
                StaleFlag {
                    key: "rolled-out".into(),
                    evidence: Evidence::OneVariant {
                        variant: "on".into(),
                        evaluations: 1_200,
                    },
                },
                StaleFlag {
                    key: "unread".into(),
                    evidence: Evidence::NotEvaluated {
                        last_evaluated: Some(day(-45))
                    },
                },
            ]
        );
    }

    #[test]
    fn a_flag_created_exactly_at_the_window_start_counts_as_old_enough() {
        let listed = stale_flags(
            &[flag("edge", 0)],
            &HashMap::new(),
            &HashSet::new(),
            &HashSet::new(),
            day(0),
        );
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].evidence.reason(), "not_evaluated");
    }

    fn any_flag() -> impl Strategy<Value = (FlagFacts, Option<UsageAggregate>)> {
        let names = prop::sample::select(vec!["a", "b", "c", "d"]);
        (
            "[a-f]{1,2}",
            -60i64..60,
            any::<bool>(),
            prop::collection::vec(names.clone(), 0..3),
            prop::collection::vec(names, 0..3),
            prop::option::of((
                prop::option::of(-120i64..60),
                prop::collection::btree_map("[xyz]", 0u64..5, 0..3),
            )),
        )
            .prop_map(|(key, created, permanent, prereqs, segments, usage)| {
                (
                    FlagFacts {
                        key,
                        created_at: day(created),
                        permanent,
                        prerequisites: prereqs.into_iter().map(String::from).collect(),
                        segments: segments.into_iter().map(String::from).collect(),
                    },
                    usage.map(|(last, variants)| UsageAggregate {
                        last_evaluated: last.map(day),
                        variants,
                    }),
                )
            })
    }

    fn any_history() -> impl Strategy<
        Value = (
            Vec<FlagFacts>,
            HashMap<String, UsageAggregate>,
            HashSet<String>,
            HashSet<String>,
        ),
    > {
        (
            prop::collection::vec(any_flag(), 0..8),
            prop::collection::hash_set("[a-d]", 0..4),
            prop::collection::hash_set("[a-d]", 0..4),
        )
            .prop_map(|(pairs, flag_keys, segment_keys)| {
                let mut flags = Vec::new();
                let mut usage = HashMap::new();
                for (facts, aggregate) in pairs {
                    if flags.iter().any(|f: &FlagFacts| f.key == facts.key) {
                        continue;
                    }
                    if let Some(aggregate) = aggregate {
                        usage.insert(facts.key.clone(), aggregate);
                    }
                    flags.push(facts);
                }
                (flags, usage, flag_keys, segment_keys)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn a_permanent_flag_is_never_listed(
            (flags, usage, flag_keys, segment_keys) in any_history()
        ) {
            let listed = stale_flags(&flags, &usage, &flag_keys, &segment_keys, day(0));
            for entry in &listed {
                let facts = flags.iter().find(|f| f.key == entry.key);
                prop_assert!(facts.is_some_and(|f| !f.permanent), "{entry:?}");
            }
        }

        #[test]
        fn a_flag_created_within_the_window_is_never_unread_nor_one_variant(
            (flags, usage, flag_keys, segment_keys) in any_history()
        ) {
            let since = day(0);
            for entry in stale_flags(&flags, &usage, &flag_keys, &segment_keys, since) {
                let Some(facts) = flags.iter().find(|f| f.key == entry.key) else {
                    return Err(TestCaseError::fail("listed a flag not given"));
                };
                if facts.created_at > since {
                    prop_assert!(
                        matches!(entry.evidence, Evidence::BrokenReferences { .. }),
                        "{entry:?}"
                    );
                }
            }
        }

        #[test]
        fn a_flag_serving_two_variants_is_never_one_variant_nor_unread(
            (flags, usage, flag_keys, segment_keys) in any_history()
        ) {
            for entry in stale_flags(&flags, &usage, &flag_keys, &segment_keys, day(0)) {
                let served = usage
                    .get(&entry.key)
                    .map_or(0, |u| u.variants.values().filter(|n| **n > 0).count());
                match entry.evidence {
                    Evidence::OneVariant { .. } => prop_assert_eq!(served, 1),
                    Evidence::NotEvaluated { .. } => prop_assert_eq!(served, 0),
                    Evidence::BrokenReferences { .. } => {}
                }
            }
        }

        #[test]
        fn every_listed_flag_has_evidence_matching_its_reason(
            (flags, usage, flag_keys, segment_keys) in any_history()
        ) {
            let since = day(0);
            let listed = stale_flags(&flags, &usage, &flag_keys, &segment_keys, since);
            for entry in &listed {
                let Some(facts) = flags.iter().find(|f| f.key == entry.key) else {
                    return Err(TestCaseError::fail("listed a flag not given"));
                };
                let aggregate = usage.get(&entry.key).cloned().unwrap_or_default();
                match &entry.evidence {
                    Evidence::NotEvaluated { last_evaluated } => {
                        prop_assert!(last_evaluated.is_none_or(|h| h < since));
                        if let Some(hour) = last_evaluated {
                            prop_assert_eq!(aggregate.last_evaluated, Some(*hour));
                        }
                    }
                    Evidence::OneVariant { variant, evaluations } => {
                        prop_assert!(*evaluations > 0);
                        prop_assert_eq!(aggregate.variants.get(variant), Some(evaluations));
                        let total: u64 = aggregate.variants.values().sum();
                        prop_assert_eq!(total, *evaluations, "100 % of the evaluations");
                    }
                    Evidence::BrokenReferences { missing_flags, missing_segments } => {
                        prop_assert!(!missing_flags.is_empty() || !missing_segments.is_empty());
                        for key in missing_flags {
                            prop_assert!(facts.prerequisites.contains(key));
                            prop_assert!(!flag_keys.contains(key));
                        }
                        for key in missing_segments {
                            prop_assert!(facts.segments.contains(key));
                            prop_assert!(!segment_keys.contains(key));
                        }
                    }
                }
            }
            // Ordered, and no flag twice for the same reason.
            let mut sorted = listed.clone();
            sorted.sort();
            sorted.dedup_by(|a, b| a.key == b.key && a.evidence.reason() == b.evidence.reason());
            prop_assert_eq!(sorted, listed);
        }

        #[test]
        fn every_old_unpermanent_flag_without_evaluations_is_listed_as_unread(
            (flags, usage, flag_keys, segment_keys) in any_history()
        ) {
            let since = day(0);
            let listed = stale_flags(&flags, &usage, &flag_keys, &segment_keys, since);
            for facts in &flags {
                let served = usage
                    .get(&facts.key)
                    .is_some_and(|u| u.variants.values().any(|n| *n > 0));
                let expected = !facts.permanent && facts.created_at <= since && !served;
                let found = listed.iter().any(|e| {
                    e.key == facts.key && e.evidence.reason() == "not_evaluated"
                });
                prop_assert_eq!(found, expected, "{:?}", facts);
            }
        }
    }
}
