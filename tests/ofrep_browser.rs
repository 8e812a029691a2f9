//! OpenFeature's web SDK with its OFREP web provider, unmodified
//! (`@openfeature/ofrep-web-provider`, pinned in
//! `tests/interop/ofrep_web/package.json`), in a page a real headless
//! Chromium loads from another origin than readyd's: it must get readyd's
//! own EvaluateFlag answers with a client token (and nothing of a flag not
//! marked client-visible), and must see a flag change without a reload,
//! through the OFREP event stream. `tests/interop/ofrep_web/driver.py` runs
//! the browser through chromedriver (`support::browser`); Chromium and chromedriver must be
//! installed (`apt-get install chromium chromium-driver`).

mod support;

use std::path::Path;
use std::time::Instant;

use readyd::api::convert::{from_pb_value, to_pb_struct, to_pb_value};
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use serde_json::{Value, json};
use support::browser::{Driver, require_browser};
use support::interop::{root, setup};
use support::{TestDb, TestServer, admin, admin_serve_args};
use tonic::transport::Channel;

const CLIENT: &str = "client-token-for-the-browser-test";
const READER: &str = "read-token-for-the-browser-test";
/// The flag whose change the page must see.
const CHANGED: &str = "web_greeting";
/// A flag not marked client-visible: the page must not see it.
const HIDDEN: &str = "internal_kill_switch";

/// The page's evaluation context, as OpenFeature writes it.
fn page_context() -> Value {
    json!({"targetingKey": "user-42", "roles": ["beta"], "country": "DE"})
}

/// The same context as readyd's gRPC API takes it.
fn grpc_context() -> pb::EvaluationContext {
    let mut attributes = serde_json::Map::new();
    attributes.insert("country".into(), json!("DE"));
    pb::EvaluationContext {
        user_id: "user-42".into(),
        roles: vec!["beta".into()],
        attributes: Some(to_pb_struct(&attributes)),
    }
}

/// The flags the page evaluates, with the type and default it asks with.
fn page_flags() -> Value {
    json!([
        {"key": "web_checkout", "kind": "boolean", "default": false},
        {"key": CHANGED, "kind": "string", "default": "(default)"},
        {"key": "web_max_items", "kind": "number", "default": 0},
        {"key": "web_theme", "kind": "object", "default": {}},
        {"key": HIDDEN, "kind": "boolean", "default": false},
    ])
}

/// The client-visible flags (every one of the page's but HIDDEN), sorted.
fn visible_keys() -> Vec<String> {
    let mut keys: Vec<String> = page_flags()
        .as_array()
        .expect("flags")
        .iter()
        .map(|flag| flag["key"].as_str().expect("key").to_owned())
        .filter(|key| key != HIDDEN)
        .collect();
    keys.sort();
    keys
}

/// `CHANGED`: Germany and Austria get the `dach` variant (`greeting`),
/// everyone else `on`.
fn greeting(greeting: &str) -> pb::UpsertFlagRequest {
    let serve = |variant: &str| {
        Some(pb::Serve {
            serve: Some(pb::serve::Serve::Variant(variant.into())),
        })
    };
    pb::UpsertFlagRequest {
        key: CHANGED.into(),
        enabled: Some(true),
        value_type: pb::FlagValueType::String.into(),
        on_value: Some(to_pb_value(&json!("Hello"))),
        off_value: Some(to_pb_value(&json!("Goodbye"))),
        targeting: Some(pb::FlagTargeting {
            variants: vec![pb::FlagVariant {
                name: "dach".into(),
                value: Some(to_pb_value(&json!(greeting))),
            }],
            rules: vec![pb::TargetingRule {
                name: "german-speaking".into(),
                constraints: vec![pb::Constraint {
                    attribute: "country".into(),
                    operator: "in".into(),
                    values: vec!["DE".into(), "AT".into()],
                    ..Default::default()
                }],
                serve: serve("dach"),
                ..Default::default()
            }],
            default_serve: serve("on"),
            ..Default::default()
        }),
        client_visible: Some(true),
        ..Default::default()
    }
}

/// The test's flags: a bool for role `beta` only, the greeting, a number,
/// an object, and HIDDEN, which is not client-visible.
async fn upsert_flags(grpc: &mut FlagServiceClient<Channel>) {
    let plain =
        |key: &str, value_type: pb::FlagValueType, on: Value, off: Value| pb::UpsertFlagRequest {
            key: key.into(),
            enabled: Some(true),
            value_type: value_type.into(),
            on_value: Some(to_pb_value(&on)),
            off_value: Some(to_pb_value(&off)),
            client_visible: Some(true),
            ..Default::default()
        };
    let requests = [
        pb::UpsertFlagRequest {
            target_roles: vec!["beta".into()],
            rollout_percentage: Some(0),
            ..plain(
                "web_checkout",
                pb::FlagValueType::Bool,
                json!(true),
                json!(false),
            )
        },
        greeting("Hallo"),
        plain(
            "web_max_items",
            pb::FlagValueType::Number,
            json!(25),
            json!(10),
        ),
        plain(
            "web_theme",
            pb::FlagValueType::Object,
            json!({"accent": "#3366cc", "dense": false}),
            json!({"accent": "#777777", "dense": true}),
        ),
        pb::UpsertFlagRequest {
            client_visible: None,
            ..plain(HIDDEN, pb::FlagValueType::Bool, json!(true), json!(false))
        },
    ];
    for request in requests {
        let key = request.key.clone();
        grpc.upsert_flag(admin(request))
            .await
            .unwrap_or_else(|status| panic!("upsert {key}: {status:?}"));
    }
}

/// `value` with every number as f64, as JavaScript carries them.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What the page must show for `key`: readyd's EvaluateFlag answer for the
/// same context, its reason as OFREP names it.
async fn expected(grpc: &mut FlagServiceClient<Channel>, key: &str) -> Value {
    let answer = grpc
        .evaluate_flag(admin(pb::EvaluateFlagRequest {
            key: key.into(),
            context: Some(grpc_context()),
            explain: false,
        }))
        .await
        .unwrap_or_else(|status| panic!("EvaluateFlag {key}: {status:?}"))
        .into_inner();
    let value = answer
        .value
        .clone()
        .map(|value| from_pb_value(value).expect("value"))
        .unwrap_or(Value::Null);
    // OFREP knows these reasons; readyd's others read UNKNOWN there.
    let reason = match answer
        .reason()
        .as_str_name()
        .trim_start_matches("EVALUATION_REASON_")
    {
        reason @ ("STATIC" | "TARGETING_MATCH" | "SPLIT" | "DISABLED") => reason,
        _ => "UNKNOWN",
    };
    json!({
        "value": numbers_as_f64(&value),
        "variant": answer.variant,
        "reason": reason,
        "errorCode": null,
    })
}

/// The page's answers in `flags` (`{key: {value, variant, reason,
/// errorCode}}`) must be readyd's for every client-visible flag, and
/// FLAG_NOT_FOUND with the default for HIDDEN.
async fn check_answers(grpc: &mut FlagServiceClient<Channel>, flags: &Value, when: &str) {
    for key in visible_keys() {
        let mut seen = flags[&key].clone();
        seen["value"] = numbers_as_f64(&seen["value"]);
        assert_eq!(seen, expected(grpc, &key).await, "{key} {when}");
    }
    assert_eq!(
        flags[HIDDEN],
        json!({"value": false, "variant": null, "reason": "ERROR", "errorCode": "FLAG_NOT_FOUND"}),
        "{HIDDEN} is not client-visible ({when})"
    );
    // Though it exists, on for everyone.
    assert_eq!(expected(grpc, HIDDEN).await["value"], true);
}

/// The event stream the page opened: exactly one, on readyd, opened once
/// and never interrupted.
fn the_stream<'a>(state: &'a Value, readyd: &str) -> &'a Value {
    let streams = state["sse"].as_array().expect("sse");
    assert_eq!(streams.len(), 1, "one EventSource: {streams:?}");
    let stream = &streams[0];
    assert!(
        stream["url"]
            .as_str()
            .is_some_and(|url| url.starts_with(&format!("{readyd}/ofrep/v1/events?ticket="))),
        "{stream}"
    );
    assert_eq!(
        stream["opens"], 1,
        "opened once, never reconnected: {stream}"
    );
    assert_eq!(stream["errors"], 0, "never interrupted: {stream}");
    stream
}

#[tokio::test]
async fn the_ofrep_web_provider_in_chromium_evaluates_and_follows_changes_over_sse() {
    require_browser();
    setup().await;
    let db = TestDb::new().await;
    let mut args = admin_serve_args(&db.url);
    args.http_listen = "127.0.0.1:0".into();
    args.cors_origin = vec!["*".into()];
    args.read_token = Some(READER.into());
    args.client_token = vec![CLIENT.into()];
    let server = TestServer::start(args).await;
    let readyd = format!("http://{}", server.http_addr.expect("an HTTP address"));
    let mut grpc = FlagServiceClient::new(server.channel().await);
    upsert_flags(&mut grpc).await;

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts/ofrep-web.png");
    let mut driver = Driver::start(
        &root().join("tests/interop/ofrep_web/driver.py"),
        &json!({
        "readyd": readyd,
        "token": CLIENT,
        "context": page_context(),
        "flags": page_flags(),
        "watch": CHANGED,
        "vendor": root().join("target/interop/web/node_modules/@openfeature"),
        "screenshot": screenshot,
        "deadline": 120,
        }),
        false,
    );
    driver.next("started", 30).await;

    // Ready: readyd's answers for the client-visible flags, nothing of the
    // other one, and the event stream open.
    let ready = driver.next("ready", 90).await;
    check_answers(&mut grpc, &ready["initial"], "when ready").await;
    assert_eq!(
        ready["cachedKeys"],
        json!(visible_keys()),
        "the bulk answer holds the client-visible flags only"
    );
    the_stream(&ready, &readyd);
    assert_eq!(ready["initial"][CHANGED]["value"], "Hallo");

    // A change reaches the page by itself.
    let mut change = greeting("Servus");
    change.client_visible = None;
    grpc.upsert_flag(admin(change))
        .await
        .expect("change the flag");
    let changed_at = Instant::now();
    let changed = driver.next("changed", 10).await;
    let took = changed_at.elapsed();
    assert_eq!(
        changed["loadId"], ready["loadId"],
        "the same page, not a reload"
    );
    assert_eq!(changed["navigations"], json!(["navigate"]));
    let change = changed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|change| {
            change["flagsChanged"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|key| key == CHANGED))
        })
        .expect("the change event");
    assert_eq!(change["flags"][CHANGED]["value"], "Servus", "{change}");
    check_answers(&mut grpc, &change["flags"], "after the change").await;
    assert_eq!(changed["cachedKeys"], json!(visible_keys()));
    // Told by the event stream: a refetchEvaluation message before the
    // change, and a second bulk evaluation (the provider does not poll).
    let stream = the_stream(&changed, &readyd);
    let told_at = stream["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|message| {
            message["data"]
                .as_str()
                .and_then(|data| serde_json::from_str::<Value>(data).ok())
                .is_some_and(|data| data["type"] == "refetchEvaluation")
        })
        .unwrap_or_else(|| panic!("no refetchEvaluation on the stream: {stream}"))["at"]
        .as_f64()
        .expect("when");
    assert!(told_at <= change["at"].as_f64().expect("when"), "{changed}");
    assert!(
        changed["bulkEvaluations"]
            .as_u64()
            .is_some_and(|count| count >= 2),
        "{changed}"
    );

    // Nothing went wrong on the page or in the browser's console.
    let done = driver.next("done", 30).await;
    let state = &done["state"];
    assert_eq!(state["errors"], json!([]), "page errors");
    assert_eq!(state["warnings"], json!([]), "console warnings");
    assert_eq!(
        state["providerEvents"],
        json!([]),
        "provider errors or stale"
    );
    let severe: Vec<&Value> = done["browser_log"]
        .as_array()
        .expect("browser log")
        .iter()
        .filter(|entry| entry["level"] != "INFO" && entry["level"] != "DEBUG")
        .collect();
    assert!(severe.is_empty(), "the browser's console: {severe:?}");
    driver.wait().await;
    eprintln!(
        "the change reached the page {} ms after the write; screenshot: {}",
        took.as_millis(),
        screenshot.display()
    );
    server.stop().await;
}
