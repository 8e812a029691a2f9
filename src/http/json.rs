//! The protobuf JSON mapping of the readyd API, so that a field means the
//! same over HTTP as over gRPC: field names in lowerCamelCase, enums by
//! name, timestamps in RFC 3339, durations as seconds with an `s`, 64-bit
//! integers as strings. The mapping is prost-reflect's, driven by the same
//! descriptors the gRPC reflection service serves, so it follows the
//! `.proto` files without code written per message. Fields with their
//! default value are written too, so a client sees every field.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::api::pb;

/// The descriptors of every readyd message; `None` only if the binary's
/// own descriptor set does not decode, which the tests rule out.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).ok());

/// Why a message could not be written as JSON: a defect, never the
/// caller's doing.
#[derive(Debug, thiserror::Error)]
#[error("no JSON mapping for {0}")]
pub struct NoMapping(String);

/// `message`, whose full protobuf name is `name` (e.g.
/// `readyd.v1.HealthReport`), as JSON.
pub fn to_json<M: prost::Message>(name: &str, message: &M) -> Result<Value, NoMapping> {
    let missing = || NoMapping(name.to_owned());
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(name))
        .ok_or_else(missing)?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|_| missing())?;
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|_| missing())
}

/// A request body in the protobuf JSON mapping (lowerCamelCase or the
/// `.proto` field names both accepted, unknown fields refused) as the
/// message `name`; the error says what is wrong, for a 400.
pub fn from_json<M: prost::Message + Default>(name: &str, body: &[u8]) -> Result<M, String> {
    let descriptor = POOL
        .as_ref()
        .and_then(|pool| pool.get_message_by_name(name))
        .ok_or_else(|| format!("no JSON mapping for {name}"))?;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let dynamic = DynamicMessage::deserialize(descriptor, &mut deserializer).map_err(|err| {
        format!(
            "the body is not a valid {name}: {}",
            truncate(&err.to_string())
        )
    })?;
    deserializer
        .end()
        .map_err(|err| format!("the body has data after the JSON: {err}"))?;
    dynamic
        .transcode_to::<M>()
        .map_err(|err| format!("the body is not a valid {name}: {err}"))
}

/// At most 200 characters of an error message (they may quote the body).
fn truncate(message: &str) -> String {
    crate::echo::truncate(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb::readyd::v1;
    use serde_json::json;

    #[test]
    fn a_report_follows_the_mapping() {
        let report = v1::HealthReport {
            status: v1::HealthStatus::Degraded.into(),
            readyd_version: "1.2.3".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_796_562_000,
                nanos: 250_000_000,
            }),
            uptime: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            checks: vec![v1::CheckResult {
                name: "database".into(),
                state: v1::CheckState::Passing.into(),
                critical: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json("readyd.v1.HealthReport", &report).expect("mapped");
        assert_eq!(json["status"], "HEALTH_STATUS_DEGRADED");
        assert_eq!(json["readydVersion"], "1.2.3");
        assert_eq!(json["timestamp"], "2026-12-06T13:00:00.250Z");
        assert_eq!(json["uptime"], "1.500s");
        assert_eq!(
            json["maintenanceMode"], false,
            "defaults are written: {json}"
        );
        assert_eq!(json["checks"][0]["state"], "CHECK_STATE_PASSING");
        assert_eq!(json["checks"][0]["consecutiveFailures"], 0);
    }

    #[test]
    fn int64_is_a_string_and_every_readyd_message_has_a_mapping() {
        let flag = v1::Flag {
            key: "dark_mode".into(),
            version: 42,
            ..Default::default()
        };
        let json = to_json("readyd.v1.Flag", &flag).expect("mapped");
        assert_eq!(json["version"], json!("42"));
        assert_eq!(json["valueType"], "FLAG_VALUE_TYPE_UNSPECIFIED");
        let pool = POOL.as_ref().expect("the descriptor set decodes");
        assert!(
            pool.get_message_by_name("readyd.v1.EvaluateFlagResponse")
                .is_some()
        );
        assert!(to_json("readyd.v1.NoSuchMessage", &flag).is_err());
    }

    #[test]
    fn bodies_read_in_either_field_spelling_and_bad_ones_are_refused() {
        let camel: v1::UpsertFlagRequest = from_json(
            "readyd.v1.UpsertFlagRequest",
            br#"{"key": "dark_mode", "enabled": true, "rolloutPercentage": 25}"#,
        )
        .expect("camelCase");
        let snake: v1::UpsertFlagRequest = from_json(
            "readyd.v1.UpsertFlagRequest",
            br#"{"key": "dark_mode", "enabled": true, "rollout_percentage": 25}"#,
        )
        .expect("proto names");
        assert_eq!(camel, snake);
        assert_eq!(camel.enabled, Some(true));
        assert_eq!(camel.rollout_percentage, Some(25));
        for bad in [
            &br#"{"key": 5}"#[..],
            br#"{"noSuchField": 1}"#,
            br#"{"key": "a""#,
            br#"{"key": "a"} trailing"#,
            b"",
        ] {
            let err = from_json::<v1::UpsertFlagRequest>("readyd.v1.UpsertFlagRequest", bad)
                .expect_err("refused");
            assert!(!err.is_empty());
        }
    }
}
