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
use serde_json::{Value, json};

use super::json_response;
use crate::api::auth::Audience;
use crate::api::convert::to_pb_struct;
use crate::api::flagd::{FlagdCore, Resolved, Wanted, context_of};

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
/// body or no `context` is an empty context).
fn context(body: &[u8]) -> Result<crate::flags::EvaluationContext, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(crate::flags::EvaluationContext::default());
    }
    let request: Value = serde_json::from_slice(body)
        .map_err(|err| ("PARSE_ERROR", format!("the body is not JSON: {err}")))?;
    let context = match request.get("context") {
        None | Some(Value::Null) => return Ok(crate::flags::EvaluationContext::default()),
        Some(Value::Object(context)) => context,
        Some(_) => {
            return Err((
                "INVALID_CONTEXT",
                "context must be a JSON object".to_owned(),
            ));
        }
    };
    context_of(Some(to_pb_struct(context)))
        .map_err(|status| ("INVALID_CONTEXT", status.message().to_owned()))
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
fn success(key: &str, resolved: &Resolved) -> Value {
    // The flagd protocol's metadata, written directly.
    let mut metadata = json!({ "flag_version": resolved.flag_version, "provider": "readyd" });
    let reason = reason(resolved.reason);
    if reason != resolved.reason {
        metadata["readydReason"] = json!(resolved.reason);
    }
    json!({
        "key": key,
        "value": resolved.value,
        "variant": resolved.variant,
        "reason": reason,
        "metadata": metadata,
    })
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
    match flagd.resolve_context(key, &context, Wanted::Any, audience) {
        Ok(Some(resolved)) => json_response(StatusCode::OK, &success(key, &resolved)),
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

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an `ETag`; `304`
/// when `If-None-Match` names it. The answer names the event stream, with
/// a ticket of window `window` (see [`super::events`]); the `ETag` covers
/// the window too, so a page whose ticket has expired gets a new one.
pub fn evaluate_all(
    flagd: &FlagdCore,
    audience: Audience,
    headers: &HeaderMap,
    body: &[u8],
    (ticket, window): (&str, u64),
) -> Response {
    let context = match context(body) {
        Ok(context) => context,
        Err((code, details)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "errorCode": code, "errorDetails": details }),
            );
        }
    };
    let (answers, _) = flagd.resolve_all_context(&context, audience);
    let etag = etag(&answers, window);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|wanted| {
            wanted
                .split(',')
                .map(|tag| tag.trim().trim_start_matches("W/"))
                .any(|tag| tag == etag || tag == "*")
        });
    let etag_header = HeaderValue::from_str(&etag)
        .ok()
        .map(|value| (header::ETAG, value));
    if matches {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some((name, value)) = etag_header {
            response.headers_mut().insert(name, value);
        }
        return response;
    }
    // The body only when it is sent.
    let flags: Vec<Value> = answers
        .iter()
        .map(|(key, resolved)| success(key, resolved))
        .collect();
    let body = json!({ "flags": flags, "eventStreams": super::events::descriptor(ticket) });
    let mut response = json_response(StatusCode::OK, &body);
    if let Some((name, value)) = etag_header {
        response.headers_mut().insert(name, value);
    }
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
