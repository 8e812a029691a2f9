//! The flagd evaluation protocol (v1 and v2) against a real readyd: the
//! same answers as readyd's own EvaluateFlag (rollout buckets included),
//! the types, the errors flagd's clients expect, v2's unset values for a
//! disabled flag, and EventStream's events.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use readyd::api::pb::flagd::evaluation_v1 as v1;
use readyd::api::pb::flagd::evaluation_v2 as v2;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::{TestDb, TestServer, next, serve_args};
use tonic::Code;
use tonic::transport::Channel;

type V1 = v1::service_client::ServiceClient<Channel>;
type V2 = v2::service_client::ServiceClient<Channel>;

fn string(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

/// An OpenFeature context: targeting key, roles, and one extra attribute.
fn context(user: Option<&str>, roles: &[&str]) -> Option<Struct> {
    let mut fields = BTreeMap::new();
    if let Some(user) = user {
        fields.insert("targetingKey".to_owned(), string(user));
    }
    if !roles.is_empty() {
        fields.insert(
            "roles".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: roles.iter().map(|role| string(role)).collect(),
                })),
            },
        );
    }
    fields.insert("plan".to_owned(), string("gold"));
    Some(Struct { fields })
}

async fn seeded() -> (TestDb, TestServer) {
    let db = TestDb::new().await;
    support::insert_typed_flags(&db).await;
    let server = TestServer::start(serve_args(&db.url)).await;
    (db, server)
}

fn metadata_version(metadata: Option<&Struct>) -> f64 {
    match metadata
        .and_then(|m| m.fields.get("flag_version"))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::NumberValue(version)) => *version,
        other => panic!("no flag_version in metadata: {other:?}"),
    }
}

#[tokio::test]
async fn every_type_resolves_through_both_versions() {
    let (_db, server) = seeded().await;
    let channel = server.channel().await;
    let mut old = V1::new(channel.clone());
    let mut new = V2::new(channel.clone());

    let vip = old
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "beta".into(),
            context: context(Some("vip"), &[]),
        })
        .await
        .expect("v1 bool")
        .into_inner();
    assert!(vip.value);
    assert_eq!(
        (vip.variant.as_str(), vip.reason.as_str()),
        ("on", "TARGETING_MATCH")
    );
    assert!(metadata_version(vip.metadata.as_ref()) > 0.0);
    let staff = new
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "beta".into(),
            context: context(Some("someone"), &["viewer", "staff"]),
        })
        .await
        .expect("v2 bool")
        .into_inner();
    assert_eq!(staff.value, Some(true));
    assert_eq!(staff.reason, "TARGETING_MATCH");
    // A single role works too.
    let mut single_role = context(Some("someone-else"), &[]).unwrap_or_default();
    single_role.fields.insert("role".into(), string("staff"));
    let by_role = new
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "beta".into(),
            context: Some(single_role),
        })
        .await
        .expect("v2 bool, role")
        .into_inner();
    assert_eq!(by_role.reason, "TARGETING_MATCH");
    // Anonymous: no bucket, so the off value by default.
    let anonymous = new
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "beta".into(),
            context: None,
        })
        .await
        .expect("anonymous")
        .into_inner();
    assert_eq!(anonymous.value, Some(false));
    assert_eq!(anonymous.variant.as_deref(), Some("off"));

    let banner = new
        .resolve_string(v2::ResolveStringRequest {
            flag_key: "banner".into(),
            context: context(Some("u1"), &[]),
        })
        .await
        .expect("string")
        .into_inner();
    assert_eq!(banner.value.as_deref(), Some("summer"));
    assert_eq!(banner.reason, "STATIC");

    let limits = old
        .resolve_object(v1::ResolveObjectRequest {
            flag_key: "limits".into(),
            context: context(Some("u1"), &[]),
        })
        .await
        .expect("object")
        .into_inner();
    let fields = limits.value.expect("object value").fields;
    assert_eq!(fields["max"].kind, Some(Kind::NumberValue(5.0)));
    assert_eq!(fields["tier"].kind, Some(Kind::StringValue("gold".into())));

    let retries = new
        .resolve_int(v2::ResolveIntRequest {
            flag_key: "retries".into(),
            context: None,
        })
        .await
        .expect("int")
        .into_inner();
    assert_eq!(retries.value, Some(3));
    let ratio = old
        .resolve_float(v1::ResolveFloatRequest {
            flag_key: "ratio".into(),
            context: None,
        })
        .await
        .expect("float")
        .into_inner();
    assert_eq!(ratio.value, 0.25);
    // A whole number is a float too.
    let retries_as_float = new
        .resolve_float(v2::ResolveFloatRequest {
            flag_key: "retries".into(),
            context: None,
        })
        .await
        .expect("float of a whole number")
        .into_inner();
    assert_eq!(retries_as_float.value, Some(3.0));
    server.stop().await;
}

#[tokio::test]
async fn errors_are_the_codes_flagd_clients_expect() {
    let (_db, server) = seeded().await;
    let channel = server.channel().await;
    let mut old = V1::new(channel.clone());
    let mut new = V2::new(channel);
    let missing = new
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "missing".into(),
            context: None,
        })
        .await
        .expect_err("unknown flag");
    assert_eq!(missing.code(), Code::NotFound);
    let mismatch = old
        .resolve_string(v1::ResolveStringRequest {
            flag_key: "beta".into(),
            context: None,
        })
        .await
        .expect_err("bool flag as string");
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert!(mismatch.message().contains("boolean"), "{mismatch:?}");
    let not_whole = new
        .resolve_int(v2::ResolveIntRequest {
            flag_key: "ratio".into(),
            context: None,
        })
        .await
        .expect_err("0.25 is no int");
    assert_eq!(not_whole.code(), Code::InvalidArgument);
    let mut bad = Struct::default();
    bad.fields.insert(
        "targetingKey".into(),
        Value {
            kind: Some(Kind::NumberValue(7.0)),
        },
    );
    let bad_context = new
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "beta".into(),
            context: Some(bad),
        })
        .await
        .expect_err("numeric targeting key");
    assert_eq!(bad_context.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_disabled_flag_is_off_in_v1_and_unset_in_v2() {
    let (_db, server) = seeded().await;
    let channel = server.channel().await;
    let old = V1::new(channel.clone())
        .resolve_boolean(v1::ResolveBooleanRequest {
            flag_key: "off_switch".into(),
            context: context(Some("u1"), &[]),
        })
        .await
        .expect("v1")
        .into_inner();
    assert_eq!(
        (old.value, old.variant.as_str(), old.reason.as_str()),
        (false, "off", "DISABLED")
    );
    let new = V2::new(channel.clone())
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "off_switch".into(),
            context: context(Some("u1"), &[]),
        })
        .await
        .expect("v2")
        .into_inner();
    assert_eq!(
        (new.value, new.variant, new.reason.as_str()),
        (None, None, "DISABLED")
    );
    let all = V2::new(channel)
        .resolve_all(v2::ResolveAllRequest {
            context: context(Some("u1"), &[]),
        })
        .await
        .expect("all")
        .into_inner();
    let off = &all.flags["off_switch"];
    assert_eq!(
        (off.value.clone(), off.variant.clone(), off.reason.as_str()),
        (None, None, "DISABLED")
    );
    server.stop().await;
}

#[tokio::test]
async fn resolve_all_answers_every_flag_in_both_versions() {
    let (db, server) = seeded().await;
    let channel = server.channel().await;
    let old = V1::new(channel.clone())
        .resolve_all(v1::ResolveAllRequest {
            context: context(Some("vip"), &[]),
        })
        .await
        .expect("v1 all")
        .into_inner();
    let new = V2::new(channel)
        .resolve_all(v2::ResolveAllRequest {
            context: context(Some("vip"), &[]),
        })
        .await
        .expect("v2 all")
        .into_inner();
    let count = db.count("feature_flags").await as usize;
    assert_eq!(old.flags.len(), count);
    assert_eq!(new.flags.len(), count);
    assert_eq!(
        old.flags["beta"].value,
        Some(v1::any_flag::Value::BoolValue(true))
    );
    assert_eq!(old.flags["beta"].reason, "TARGETING_MATCH");
    assert_eq!(
        new.flags["banner"].value,
        Some(v2::any_flag::Value::StringValue("summer".into()))
    );
    assert_eq!(
        new.flags["retries"].value,
        Some(v2::any_flag::Value::DoubleValue(3.0))
    );
    server.stop().await;
}

// flagd answers equal readyd's own EvaluateFlag for random users and roles:
// the same variant, reason and value, so rollout buckets agree.
#[test]
fn flagd_answers_equal_evaluate_flag() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (db, server, channel) = runtime.block_on(async {
        let (db, server) = seeded().await;
        let channel = server.channel().await;
        (db, server, channel)
    });
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let result = runner.run(
        &(
            prop::collection::vec("[a-z0-9@._-]{0,24}", 1..12),
            prop::collection::vec(prop::sample::select(vec!["staff", "viewer", "admin"]), 0..3),
        ),
        |(users, roles)| {
            runtime.block_on(async {
                let mut own = FlagServiceClient::new(channel.clone());
                let mut flagd = V2::new(channel.clone());
                for user in &users {
                    let user_id = (!user.is_empty()).then_some(user.as_str());
                    let ours = own
                        .evaluate_flag(pb::EvaluateFlagRequest {
                            explain: false,
                            key: "beta".into(),
                            context: Some(pb::EvaluationContext {
                                user_id: user.clone(),
                                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                                attributes: None,
                            }),
                        })
                        .await
                        .map_err(|err| TestCaseError::fail(err.to_string()))?
                        .into_inner();
                    let theirs = flagd
                        .resolve_boolean(v2::ResolveBooleanRequest {
                            flag_key: "beta".into(),
                            context: context(user_id, &roles),
                        })
                        .await
                        .map_err(|err| TestCaseError::fail(err.to_string()))?
                        .into_inner();
                    prop_assert_eq!(theirs.variant.as_deref(), Some(ours.variant.as_str()));
                    let reason = ours
                        .reason()
                        .as_str_name()
                        .trim_start_matches("EVALUATION_REASON_");
                    prop_assert_eq!(theirs.reason.as_str(), reason);
                    let value =
                        matches!(ours.value.and_then(|v| v.kind), Some(Kind::BoolValue(true)));
                    prop_assert_eq!(theirs.value, Some(value));
                }
                Ok(())
            })
        },
    );
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}

async fn event(stream: &mut tonic::Streaming<v2::EventStreamResponse>) -> (String, Option<Struct>) {
    let message = next(stream).await.expect("an event");
    (message.r#type, message.data)
}

/// The `{key: type}` pairs of a configuration_change.
fn changes(data: Option<Struct>) -> BTreeMap<String, String> {
    let Some(Kind::StructValue(flags)) = data
        .and_then(|d| d.fields.get("flags").cloned())
        .and_then(|f| f.kind)
    else {
        panic!("configuration_change without flags");
    };
    flags
        .fields
        .into_iter()
        .map(|(key, detail)| {
            let kind = match detail.kind {
                Some(Kind::StructValue(detail)) => {
                    match detail.fields.get("type").and_then(|t| t.kind.clone()) {
                        Some(Kind::StringValue(kind)) => kind,
                        other => panic!("no type: {other:?}"),
                    }
                }
                other => panic!("not an object: {other:?}"),
            };
            (key, kind)
        })
        .collect()
}

#[tokio::test]
async fn event_stream_announces_ready_changes_and_shutdown() {
    let (db, mut server) = seeded().await;
    let mut stream = V2::new(server.channel().await)
        .event_stream(v2::EventStreamRequest {})
        .await
        .expect("events")
        .into_inner();
    assert_eq!(event(&mut stream).await.0, "provider_ready");

    sqlx::query("INSERT INTO feature_flags (key, enabled) VALUES ('fresh', true)")
        .execute(&db.pool)
        .await
        .expect("insert");
    let (kind, data) = event(&mut stream).await;
    assert_eq!(kind, "configuration_change");
    assert_eq!(
        changes(data),
        BTreeMap::from([("fresh".to_owned(), "write".to_owned())])
    );

    sqlx::query("UPDATE feature_flags SET rollout_percentage = 10 WHERE key = 'beta'")
        .execute(&db.pool)
        .await
        .expect("update");
    let (_, data) = event(&mut stream).await;
    assert_eq!(
        changes(data),
        BTreeMap::from([("beta".to_owned(), "update".to_owned())])
    );

    sqlx::query("DELETE FROM feature_flags WHERE key = 'banner'")
        .execute(&db.pool)
        .await
        .expect("delete");
    let (_, data) = event(&mut stream).await;
    assert_eq!(
        changes(data),
        BTreeMap::from([("banner".to_owned(), "delete".to_owned())])
    );

    // Config changes are not flag changes.
    sqlx::query("UPDATE app_config SET value = '42' WHERE key = 'max_upload_mb'")
        .execute(&db.pool)
        .await
        .expect("config");
    let quiet = tokio::time::timeout(Duration::from_millis(400), next(&mut stream)).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");

    server.begin_shutdown();
    assert_eq!(event(&mut stream).await.0, "provider_shutdown");
    assert!(next(&mut stream).await.is_none(), "the stream ends");
    server.stop().await;
}

#[tokio::test]
async fn the_flagd_port_serves_only_the_flagd_protocol() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.flagd_listen = "127.0.0.1:0".into();
    let server = TestServer::start(args).await;
    let flagd_addr = server.flagd_addr.expect("a flagd port");
    assert_ne!(flagd_addr, server.addr);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{flagd_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the flagd port");
    let all = V1::new(channel.clone())
        .resolve_all(v1::ResolveAllRequest { context: None })
        .await
        .expect("resolve all on the flagd port")
        .into_inner();
    assert_eq!(all.flags.len(), db.count("feature_flags").await as usize);
    let other = FlagServiceClient::new(channel)
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect_err("readyd's own API is not on the flagd port");
    assert_eq!(other.code(), Code::Unimplemented);
    server.stop().await;
}
