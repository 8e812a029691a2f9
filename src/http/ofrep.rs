//! OFREP, the OpenFeature Remote Evaluation Protocol
//! (`open-feature/protocol`, `service/openapi.yaml`): single and bulk
//! evaluation over HTTP for OpenFeature's OFREP providers (web, mobile,
//! server). Answers are the flagd protocol's (the same OpenFeature context
//! reading, values, variants and reason names), which are `EvaluateFlag`'s.
//!
//! The bulk answer carries an `ETag` computed from the evaluated answers
//! themselves (each with its flag's version in `metadata`), not from the
//! data version alone: a time-based rule that flips changes it too.

use std::hash::{Hash, Hasher};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use super::bulk_cache::{BulkCache, Inputs};
use super::{json_response, typed_json_response};
use crate::api::auth::Audience;
use crate::api::flagd::{FlagdCore, Resolved, ResolvedRef, Wanted, context_of_json_fields};
use crate::api::json_context::{JsonContext, Skipped, Text};

/// The token of an OFREP request: `Authorization: Bearer …`, or the
/// `X-API-Key` header the providers also offer, as a bearer value.
pub fn authorization(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return Some(value.clone());
    }
    let key = headers.get("x-api-key")?.to_str().ok()?.trim();
    HeaderValue::from_str(&format!("Bearer {key}")).ok()
}

/// Why a request's context cannot be read: `(errorCode, errorDetails)`.
type Refusal = (&'static str, String);

/// The evaluation context of a request body `{"context": {…}}` (an empty
/// body or no `context` is an empty context). Read straight from the bytes
/// (see [`crate::api::json_context`]); it answers as reading the body into
/// a `serde_json::Value` first would, errors included.
fn context(body: &[u8]) -> Result<crate::flags::EvaluationContext, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(crate::flags::EvaluationContext::default());
    }
    let request: Body<'_> = serde_json::from_slice(body)
        .map_err(|err| ("PARSE_ERROR", format!("the body is not JSON: {err}")))?;
    match request.context {
        None | Some(JsonContext::Null) => Ok(crate::flags::EvaluationContext::default()),
        Some(JsonContext::Object(fields)) => context_of_json_fields(fields)
            .map_err(|status| ("INVALID_CONTEXT", status.message().to_owned())),
        Some(JsonContext::Other) => Err((
            "INVALID_CONTEXT",
            "context must be a JSON object".to_owned(),
        )),
    }
}

/// A request body: any JSON; an object's `context` is the context (the
/// last one, if sent twice), its other fields are parsed and dropped.
struct Body<'de> {
    /// The `context` field, if there is one.
    context: Option<JsonContext<'de>>,
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut context = None;
                while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
                    if name == "context" {
                        context = Some(map.next_value::<JsonContext<'de>>()?);
                    } else {
                        map.next_value::<Skipped>()?;
                    }
                }
                Ok(Body { context })
            }
            // Anything but an object has no context.
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Skipped::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Body { context: None })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Body { context: None })
            }
        }
        deserializer.deserialize_any(BodyVisitor)
    }
}

/// The reason OFREP allows for one of readyd's (OpenFeature names, as the
/// flagd protocol gives them). OFREP knows `STATIC`, `TARGETING_MATCH`,
/// `SPLIT`, `DISABLED` and `UNKNOWN`; readyd's others (`DEFAULT`: no rule
/// matched; `STALE`: the answer may be out of date) read `UNKNOWN`, and
/// the answer's metadata keeps readyd's own as `readydReason`.
pub fn reason(open_feature: &str) -> &'static str {
    match open_feature {
        "STATIC" => "STATIC",
        "TARGETING_MATCH" => "TARGETING_MATCH",
        "SPLIT" => "SPLIT",
        "DISABLED" => "DISABLED",
        _ => "UNKNOWN",
    }
}

/// One successful evaluation as OFREP writes it.
#[derive(Serialize)]
struct Success<'a> {
    key: &'a str,
    value: &'a Value,
    variant: &'a str,
    reason: &'static str,
    metadata: Metadata<'a>,
}

/// The flagd protocol's metadata, and readyd's own reason when OFREP has no
/// name for it.
#[derive(Serialize)]
struct Metadata<'a> {
    flag_version: i64,
    provider: &'static str,
    #[serde(rename = "readydReason", skip_serializing_if = "Option::is_none")]
    readyd_reason: Option<&'a str>,
}

impl<'a> Success<'a> {
    fn of(key: &'a str, resolved: ResolvedRef<'a>) -> Self {
        let reason = reason(resolved.reason);
        Success {
            key,
            value: resolved.value,
            variant: resolved.variant,
            reason,
            metadata: Metadata {
                flag_version: resolved.flag_version,
                provider: "readyd",
                readyd_reason: (reason != resolved.reason).then_some(resolved.reason),
            },
        }
    }
}

/// A bulk answer's body.
#[derive(Serialize)]
struct Bulk<'a> {
    flags: Vec<Success<'a>>,
    #[serde(rename = "eventStreams")]
    event_streams: Value,
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub fn evaluate(flagd: &FlagdCore, audience: Audience, key: &str, body: &[u8]) -> Response {
    let context = match context(body) {
        Ok(context) => context,
        Err((code, details)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "key": key, "errorCode": code, "errorDetails": details }),
            );
        }
    };
    // Written while the snapshot is held: the value and variant are not
    // copied out of it.
    let answered = flagd.resolve_context_with(key, &context, Wanted::Any, audience, |resolved| {
        typed_json_response(StatusCode::OK, &Success::of(key, resolved))
    });
    match answered {
        Ok(Some(response)) => response,
        Ok(None) => json_response(
            StatusCode::NOT_FOUND,
            &json!({
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": format!("flag {:?} does not exist", crate::echo::truncate(key)),
            }),
        ),
        Err(status) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "key": key, "errorCode": "GENERAL", "errorDetails": status.message() }),
        ),
    }
}

/// A bulk request.
pub struct BulkRequest<'a> {
    /// Who asks.
    pub audience: Audience,
    /// The request's `If-None-Match`, if it has one.
    pub if_none_match: Option<&'a str>,
    /// The request's body.
    pub body: &'a [u8],
    /// The ticket window now.
    pub window: u64,
}

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an `ETag`; `304`
/// when `If-None-Match` names it. The answer names the event stream, with
/// a ticket of the request's window, made by `ticket` only when a body is
/// sent (see [`super::events`]); the `ETag` covers the window too, so a
/// page whose ticket has expired gets a new one. A `304` is answered from
/// `cache` without evaluating when it can be (see [`super::bulk_cache`]).
pub fn evaluate_all(
    flagd: &FlagdCore,
    cache: &BulkCache,
    request: &BulkRequest<'_>,
    ticket: impl FnOnce() -> String,
) -> Response {
    let wanted = request.if_none_match;
    let (version, stale, reads_time) = flagd.inputs();
    let now = Inputs {
        version,
        stale,
        window: request.window,
    };
    if let Some(wanted) = wanted
        && !reads_time
        && let Some(etag) = cache.answer(
            request.audience,
            request.body,
            now,
            |etag| etag.to_str().is_ok_and(|etag| matches(wanted, etag)),
            |tally, usage| flagd.count(tally, usage),
        )
    {
        return not_modified(etag);
    }
    let context = match context(request.body) {
        Ok(context) => context,
        Err((code, details)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "errorCode": code, "errorDetails": details }),
            );
        }
    };
    let every = flagd.resolve_every(&context, request.audience);
    let etag = etag(&every.answers, request.window);
    let Ok(etag) = HeaderValue::from_str(&etag) else {
        // Hex digits between quotes always make a header value.
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "errorCode": "GENERAL", "errorDetails": "the ETag could not be made" }),
        );
    };
    if !every.reads_time {
        let inputs = Inputs {
            version: every.version,
            stale: every.stale,
            window: request.window,
        };
        cache.put(
            request.audience,
            request.body,
            inputs,
            etag.clone(),
            every.tally,
            flagd.repeatable(every.usage),
        );
    }
    if wanted.is_some_and(|wanted| etag.to_str().is_ok_and(|etag| matches(wanted, etag))) {
        return not_modified(etag);
    }
    // The body only when it is sent.
    let body = Bulk {
        flags: every
            .answers
            .iter()
            .map(|(key, resolved)| Success::of(key, resolved.view()))
            .collect(),
        event_streams: super::events::descriptor(&ticket()),
    };
    let mut response = typed_json_response(StatusCode::OK, &body);
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// Whether an `If-None-Match` value names `etag` (or is `*`); a weak tag
/// (`W/"…"`) matches its strong twin, as the weak comparison RFC 9110
/// prescribes for `If-None-Match` does.
fn matches(wanted: &str, etag: &str) -> bool {
    // The one tag a polling client sends, compared at once.
    wanted == etag
        || wanted.split(',').any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        })
}

/// A `304` naming `etag`.
fn not_modified(etag: HeaderValue) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// The entity tag of a bulk answer: a hash of what it says (each flag's
/// key, version, variant and reason determine its answer: a value is its
/// flag version's variant), and of the ticket window it was given in.
fn etag(answers: &[(String, Resolved)], window: u64) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    for (key, resolved) in answers {
        key.hash(&mut hasher);
        resolved.flag_version.hash(&mut hasher);
        resolved.variant.hash(&mut hasher);
        resolved.reason.hash(&mut hasher);
        resolved.disabled.hash(&mut hasher);
    }
    window.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contexts_read_as_openfeature_ones_and_bad_ones_are_named() {
        let ctx =
            context(br#"{"context": {"targetingKey": "u1", "country": "DE", "roles": ["beta"]}}"#)
                .expect("a context");
        assert_eq!(ctx.user_id.as_deref(), Some("u1"));
        assert_eq!(ctx.roles, vec!["beta".to_owned()]);
        assert_eq!(ctx.attributes["country"], json!("DE"));
        assert!(context(b"").expect("empty").user_id.is_none());
        assert!(context(b"{}").expect("no context").user_id.is_none());
        assert_eq!(context(b"{nope").expect_err("parse").0, "PARSE_ERROR");
        assert_eq!(
            context(br#"{"context": [1]}"#)
                .expect_err("not an object")
                .0,
            "INVALID_CONTEXT"
        );
        assert_eq!(
            context(br#"{"context": {"targetingKey": 5}}"#)
                .expect_err("bad key")
                .0,
            "INVALID_CONTEXT"
        );
    }

    /// The context as it was read before it was read from the bytes: the
    /// whole body into a `serde_json::Value`, then its `context`.
    fn context_read_whole(body: &[u8]) -> Result<crate::flags::EvaluationContext, Refusal> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(crate::flags::EvaluationContext::default());
        }
        let request: Value = serde_json::from_slice(body)
            .map_err(|err| ("PARSE_ERROR", format!("the body is not JSON: {err}")))?;
        let context = match request {
            Value::Object(mut request) => request.remove("context"),
            _ => None,
        };
        match context {
            None | Some(Value::Null) => Ok(crate::flags::EvaluationContext::default()),
            Some(Value::Object(context)) => crate::api::flagd::context_of_json(context)
                .map_err(|status| ("INVALID_CONTEXT", status.message().to_owned())),
            Some(_) => Err((
                "INVALID_CONTEXT",
                "context must be a JSON object".to_owned(),
            )),
        }
    }

    /// JSON text, with names sent twice, escapes, and numbers of every kind.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| serde_json::Value::from(n).to_string()),
            Just("-0".to_owned()),
            Just("1e400".to_owned()),
            Just("1.5e3".to_owned()),
            "[a-z\\\\\"\n é]{0,5}".prop_map(|text| Value::from(text).to_string()),
            Just(r#""\u0075\u0031""#.to_owned()),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            let name = prop_oneof![
                Just(r#""targetingKey""#),
                Just(r#""role""#),
                Just(r#""roles""#),
                Just(r#""context""#),
                Just(r#""a""#),
                Just(r#""\u0061""#),
                Just(r#""b""#),
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((name, inner), 0..5).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(name, value)| format!("{name}: {value}"))
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                }),
            ]
        })
    }

    /// A request body: mostly `{"context": {…}}` with fields readyd reads
    /// (of right and wrong types), sometimes anything, cut short or with
    /// something after it.
    fn body() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            Just("targetingKey"),
            Just("role"),
            Just("roles"),
            Just("country"),
            Just("ro\\u006ce"),
            Just("z"),
        ];
        let value = prop_oneof![
            json_text(),
            prop::collection::vec("[a-z]{0,3}", 0..3)
                .prop_map(|roles| Value::from(roles).to_string()),
        ];
        let context = prop::collection::vec((field, value), 0..6).prop_map(|fields| {
            let fields: Vec<String> = fields
                .into_iter()
                .map(|(name, value)| format!("\"{name}\": {value}"))
                .collect();
            format!("{{{}}}", fields.join(", "))
        });
        let request = (context, json_text(), any::<bool>())
            .prop_map(|(context, other, twice)| {
                if twice {
                    format!(r#"{{"context": {other}, "x": {other}, "context": {context}}}"#)
                } else {
                    format!(r#"{{"x": [{other}], "context": {context}}}"#)
                }
            })
            .boxed();
        prop_oneof![
            4 => request.clone(),
            1 => json_text(),
            1 => (request.clone(), any::<prop::sample::Index>())
                .prop_map(|(body, cut)| {
                    body.get(..cut.index(body.len() + 1)).unwrap_or(&body).to_owned()
                }),
            1 => (request, "[ ,}\\]a-z0-9]{1,3}").prop_map(|(body, tail)| body + &tail),
        ]
        .prop_filter("cut on a character boundary", |body| !body.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Reading the context straight from the bytes answers exactly as
        /// reading the body whole did: the same context, or the same error
        /// code and message.
        #[test]
        fn contexts_read_from_the_bytes_as_from_the_whole_body(body in body()) {
            prop_assert_eq!(context(body.as_bytes()), context_read_whole(body.as_bytes()));
        }
    }

    #[test]
    fn deep_bodies_are_refused_as_before() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for body in [
            format!(r#"{{"x": {deep}, "context": {{}}}}"#),
            format!(r#"{{"context": {{"a": {deep}}}}}"#),
            format!(r#"{{"context": {deep}}}"#),
            deep.clone(),
            r#"{"x": 1e400, "context": {}}"#.to_owned(),
        ] {
            let read = context(body.as_bytes());
            assert_eq!(read, context_read_whole(body.as_bytes()));
            assert_eq!(read.expect_err("refused").0, "PARSE_ERROR");
        }
    }

    #[test]
    fn the_etag_follows_the_answer() {
        let answer = |version: i64, variant: &str, reason: &'static str| {
            vec![(
                "a".to_owned(),
                Resolved {
                    value: json!(variant == "on"),
                    variant: variant.to_owned(),
                    reason,
                    disabled: false,
                    flag_version: version,
                },
            )]
        };
        let a = etag(&answer(1, "on", "STATIC"), 1);
        assert_eq!(a, etag(&answer(1, "on", "STATIC"), 1));
        assert_ne!(a, etag(&answer(1, "off", "STATIC"), 1), "another variant");
        assert_ne!(a, etag(&answer(2, "on", "STATIC"), 1), "another version");
        assert_ne!(a, etag(&answer(1, "on", "STALE"), 1), "another reason");
        assert_ne!(
            a,
            etag(&answer(1, "on", "STATIC"), 2),
            "a new ticket window"
        );
        assert_ne!(a, etag(&[], 1));
        assert!(a.starts_with('"') && a.ends_with('"'));
    }

    /// An `If-None-Match` list of up to four tags, each the ETag, another
    /// tag or `*`, weak or strong, with spaces around.
    fn if_none_match() -> impl Strategy<Value = String> {
        let tag = (
            prop_oneof![
                Just("\"abc\""),
                Just("\"abd\""),
                Just("\"\""),
                Just("*"),
                Just("abc")
            ],
            any::<bool>(),
            "[ \t]{0,2}",
            "[ \t]{0,2}",
        )
            .prop_map(|(tag, weak, before, after)| {
                format!("{before}{}{tag}{after}", if weak { "W/" } else { "" })
            });
        proptest::collection::vec(tag, 0..4).prop_map(|tags| tags.join(","))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// RFC 9110's weak comparison over the list: a tag matches when it
        /// is `*` or, without its `W/`, the ETag.
        #[test]
        fn if_none_match_is_compared_weakly_over_the_list(wanted in if_none_match()) {
            let etag = "\"abc\"";
            let expected = wanted.split(',').any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag)
            });
            prop_assert_eq!(matches(&wanted, etag), expected);
        }
    }

    #[test]
    fn reasons_are_the_ones_ofrep_allows() {
        for (readyd, ofrep) in [
            ("STATIC", "STATIC"),
            ("TARGETING_MATCH", "TARGETING_MATCH"),
            ("SPLIT", "SPLIT"),
            ("DISABLED", "DISABLED"),
            ("DEFAULT", "UNKNOWN"),
            ("STALE", "UNKNOWN"),
        ] {
            assert_eq!(reason(readyd), ofrep, "{readyd}");
        }
    }
}
