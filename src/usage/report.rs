//! A follower's flush as its upstream receives it (RecordUsage): checked
//! whole before anything is written, so a bad report changes nothing.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use tonic::Status;

use super::flush::MAX_BATCH_ROWS;
use super::rows::hour_of;
use crate::api::convert::from_timestamp;
use crate::api::pb::readyd::v1 as pb;
use crate::flags::Reason;
use crate::flags::{is_valid_environment, is_valid_key};
use crate::store::usage::UsageAddition;

/// The longest variant name taken.
const MAX_VARIANT_LEN: usize = 128;

/// How far from now an hour may be: older counts are past any retention
/// worth keeping, newer ones come from a clock that is wrong.
const HOURS_BACK: TimeDelta = TimeDelta::days(400);
const HOURS_AHEAD: TimeDelta = TimeDelta::days(1);

/// Whether `id` is a UUID in its usual text form.
pub fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The flush id and rows of `request`, or INVALID_ARGUMENT naming the
/// first field that is wrong.
pub fn checked(
    request: pb::RecordUsageRequest,
    now: DateTime<Utc>,
) -> Result<(String, Vec<UsageAddition>), Status> {
    if !is_uuid(&request.flush_id) {
        return Err(Status::invalid_argument("flush_id: not a UUID"));
    }
    if request.counts.len() > MAX_BATCH_ROWS {
        return Err(Status::invalid_argument(format!(
            "counts: at most {MAX_BATCH_ROWS} per call, not {}",
            request.counts.len()
        )));
    }
    let mut seen = HashSet::with_capacity(request.counts.len());
    let mut rows = Vec::with_capacity(request.counts.len());
    for (i, count) in request.counts.into_iter().enumerate() {
        let bad = |field: &str, why: &str| {
            Status::invalid_argument(format!("counts[{i}].{field}: {why}"))
        };
        if !is_valid_key(&count.flag_key) {
            return Err(bad("flag_key", "not a flag key"));
        }
        if !is_valid_environment(&count.environment) {
            return Err(bad("environment", "not an environment name"));
        }
        if count.variant.is_empty()
            || count.variant.len() > MAX_VARIANT_LEN
            || count.variant.chars().any(char::is_control)
        {
            return Err(bad("variant", "1 to 128 bytes without control characters"));
        }
        let Some(reason) = Reason::ALL.iter().find(|r| r.as_str() == count.reason) else {
            return Err(bad("reason", "not a known reason"));
        };
        let Some(hour) = count.hour.as_ref().and_then(from_timestamp) else {
            return Err(bad("hour", "missing or out of range"));
        };
        if hour_of(hour) != hour {
            return Err(bad("hour", "not on the hour"));
        }
        if hour < now - HOURS_BACK || hour > now + HOURS_AHEAD {
            return Err(bad("hour", "too far from now"));
        }
        let Ok(n) = i64::try_from(count.count) else {
            return Err(bad("count", "too large"));
        };
        if n < 1 {
            return Err(bad("count", "at least 1"));
        }
        if !seen.insert((
            count.flag_key.clone(),
            hour,
            count.environment.clone(),
            count.variant.clone(),
            reason.as_str(),
        )) {
            return Err(bad("flag_key", "the same row twice in one flush"));
        }
        rows.push(UsageAddition {
            flag: count.flag_key,
            hour,
            environment: count.environment,
            variant: count.variant,
            reason: reason.as_str().to_owned(),
            count: n,
        });
    }
    Ok((request.flush_id, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert::to_timestamp;

    fn count(hour: DateTime<Utc>) -> pb::UsageCount {
        pb::UsageCount {
            flag_key: "checkout".into(),
            hour: Some(to_timestamp(hour)),
            environment: "prod".into(),
            variant: "on".into(),
            reason: "STATIC".into(),
            count: 3,
        }
    }

    fn request(counts: Vec<pb::UsageCount>) -> pb::RecordUsageRequest {
        pb::RecordUsageRequest {
            flush_id: "6f1c0a57-3c1e-4b8e-9a53-0d5cfb1c2e11".into(),
            counts,
        }
    }

    #[test]
    fn a_good_report_passes_and_each_bad_field_is_named() {
        let now = Utc::now();
        let hour = hour_of(now);
        let (_, rows) = checked(request(vec![count(hour)]), now).expect("valid");
        assert_eq!(rows.len(), 1);
        type Spoil = Box<dyn Fn(&mut pb::RecordUsageRequest)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("flush_id", Box::new(|r| r.flush_id = "nope".into())),
            (
                "flag_key",
                Box::new(|r| r.counts[0].flag_key = "Bad Key".into()),
            ),
            (
                "environment",
                Box::new(|r| r.counts[0].environment = String::new()),
            ),
            (
                "variant",
                Box::new(|r| r.counts[0].variant = "\u{7}".into()),
            ),
            ("reason", Box::new(|r| r.counts[0].reason = "MAYBE".into())),
            (
                "hour",
                Box::new(move |r| {
                    r.counts[0].hour = Some(to_timestamp(hour + TimeDelta::minutes(1)))
                }),
            ),
            (
                "hour",
                Box::new(move |r| r.counts[0].hour = Some(to_timestamp(hour + TimeDelta::days(3)))),
            ),
            ("hour", Box::new(|r| r.counts[0].hour = None)),
            ("count", Box::new(|r| r.counts[0].count = 0)),
            ("count", Box::new(|r| r.counts[0].count = u64::MAX)),
            (
                "flag_key",
                Box::new(|r| {
                    let again = r.counts[0].clone();
                    r.counts.push(again);
                }),
            ),
        ];
        for (field, spoil) in cases {
            let mut bad = request(vec![count(hour)]);
            spoil(&mut bad);
            let status = checked(bad, now).expect_err(field);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(
                status.message().contains(field),
                "{field}: {}",
                status.message()
            );
        }
    }
}
