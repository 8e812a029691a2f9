//! GetFlagUsage: a flag's hourly evaluation counts from `flag_usage`;
//! ListStaleFlags: the flags the counts (and the snapshot) say are
//! candidates for removal.

use chrono::{DateTime, TimeDelta, Utc};
use prost_types::Timestamp;

use crate::api::convert::{from_timestamp, to_timestamp};
use crate::api::error::ApiError;
use crate::api::pb::readyd::v1 as pb;
use crate::api::{Database, invalid};
use crate::state::snapshot::Snapshot;
use crate::usage::rows::hour_of;
use crate::usage::stale::{self, Evidence, FlagFacts};

/// The range asked when `since` is not given.
const DEFAULT_RANGE: TimeDelta = TimeDelta::days(7);

/// The longest range one call may ask for.
const MAX_RANGE: TimeDelta = TimeDelta::days(92);

/// The most buckets one answer holds (about 60 bytes each).
const MAX_BUCKETS: usize = 50_000;

/// The hours `since..until` asked for, on hour boundaries: `since` rounded
/// down, `until` rounded up, defaults filled in from `now`.
pub fn usage_range(
    since: Option<&Timestamp>,
    until: Option<&Timestamp>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let until = match until {
        Some(until) => from_timestamp(until).ok_or_else(|| invalid("until", "out of range"))?,
        None => now,
    };
    let until = if hour_of(until) == until {
        until
    } else {
        hour_of(until) + TimeDelta::hours(1)
    };
    let since = match since {
        Some(since) => {
            hour_of(from_timestamp(since).ok_or_else(|| invalid("since", "out of range"))?)
        }
        None => until - DEFAULT_RANGE,
    };
    if since >= until {
        return Err(invalid("since", "must be before until"));
    }
    if until - since > MAX_RANGE {
        return Err(invalid(
            "until",
            "at most 92 days after since; ask for a shorter range",
        ));
    }
    Ok((since, until))
}

/// Answers GetFlagUsage for flag `key` (already checked).
pub async fn get_flag_usage(
    store: &Database,
    key: &str,
    since: Option<&Timestamp>,
    until: Option<&Timestamp>,
) -> Result<pb::GetFlagUsageResponse, tonic::Status> {
    let (since, until) = usage_range(since, until, Utc::now())?;
    let rows = store
        .get()?
        .flag_usage(key, since, until, MAX_BUCKETS as i64 + 1)
        .await
        .map_err(ApiError::from)?;
    if rows.len() > MAX_BUCKETS {
        return Err(tonic::Status::resource_exhausted(format!(
            "more than {MAX_BUCKETS} buckets in the range; ask for a shorter range"
        )));
    }
    let total = rows.iter().fold(0u64, |sum, row| {
        sum.saturating_add(u64::try_from(row.count).unwrap_or(0))
    });
    Ok(pb::GetFlagUsageResponse {
        key: key.to_owned(),
        since: Some(to_timestamp(since)),
        until: Some(to_timestamp(until)),
        buckets: rows
            .into_iter()
            .map(|row| pb::FlagUsageBucket {
                hour: Some(to_timestamp(row.hour)),
                environment: row.environment,
                variant: row.variant,
                reason: row.reason,
                count: u64::try_from(row.count).unwrap_or(0),
            })
            .collect(),
        total,
    })
}

/// The window asked for, in days: 0 means the default.
pub fn stale_days(days: u32) -> Result<u32, ApiError> {
    match days {
        0 => Ok(stale::DEFAULT_DAYS),
        1..=stale::MAX_DAYS => Ok(days),
        _ => Err(invalid("days", "1 to 365 (0 for the default, 30)")),
    }
}

/// Answers ListStaleFlags over a window of `days` (not yet checked), for
/// the flags and segments of `snapshot`.
pub async fn list_stale_flags(
    store: &Database,
    snapshot: &Snapshot,
    days: u32,
) -> Result<pb::ListStaleFlagsResponse, tonic::Status> {
    let days = stale_days(days)?;
    let since = stale::window_start(Utc::now(), days);
    let usage = store
        .get()?
        .usage_aggregates(since)
        .await
        .map_err(ApiError::from)?;
    let all = snapshot.flags_sorted();
    let facts: Vec<FlagFacts> = all
        .iter()
        .map(|compiled| {
            let flag = compiled.flag();
            let targeting = flag.targeting.as_deref();
            FlagFacts {
                key: flag.key.clone(),
                created_at: flag.created_at,
                permanent: flag.permanent,
                prerequisites: targeting
                    .map(|t| t.required_flags().map(str::to_owned).collect())
                    .unwrap_or_default(),
                segments: targeting.map(|t| t.named_segments()).unwrap_or_default(),
            }
        })
        .collect();
    let flag_keys = facts.iter().map(|f| f.key.clone()).collect();
    let segment_keys = snapshot
        .segments_sorted()
        .iter()
        .map(|s| s.segment().key.clone())
        .collect();
    let listed = stale::stale_flags(&facts, &usage, &flag_keys, &segment_keys, since);
    Ok(pb::ListStaleFlagsResponse {
        days,
        since: Some(to_timestamp(since)),
        flags: listed
            .into_iter()
            .map(|entry| {
                let mut out = pb::StaleFlag {
                    key: entry.key,
                    reason: entry.evidence.reason().to_owned(),
                    ..pb::StaleFlag::default()
                };
                match entry.evidence {
                    Evidence::NotEvaluated { last_evaluated } => {
                        out.last_evaluated = last_evaluated.map(to_timestamp);
                    }
                    Evidence::OneVariant {
                        variant,
                        evaluations,
                    } => {
                        out.variant = variant;
                        out.share_percent = 100;
                        out.evaluations = evaluations;
                    }
                    Evidence::BrokenReferences {
                        missing_flags,
                        missing_segments,
                    } => {
                        out.missing_flags = missing_flags;
                        out.missing_segments = missing_segments;
                    }
                }
                out
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: i64, minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
            + TimeDelta::days(20_000)
            + TimeDelta::hours(hours)
            + TimeDelta::minutes(minutes)
    }

    #[test]
    fn stale_windows_outside_one_to_365_days_are_refused() {
        assert_eq!(stale_days(0).ok(), Some(30));
        assert_eq!(stale_days(1).ok(), Some(1));
        assert_eq!(stale_days(365).ok(), Some(365));
        assert!(stale_days(366).is_err());
        assert!(stale_days(u32::MAX).is_err());
    }

    #[test]
    fn ranges_are_whole_hours_with_defaults_from_now() {
        let now = at(10, 30);
        assert_eq!(
            usage_range(None, None, now).expect("a range"),
            (at(11, 0) - DEFAULT_RANGE, at(11, 0))
        );
        let since = to_timestamp(at(2, 59));
        let until = to_timestamp(at(5, 0));
        assert_eq!(
            usage_range(Some(&since), Some(&until), now).expect("a range"),
            (at(2, 0), at(5, 0))
        );
    }

    #[test]
    fn empty_reversed_and_overlong_ranges_are_refused() {
        let now = at(10, 30);
        let t = |d: DateTime<Utc>| to_timestamp(d);
        assert!(usage_range(Some(&t(at(5, 0))), Some(&t(at(5, 0))), now).is_err());
        assert!(usage_range(Some(&t(at(6, 0))), Some(&t(at(5, 0))), now).is_err());
        assert!(
            usage_range(
                Some(&t(at(0, 0) - MAX_RANGE - TimeDelta::hours(1))),
                Some(&t(at(0, 0))),
                now
            )
            .is_err()
        );
        let broken = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(usage_range(Some(&broken), None, now).is_err());
    }
}
