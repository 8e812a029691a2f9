//! The protobuf JSON mapping of the messages the HTTP surface answers
//! with, so a field means the same over HTTP as over gRPC: field names in
//! lowerCamelCase, enums by name, timestamps in RFC 3339, durations as
//! seconds with an `s`, 64-bit integers as strings. Fields with their
//! default value are written too, so a client sees every field.

use serde_json::{Value, json};

use crate::api::pb::readyd::v1 as pb;

/// A timestamp, e.g. `2026-12-06T13:00:00.250Z`.
pub fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> Value {
    let Some(timestamp) = timestamp else {
        return Value::Null;
    };
    let nanos = u32::try_from(timestamp.nanos).unwrap_or(0);
    match chrono::DateTime::from_timestamp(timestamp.seconds, nanos) {
        Some(time) => Value::String(time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        None => Value::Null,
    }
}

/// A duration, e.g. `1.500s` (0, 3, 6 or 9 fractional digits, as the
/// mapping asks).
pub fn duration(duration: Option<&prost_types::Duration>) -> Value {
    let Some(duration) = duration else {
        return Value::Null;
    };
    let sign = if duration.seconds < 0 || duration.nanos < 0 {
        "-"
    } else {
        ""
    };
    let seconds = duration.seconds.unsigned_abs();
    let nanos = duration.nanos.unsigned_abs();
    let text = if nanos == 0 {
        format!("{sign}{seconds}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{sign}{seconds}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{sign}{seconds}.{:06}s", nanos / 1_000)
    } else {
        format!("{sign}{seconds}.{nanos:09}s")
    };
    Value::String(text)
}

/// A health report (`readyd.v1.HealthReport`).
pub fn health_report(report: &pb::HealthReport) -> Value {
    json!({
        "status": report.status().as_str_name(),
        "readydVersion": report.readyd_version,
        "appVersion": report.app_version,
        "environment": report.environment,
        "instance": report.instance,
        "timestamp": timestamp(report.timestamp.as_ref()),
        "uptime": duration(report.uptime.as_ref()),
        "maintenanceMode": report.maintenance_mode,
        "maintenanceMessage": report.maintenance_message,
        "checks": report.checks.iter().map(check_result).collect::<Vec<_>>(),
        "staleFor": duration(report.stale_for.as_ref()),
    })
}

/// One check of a report (`readyd.v1.CheckResult`).
fn check_result(check: &pb::CheckResult) -> Value {
    json!({
        "name": check.name,
        "target": check.target,
        "critical": check.critical,
        "state": check.state().as_str_name(),
        "latency": duration(check.latency.as_ref()),
        "lastError": check.last_error,
        "consecutiveFailures": check.consecutive_failures,
        "lastSuccess": timestamp(check.last_success.as_ref()),
        "lastChecked": timestamp(check.last_checked.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_and_timestamps_follow_the_mapping() {
        let d = |seconds, nanos| duration(Some(&prost_types::Duration { seconds, nanos }));
        assert_eq!(d(3, 0), json!("3s"));
        assert_eq!(d(1, 500_000_000), json!("1.500s"));
        assert_eq!(d(0, 1_500), json!("0.000001500s"));
        assert_eq!(d(0, 250_000), json!("0.000250s"));
        assert_eq!(d(-1, -500_000_000), json!("-1.500s"));
        assert_eq!(duration(None), Value::Null);
        let t = timestamp(Some(&prost_types::Timestamp {
            seconds: 1_796_562_000,
            nanos: 250_000_000,
        }));
        assert_eq!(t, json!("2026-12-06T13:00:00.250Z"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A written duration reads back as the same number of nanoseconds.
        #[test]
        fn durations_round_trip(seconds in 0i64..1_000_000, nanos in 0i32..1_000_000_000) {
            let Value::String(text) = duration(Some(&prost_types::Duration { seconds, nanos })) else {
                panic!("a duration is a string");
            };
            let number = text.strip_suffix('s').expect("ends in s");
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            prop_assert!(matches!(fraction.len(), 0 | 3 | 6 | 9), "{}", text);
            let padded = format!("{fraction:0<9}");
            prop_assert_eq!(whole.parse::<i64>().expect("seconds"), seconds);
            prop_assert_eq!(padded.parse::<i32>().expect("nanos"), nanos);
        }
    }
}
