//! Conversions between protobuf's well-known types and the domain's JSON
//! values and times.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp, Value};

/// Converts a time to protobuf.
pub fn to_timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// A duration as protobuf's (saturating at the largest one).
pub fn to_duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A protobuf time as a UTC time; `None` when out of range.
pub fn from_timestamp(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// JSON to `google.protobuf.Value`. Numbers become doubles, as the protobuf
/// type requires (integers beyond 2^53 lose precision).
pub fn to_pb_value(json: &serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_pb_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_pb_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object to `google.protobuf.Struct`.
pub fn to_pb_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), to_pb_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// `google.protobuf.Value` to JSON. Refuses what JSON cannot hold (NaN,
/// infinities) and a Value with no kind set. A whole number becomes a JSON
/// integer, so `1` round-trips as `1`, not `1.0`.
pub fn from_pb_value(value: Value) -> Result<serde_json::Value, String> {
    match value.kind {
        None => Err("a google.protobuf.Value must have one of its kinds set".to_owned()),
        Some(Kind::NullValue(_)) => Ok(serde_json::Value::Null),
        Some(Kind::BoolValue(b)) => Ok(serde_json::Value::Bool(b)),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Ok(serde_json::Value::String(s)),
        Some(Kind::ListValue(list)) => list
            .values
            .into_iter()
            .map(from_pb_value)
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array),
        Some(Kind::StructValue(s)) => from_pb_struct(s).map(serde_json::Value::Object),
    }
}

/// `google.protobuf.Struct` to a JSON object.
pub fn from_pb_struct(s: Struct) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    s.fields
        .into_iter()
        .map(|(k, v)| from_pb_value(v).map(|v| (k, v)))
        .collect()
}

/// `json` as it reads after a trip through `google.protobuf.Value`
/// ([`to_pb_value`] then [`from_pb_value`]), without building the protobuf
/// values: every number as the double it becomes (a whole one as an
/// integer), refused when no JSON number can hold it. What an HTTP client
/// sends then means exactly what the same value means over gRPC.
pub fn through_pb(json: serde_json::Value) -> Result<serde_json::Value, String> {
    match json {
        serde_json::Value::Number(n) => number(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(through_pb)
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| through_pb(v).map(|v| (k, v)))
            .collect::<Result<_, _>>()
            .map(serde_json::Value::Object),
        other => Ok(other),
    }
}

/// Largest integer a double holds exactly.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

fn number(n: f64) -> Result<serde_json::Value, String> {
    if !n.is_finite() {
        return Err(format!("{n} is not a JSON number"));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT {
        // Exact: the cast cannot truncate within ±2^53.
        return Ok(serde_json::Value::from(n as i64));
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .ok_or_else(|| format!("{n} is not a JSON number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite() && f.fract() != 0.0)
                .prop_map(serde_json::Value::from),
            "\\PC{0,16}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Every JSON value with numbers a double holds survives the trip.
        #[test]
        fn json_round_trips_through_protobuf(json in json_strategy()) {
            prop_assert_eq!(from_pb_value(to_pb_value(&json)).unwrap(), json);
        }
    }

    #[test]
    fn non_finite_numbers_and_empty_values_are_refused() {
        assert!(
            from_pb_value(Value {
                kind: Some(Kind::NumberValue(f64::NAN))
            })
            .is_err()
        );
        assert!(
            from_pb_value(Value {
                kind: Some(Kind::NumberValue(f64::INFINITY))
            })
            .is_err()
        );
        assert!(from_pb_value(Value { kind: None }).is_err());
    }

    #[test]
    fn times_round_trip() {
        let now = Utc::now();
        assert_eq!(from_timestamp(&to_timestamp(now)), Some(now));
    }
}
