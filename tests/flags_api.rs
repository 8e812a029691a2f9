//! readyd.v1.FlagService end to end, over real gRPC on loopback and a real
//! PostgreSQL: the write/read round trip with read-your-writes,
//! `expected_version` preconditions, evaluation in DESIGN.md's priority
//! order (targeting, environments, rollout buckets, typed values), batch
//! evaluation, refusals of bad input that change nothing, the actor header,
//! and WatchFlags (snapshot, changes, key filter, `since_version`). A
//! property test checks that the server's answer for random flags and
//! contexts equals the pure engine's answer for the flag it reports.

mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use readyd::api::convert::{from_pb_value, from_timestamp, to_pb_value};
use readyd::api::pb::readyd::v1 as pb;
use readyd::flags::{CompiledFlag, EvaluationContext, Flag, ValueType, bucket};
use serde_json::{Value, json};
use support::{TestDb, TestServer, admin, admin_serve_args};
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use pb::flag_change::Change;
use pb::flag_evaluation_result::Outcome;
use pb::flag_service_client::FlagServiceClient;
use pb::watch_flags_response::Event as WatchEvent;
use pb::{EvaluationReason as Why, FlagValueType};

type Client = FlagServiceClient<Channel>;

/// A fresh database and a server with the admin token on it.
async fn start() -> (TestDb, TestServer, Client) {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let client = FlagServiceClient::new(server.channel().await);
    (db, server, client)
}

fn upsert_request(key: &str) -> pb::UpsertFlagRequest {
    pb::UpsertFlagRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn pb_json(value: Value) -> Option<prost_types::Value> {
    Some(to_pb_value(&value))
}

fn json_of(value: &Option<prost_types::Value>) -> Value {
    from_pb_value(value.clone().expect("a value")).expect("a JSON value")
}

async fn upsert(client: &mut Client, request: pb::UpsertFlagRequest) -> pb::UpsertFlagResponse {
    let key = request.key.clone();
    client
        .upsert_flag(admin(request))
        .await
        .unwrap_or_else(|status| panic!("upsert {key:?}: {status:?}"))
        .into_inner()
}

async fn get(client: &mut Client, key: &str) -> Result<pb::Flag, Status> {
    let response = client
        .get_flag(pb::GetFlagRequest { key: key.into() })
        .await?;
    Ok(response.into_inner().flag.expect("a flag"))
}

async fn list(client: &mut Client, prefix: &str) -> pb::ListFlagsResponse {
    client
        .list_flags(pb::ListFlagsRequest {
            prefix: prefix.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
}

async fn delete(
    client: &mut Client,
    key: &str,
    expected_version: Option<i64>,
) -> Result<i64, Status> {
    let response = client
        .delete_flag(admin(pb::DeleteFlagRequest {
            key: key.into(),
            expected_version,
        }))
        .await?;
    Ok(response.into_inner().version)
}

fn context(user: &str, roles: &[&str]) -> pb::EvaluationContext {
    pb::EvaluationContext {
        user_id: user.into(),
        roles: strings(roles),
        attributes: None,
    }
}

async fn evaluate(
    client: &mut Client,
    key: &str,
    user: &str,
    roles: &[&str],
) -> pb::EvaluateFlagResponse {
    client
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.into(),
            context: Some(context(user, roles)),
        })
        .await
        .unwrap_or_else(|status| panic!("evaluate {key:?}: {status:?}"))
        .into_inner()
}

/// Asserts variant, reason and value of an answer.
#[track_caller]
fn assert_answer(answer: &pb::EvaluateFlagResponse, variant: &str, reason: Why, value: Value) {
    assert_eq!(
        (
            answer.variant.as_str(),
            answer.reason(),
            json_of(&answer.value)
        ),
        (variant, reason, value),
        "{answer:?}"
    );
}

/// A protobuf flag as the domain's flag.
fn to_flag(flag: &pb::Flag) -> Flag {
    Flag {
        targeting: None,
        client_visible: flag.client_visible,
        permanent: flag.permanent,
        created_at: from_timestamp(flag.created_at.as_ref().expect("created_at")).expect("time"),
        key: flag.key.clone(),
        description: flag.description.clone(),
        enabled: flag.enabled,
        value_type: match flag.value_type() {
            FlagValueType::Bool => ValueType::Bool,
            FlagValueType::String => ValueType::String,
            FlagValueType::Number => ValueType::Number,
            FlagValueType::Object => ValueType::Object,
            FlagValueType::Unspecified => panic!("a stored flag has no value type: {flag:?}"),
        },
        on_value: json_of(&flag.on_value),
        off_value: json_of(&flag.off_value),
        environments: flag.environments.clone(),
        target_users: flag.target_users.clone(),
        target_roles: flag.target_roles.clone(),
        rollout_percentage: u8::try_from(flag.rollout_percentage).expect("rollout fits u8"),
        version: flag.version,
        updated_at: from_timestamp(flag.updated_at.as_ref().expect("updated_at")).expect("time"),
        updated_by: flag.updated_by.clone(),
    }
}

type Row = (
    String,
    String,
    bool,
    String,
    Value,
    Value,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    i32,
    i64,
    DateTime<Utc>,
    String,
    DateTime<Utc>,
);

/// The row of `key` in `feature_flags`, as a flag.
async fn stored(db: &TestDb, key: &str) -> Option<Flag> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT key, description, enabled, value_type, on_value, off_value, environments, \
         target_users, target_roles, rollout_percentage, version, updated_at, updated_by, \
         created_at FROM feature_flags WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .expect("read the row");
    row.map(|r| Flag {
        targeting: None,
        client_visible: false,
        permanent: false,
        created_at: r.13,
        key: r.0,
        description: r.1,
        enabled: r.2,
        value_type: r.3.parse().expect("value type"),
        on_value: r.4,
        off_value: r.5,
        environments: r.6,
        target_users: r.7,
        target_roles: r.8,
        rollout_percentage: u8::try_from(r.9).expect("rollout"),
        version: r.10,
        updated_at: r.11,
        updated_by: r.12,
    })
}

/// Everything a refused call could have changed: every flag row, the
/// largest flag version and the version sequence (which moves even for a
/// write that is rolled back).
async fn dump(db: &TestDb) -> (String, i64, i64) {
    let rows: String = sqlx::query_scalar(
        "SELECT coalesce(json_agg(f ORDER BY key)::text, '[]') FROM feature_flags f",
    )
    .fetch_one(&db.pool)
    .await
    .expect("dump flags");
    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM feature_flags")
        .fetch_one(&db.pool)
        .await
        .expect("max version");
    let sequence: i64 = sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("sequence");
    (rows, max, sequence)
}

#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, mention: &str) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mention),
        "the message should mention {mention:?}: {status:?}"
    );
}

async fn watch(
    client: &mut Client,
    keys: &[&str],
    since_version: Option<i64>,
) -> Streaming<pb::WatchFlagsResponse> {
    client
        .watch_flags(pb::WatchFlagsRequest {
            keys: strings(keys),
            since_version,
            with_freshness: false,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next message, which must be a whole snapshot in one part.
async fn next_snapshot(stream: &mut Streaming<pb::WatchFlagsResponse>) -> pb::FlagSnapshot {
    match support::next(stream).await.and_then(|m| m.event) {
        Some(WatchEvent::Snapshot(snapshot)) => {
            assert!(snapshot.first && snapshot.last, "one part: {snapshot:?}");
            snapshot
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// The next message, which must be a change.
async fn next_change(stream: &mut Streaming<pb::WatchFlagsResponse>) -> pb::FlagChange {
    match support::next(stream).await.and_then(|m| m.event) {
        Some(WatchEvent::Change(change)) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test]
async fn flags_are_created_read_back_at_once_replaced_listed_and_deleted() {
    let (db, server, mut client) = start().await;

    // Create with every default.
    let created = upsert(&mut client, upsert_request("exp.beta")).await;
    assert!(created.created);
    let flag = created.flag.expect("flag");
    assert!(flag.version > 0, "{flag:?}");
    assert_eq!(
        (
            flag.key.as_str(),
            flag.enabled,
            flag.value_type(),
            json_of(&flag.on_value),
            json_of(&flag.off_value),
            flag.rollout_percentage,
            flag.updated_by.as_str(),
        ),
        (
            "exp.beta",
            false,
            FlagValueType::Bool,
            json!(true),
            json!(false),
            100,
            "admin"
        )
    );
    assert!(
        flag.environments.is_empty()
            && flag.target_users.is_empty()
            && flag.target_roles.is_empty()
    );
    // Read-your-writes: no waiting between the write and the read.
    assert_eq!(get(&mut client, "exp.beta").await.expect("get"), flag);
    assert_eq!(stored(&db, "exp.beta").await, Some(to_flag(&flag)));

    // Replace.
    let replaced = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            description: "the beta experiment".into(),
            enabled: Some(true),
            environments: strings(&["test", "prod"]),
            target_users: strings(&["alice"]),
            target_roles: strings(&["staff"]),
            rollout_percentage: Some(30),
            ..upsert_request("exp.beta")
        },
    )
    .await;
    assert!(!replaced.created);
    let replaced = replaced.flag.expect("flag");
    assert!(
        replaced.version > flag.version,
        "{replaced:?} after {flag:?}"
    );
    assert_eq!(
        (
            replaced.description.as_str(),
            replaced.enabled,
            replaced.environments.clone(),
            replaced.target_users.clone(),
            replaced.target_roles.clone(),
            replaced.rollout_percentage,
        ),
        (
            "the beta experiment",
            true,
            strings(&["test", "prod"]),
            strings(&["alice"]),
            strings(&["staff"]),
            30
        )
    );
    assert_eq!(get(&mut client, "exp.beta").await.expect("get"), replaced);
    assert_eq!(stored(&db, "exp.beta").await, Some(to_flag(&replaced)));

    // List by prefix: only matching keys, sorted by key.
    let alpha = upsert(&mut client, upsert_request("exp.alpha"))
        .await
        .flag
        .expect("flag");
    upsert(&mut client, upsert_request("expx")).await;
    let listed = list(&mut client, "exp.").await;
    assert_eq!(listed.flags, vec![alpha.clone(), replaced.clone()]);
    assert!(listed.version >= alpha.version, "{}", listed.version);
    let all = list(&mut client, "").await;
    let keys: Vec<&str> = all.flags.iter().map(|f| f.key.as_str()).collect();
    let mut table_keys: Vec<String> = sqlx::query_scalar("SELECT key FROM feature_flags")
        .fetch_all(&db.pool)
        .await
        .expect("keys");
    table_keys.sort();
    assert_eq!(keys, table_keys);
    assert_eq!(keys.len(), 8, "five seeds and three new flags: {keys:?}");

    // Delete.
    let deleted = delete(&mut client, "exp.beta", None).await.expect("delete");
    assert!(deleted > alpha.version, "{deleted}");
    assert_refused(
        get(&mut client, "exp.beta").await,
        Code::NotFound,
        "exp.beta",
    );
    assert_eq!(stored(&db, "exp.beta").await, None);
    assert_eq!(list(&mut client, "exp.").await.flags, vec![alpha]);
    assert!(list(&mut client, "").await.version >= deleted);
    server.stop().await;
}

#[tokio::test]
async fn expected_version_guards_upserts_and_deletes() {
    let (db, server, mut client) = start().await;

    // 0 means "must not exist yet": creates a new key.
    let first = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            expected_version: Some(0),
            ..upsert_request("cas")
        },
    )
    .await;
    assert!(first.created);
    let v1 = first.flag.expect("flag").version;

    // The current version: succeeds.
    let second = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            expected_version: Some(v1),
            ..upsert_request("cas")
        },
    )
    .await;
    assert!(!second.created);
    let second = second.flag.expect("flag");
    assert!(second.version > v1);
    let before = dump(&db).await;

    // Stale, or 0 for an existing flag: ABORTED, nothing changed.
    for expected in [v1, 0, second.version + 1] {
        let refused = client
            .upsert_flag(admin(pb::UpsertFlagRequest {
                rollout_percentage: Some(5),
                expected_version: Some(expected),
                ..upsert_request("cas")
            }))
            .await;
        assert_refused(refused, Code::Aborted, "cas");
        assert_refused(
            delete(&mut client, "cas", Some(expected)).await,
            Code::Aborted,
            "cas",
        );
        assert_eq!(
            dump(&db).await,
            before,
            "expected_version {expected} changed something"
        );
    }
    assert_eq!(get(&mut client, "cas").await.expect("get"), second);
    assert_eq!(stored(&db, "cas").await, Some(to_flag(&second)));

    // The current version deletes; then the key is gone.
    let deleted = delete(&mut client, "cas", Some(second.version))
        .await
        .expect("delete");
    assert!(deleted > second.version);
    assert_eq!(stored(&db, "cas").await, None);
    assert_refused(
        delete(&mut client, "cas", Some(deleted)).await,
        Code::NotFound,
        "cas",
    );
    assert_refused(get(&mut client, "cas").await, Code::NotFound, "cas");
    server.stop().await;
}

#[tokio::test]
async fn evaluation_follows_the_priority_order_of_the_design() {
    let (_db, server, mut client) = start().await;
    let targeted = pb::UpsertFlagRequest {
        enabled: Some(true),
        environments: strings(&["test", "prod"]),
        target_users: strings(&["alice"]),
        target_roles: strings(&["beta"]),
        rollout_percentage: Some(50),
        ..upsert_request("checkout")
    };
    let version = upsert(&mut client, targeted.clone())
        .await
        .flag
        .expect("flag")
        .version;

    let alice = evaluate(&mut client, "checkout", "alice", &[]).await;
    assert_answer(&alice, "on", Why::TargetingMatch, json!(true));
    assert_eq!(
        (alice.key.as_str(), alice.flag_version),
        ("checkout", version)
    );
    let tester = evaluate(
        &mut client,
        "checkout",
        "zz-not-targeted",
        &["guest", "beta"],
    )
    .await;
    assert_answer(&tester, "on", Why::TargetingMatch, json!(true));

    // Partial rollout: on exactly for the users whose bucket is within 50.
    let mut on = 0;
    for i in 0..50 {
        let user = format!("user-{i}");
        let answer = evaluate(&mut client, "checkout", &user, &["guest"]).await;
        let expected_on = bucket("checkout", &user) <= 50;
        let (variant, value) = if expected_on {
            ("on", true)
        } else {
            ("off", false)
        };
        assert_answer(&answer, variant, Why::Split, json!(value));
        on += usize::from(expected_on);
    }
    assert!((5..=45).contains(&on), "{on} of 50 users on at 50 %");
    // Anonymous (empty user id): off, DEFAULT.
    assert_answer(
        &evaluate(&mut client, "checkout", "", &[]).await,
        "off",
        Why::Default,
        json!(false),
    );

    // Not enabled in this instance's environment ("test"): off for everyone.
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            environments: strings(&["prod", "staging"]),
            ..targeted.clone()
        },
    )
    .await;
    assert_answer(
        &evaluate(&mut client, "checkout", "alice", &["beta"]).await,
        "off",
        Why::Disabled,
        json!(false),
    );
    // Disabled: off for everyone, even the targeted user.
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(false),
            ..targeted.clone()
        },
    )
    .await;
    assert_answer(
        &evaluate(&mut client, "checkout", "alice", &["beta"]).await,
        "off",
        Why::Disabled,
        json!(false),
    );

    // Full rollout: STATIC without targeting, DEFAULT with it.
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("everyone")
        },
    )
    .await;
    assert_answer(
        &evaluate(&mut client, "everyone", "", &[]).await,
        "on",
        Why::Static,
        json!(true),
    );
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            rollout_percentage: Some(100),
            ..targeted.clone()
        },
    )
    .await;
    assert_answer(
        &evaluate(&mut client, "checkout", "bob", &[]).await,
        "on",
        Why::Default,
        json!(true),
    );
    // 0 %: off, DEFAULT, but targeting still wins.
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            rollout_percentage: Some(0),
            ..targeted.clone()
        },
    )
    .await;
    assert_answer(
        &evaluate(&mut client, "checkout", "bob", &[]).await,
        "off",
        Why::Default,
        json!(false),
    );
    assert_answer(
        &evaluate(&mut client, "checkout", "alice", &[]).await,
        "on",
        Why::TargetingMatch,
        json!(true),
    );
    server.stop().await;
}

#[tokio::test]
async fn string_and_object_flags_answer_their_own_values() {
    let (_db, server, mut client) = start().await;
    let colour = pb::UpsertFlagRequest {
        enabled: Some(true),
        value_type: FlagValueType::String.into(),
        on_value: pb_json(json!("green")),
        off_value: pb_json(json!("blue")),
        target_users: strings(&["alice"]),
        rollout_percentage: Some(0),
        ..upsert_request("colour")
    };
    upsert(&mut client, colour).await;
    assert_answer(
        &evaluate(&mut client, "colour", "alice", &[]).await,
        "on",
        Why::TargetingMatch,
        json!("green"),
    );
    assert_answer(
        &evaluate(&mut client, "colour", "bob", &[]).await,
        "off",
        Why::Default,
        json!("blue"),
    );

    let on = json!({"limit": 10, "mode": "fast", "tiers": ["a", "b"], "nested": {"x": 1.5}});
    let off = json!({"limit": 1});
    let limits = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            value_type: FlagValueType::Object.into(),
            on_value: pb_json(on.clone()),
            off_value: pb_json(off.clone()),
            target_roles: strings(&["pro"]),
            rollout_percentage: Some(0),
            ..upsert_request("limits")
        },
    )
    .await
    .flag
    .expect("flag");
    assert_eq!(
        (json_of(&limits.on_value), json_of(&limits.off_value)),
        (on.clone(), off.clone())
    );
    assert_answer(
        &evaluate(&mut client, "limits", "carol", &["pro"]).await,
        "on",
        Why::TargetingMatch,
        on,
    );
    assert_answer(
        &evaluate(&mut client, "limits", "carol", &["free"]).await,
        "off",
        Why::Default,
        off,
    );
    server.stop().await;
}

#[tokio::test]
async fn evaluate_flags_reports_unknown_keys_per_key_and_agrees_with_evaluate_flag() {
    let (_db, server, mut client) = start().await;
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            target_users: strings(&["alice"]),
            rollout_percentage: Some(40),
            ..upsert_request("checkout")
        },
    )
    .await;
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("dark_mode")
        },
    )
    .await;

    for user in ["alice", "user-7", ""] {
        let ctx = context(user, &["staff"]);
        let batch = client
            .evaluate_flags(pb::EvaluateFlagsRequest {
                keys: strings(&["dark_mode", "no_such_flag", "checkout"]),
                context: Some(ctx.clone()),
                ..Default::default()
            })
            .await
            .expect("batch")
            .into_inner();
        let keys: Vec<&str> = batch.results.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            ["dark_mode", "no_such_flag", "checkout"],
            "request order"
        );
        match &batch.results[1].outcome {
            Some(Outcome::Error(error)) => {
                assert_eq!(error.code, "FLAG_NOT_FOUND");
                assert!(error.message.contains("no_such_flag"), "{error:?}");
            }
            other => panic!("expected an error for the unknown key, got {other:?}"),
        }
        for result in [&batch.results[0], &batch.results[2]] {
            let single = evaluate(&mut client, &result.key, user, &["staff"]).await;
            assert_eq!(
                result.outcome,
                Some(Outcome::Evaluation(single)),
                "user {user:?}"
            );
        }

        // No keys: every flag, sorted by key, each as EvaluateFlag answers.
        let everything = client
            .evaluate_flags(pb::EvaluateFlagsRequest {
                keys: Vec::new(),
                context: Some(ctx),
                ..Default::default()
            })
            .await
            .expect("batch")
            .into_inner();
        let listed = list(&mut client, "").await;
        assert_eq!(everything.version, listed.version);
        let keys: Vec<&str> = everything.results.iter().map(|r| r.key.as_str()).collect();
        let expected: Vec<&str> = listed.flags.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, expected);
        assert_eq!(keys.len(), 6, "{keys:?}");
        for result in &everything.results {
            let single = evaluate(&mut client, &result.key, user, &["staff"]).await;
            assert_eq!(
                result.outcome,
                Some(Outcome::Evaluation(single)),
                "user {user:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_status_naming_the_field_and_changes_nothing() {
    let (db, server, mut client) = start().await;
    let before = dump(&db).await;
    let number = |on: f64| pb::UpsertFlagRequest {
        value_type: FlagValueType::Number.into(),
        on_value: Some(prost_types::Value::from(on)),
        off_value: Some(prost_types::Value::from(1.0)),
        ..upsert_request("dark_mode")
    };
    let cases: Vec<(&str, pb::UpsertFlagRequest, &str)> = vec![
        (
            "a key with a space and capitals",
            upsert_request("Bad Key"),
            "key",
        ),
        ("an empty key", upsert_request(""), "key"),
        (
            "a 129-character key",
            upsert_request(&"k".repeat(129)),
            "key",
        ),
        (
            "a bool on_value for a string flag",
            pb::UpsertFlagRequest {
                value_type: FlagValueType::String.into(),
                on_value: pb_json(json!(true)),
                off_value: pb_json(json!("off")),
                ..upsert_request("dark_mode")
            },
            "on_value",
        ),
        (
            "a string flag without values",
            pb::UpsertFlagRequest {
                value_type: FlagValueType::String.into(),
                ..upsert_request("new_flag")
            },
            "on_value",
        ),
        (
            "an object flag without an off_value",
            pb::UpsertFlagRequest {
                value_type: FlagValueType::Object.into(),
                on_value: pb_json(json!({"a": 1})),
                ..upsert_request("dark_mode")
            },
            "off_value",
        ),
        ("a NaN number", number(f64::NAN), "on_value"),
        ("an infinite number", number(f64::INFINITY), "on_value"),
        (
            "an unknown value type",
            pb::UpsertFlagRequest {
                value_type: 42,
                ..upsert_request("dark_mode")
            },
            "value_type",
        ),
        (
            "a rollout of 101",
            pb::UpsertFlagRequest {
                rollout_percentage: Some(101),
                ..upsert_request("dark_mode")
            },
            "rollout_percentage",
        ),
        (
            "10,001 target users",
            pb::UpsertFlagRequest {
                target_users: (0..10_001).map(|i| format!("user-{i}")).collect(),
                ..upsert_request("dark_mode")
            },
            "target_users",
        ),
        (
            "1,001 target roles",
            pb::UpsertFlagRequest {
                target_roles: (0..1_001).map(|i| format!("role-{i}")).collect(),
                ..upsert_request("dark_mode")
            },
            "target_roles",
        ),
        (
            "an environment with capitals",
            pb::UpsertFlagRequest {
                environments: strings(&["test", "Prod"]),
                ..upsert_request("dark_mode")
            },
            "environments",
        ),
        (
            "the '*' environment",
            pb::UpsertFlagRequest {
                environments: strings(&["*"]),
                ..upsert_request("dark_mode")
            },
            "environments",
        ),
        (
            "a 1,025-byte description",
            pb::UpsertFlagRequest {
                description: "d".repeat(1025),
                ..upsert_request("dark_mode")
            },
            "description",
        ),
        (
            "an empty target user",
            pb::UpsertFlagRequest {
                target_users: strings(&["alice", ""]),
                ..upsert_request("dark_mode")
            },
            "target_users",
        ),
        (
            "a negative expected_version",
            pb::UpsertFlagRequest {
                expected_version: Some(-1),
                ..upsert_request("dark_mode")
            },
            "expected_version",
        ),
    ];
    for (what, request, field) in cases {
        let status = client.upsert_flag(admin(request)).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(field),
            "{what}: the message should name {field:?}: {status:?}"
        );
        assert_eq!(dump(&db).await, before, "{what} changed something");
    }

    // Bad keys on the other calls.
    for bad in ["Bad Key", ""] {
        assert_refused(get(&mut client, bad).await, Code::InvalidArgument, "key");
        assert_refused(
            delete(&mut client, bad, None).await,
            Code::InvalidArgument,
            "key",
        );
        let evaluated = client
            .evaluate_flag(pb::EvaluateFlagRequest {
                explain: false,
                key: bad.into(),
                context: None,
            })
            .await;
        assert_refused(evaluated, Code::InvalidArgument, "key");
        let watched = client
            .watch_flags(pb::WatchFlagsRequest {
                keys: strings(&[bad]),
                since_version: None,
                with_freshness: false,
            })
            .await;
        assert_refused(watched, Code::InvalidArgument, "key");
    }
    let watched = client
        .watch_flags(pb::WatchFlagsRequest {
            keys: Vec::new(),
            since_version: Some(-1),
            with_freshness: false,
        })
        .await;
    assert_refused(watched, Code::InvalidArgument, "since_version");

    // Unknown keys.
    assert_refused(
        get(&mut client, "no_such_flag").await,
        Code::NotFound,
        "no_such_flag",
    );
    assert_refused(
        delete(&mut client, "no_such_flag", None).await,
        Code::NotFound,
        "no_such_flag",
    );
    let evaluated = client
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: "no_such_flag".into(),
            context: Some(context("alice", &[])),
        })
        .await;
    assert_refused(evaluated, Code::NotFound, "no_such_flag");

    // A context attribute JSON cannot hold.
    let nan_context = pb::EvaluationContext {
        attributes: Some(prost_types::Struct {
            fields: [("score".to_owned(), prost_types::Value::from(f64::NAN))].into(),
        }),
        ..context("alice", &[])
    };
    let evaluated = client
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: "dark_mode".into(),
            context: Some(nan_context.clone()),
        })
        .await;
    assert_refused(evaluated, Code::InvalidArgument, "context.attributes");
    let evaluated = client
        .evaluate_flags(pb::EvaluateFlagsRequest {
            keys: Vec::new(),
            context: Some(nan_context),
            ..Default::default()
        })
        .await;
    assert_refused(evaluated, Code::InvalidArgument, "context.attributes");

    // A bad actor header.
    for actor in ["ali\tce".to_owned(), "a".repeat(200)] {
        let mut request = admin(pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("dark_mode")
        });
        request
            .metadata_mut()
            .insert("x-readyd-actor", actor.parse().expect("a header value"));
        assert_refused(
            client.upsert_flag(request).await,
            Code::InvalidArgument,
            "x-readyd-actor",
        );
        let mut request = admin(pb::DeleteFlagRequest {
            key: "dark_mode".into(),
            expected_version: None,
        });
        request
            .metadata_mut()
            .insert("x-readyd-actor", actor.parse().expect("a header value"));
        assert_refused(
            client.delete_flag(request).await,
            Code::InvalidArgument,
            "x-readyd-actor",
        );
    }

    // Missing or wrong token.
    let enable = pb::UpsertFlagRequest {
        enabled: Some(true),
        ..upsert_request("dark_mode")
    };
    assert_refused(
        client.upsert_flag(Request::new(enable.clone())).await,
        Code::Unauthenticated,
        "admin token",
    );
    let mut wrong = Request::new(enable);
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token".parse().expect("header"),
    );
    assert_eq!(
        client
            .upsert_flag(wrong)
            .await
            .expect_err("wrong token")
            .code(),
        Code::PermissionDenied
    );
    let remove = pb::DeleteFlagRequest {
        key: "dark_mode".into(),
        expected_version: None,
    };
    assert_eq!(
        client
            .delete_flag(Request::new(remove))
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );

    assert_eq!(dump(&db).await, before, "a refused call changed something");
    assert_eq!(list(&mut client, "").await.flags.len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn a_negative_expected_version_on_delete_is_an_invalid_argument() {
    let (db, server, mut client) = start().await;
    let before = dump(&db).await;
    assert_refused(
        delete(&mut client, "dark_mode", Some(-1)).await,
        Code::InvalidArgument,
        "expected_version",
    );
    assert_eq!(dump(&db).await, before);
    server.stop().await;
}

#[tokio::test]
async fn the_actor_header_names_who_changed_a_flag() {
    let (db, server, mut client) = start().await;
    let mut request = admin(pb::UpsertFlagRequest {
        enabled: Some(true),
        ..upsert_request("dark_mode")
    });
    request
        .metadata_mut()
        .insert("x-readyd-actor", "alice".parse().expect("header"));
    let by_alice = client
        .upsert_flag(request)
        .await
        .expect("upsert")
        .into_inner();
    let flag = by_alice.flag.expect("flag");
    assert_eq!(flag.updated_by, "alice");
    assert_eq!(
        get(&mut client, "dark_mode").await.expect("get").updated_by,
        "alice"
    );
    assert_eq!(
        stored(&db, "dark_mode").await.expect("row").updated_by,
        "alice"
    );

    let anonymous = upsert(&mut client, upsert_request("dark_mode"))
        .await
        .flag
        .expect("flag");
    assert_eq!(anonymous.updated_by, "admin");
    assert_eq!(
        get(&mut client, "dark_mode").await.expect("get").updated_by,
        "admin"
    );
    assert_eq!(
        stored(&db, "dark_mode").await.expect("row").updated_by,
        "admin"
    );
    server.stop().await;
}

#[tokio::test]
async fn watch_flags_sends_a_snapshot_then_each_change() {
    let (_db, server, mut client) = start().await;
    let mut stream = watch(&mut client, &[], None).await;
    let snapshot = next_snapshot(&mut stream).await;
    let listed = list(&mut client, "").await;
    assert_eq!(snapshot.version, listed.version);
    assert_eq!(snapshot.flags, listed.flags, "every flag with its version");
    assert_eq!(snapshot.flags.len(), 5);
    assert!(
        snapshot
            .flags
            .iter()
            .all(|f| f.version > 0 && f.version <= snapshot.version)
    );

    let upserted = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("watched")
        },
    )
    .await
    .flag
    .expect("flag");
    let change = next_change(&mut stream).await;
    assert!(change.version > snapshot.version);
    assert_eq!(change.version, upserted.version);
    assert_eq!(change.change, Some(Change::Upserted(upserted)));

    let deleted = delete(&mut client, "watched", None).await.expect("delete");
    let removal = next_change(&mut stream).await;
    assert!(removal.version > change.version);
    assert_eq!(removal.version, deleted);
    assert_eq!(removal.change, Some(Change::DeletedKey("watched".into())));
    server.stop().await;
}

#[tokio::test]
async fn a_key_filter_limits_the_snapshot_and_the_changes_to_those_keys() {
    let (_db, server, mut client) = start().await;
    let mut stream = watch(&mut client, &["dark_mode"], None).await;
    let snapshot = next_snapshot(&mut stream).await;
    let dark_mode = get(&mut client, "dark_mode").await.expect("get");
    assert_eq!(snapshot.flags, vec![dark_mode]);

    // Changes to other keys are skipped: the next message is dark_mode's.
    upsert(&mut client, upsert_request("other_flag")).await;
    upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("beta_features")
        },
    )
    .await;
    let enabled = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("dark_mode")
        },
    )
    .await
    .flag
    .expect("flag");
    let change = next_change(&mut stream).await;
    assert_eq!(change.version, enabled.version);
    assert_eq!(change.change, Some(Change::Upserted(enabled)));

    delete(&mut client, "other_flag", None)
        .await
        .expect("delete");
    let deleted = delete(&mut client, "dark_mode", None)
        .await
        .expect("delete");
    let removal = next_change(&mut stream).await;
    assert_eq!(
        (removal.version, removal.change),
        (deleted, Some(Change::DeletedKey("dark_mode".into())))
    );
    server.stop().await;
}

#[tokio::test]
async fn since_version_resumes_with_only_the_later_changes() {
    let (_db, server, mut client) = start().await;
    let mut earlier = watch(&mut client, &[], None).await;
    let seen = next_snapshot(&mut earlier).await.version;
    drop(earlier);

    let missed = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("missed")
        },
    )
    .await
    .flag
    .expect("flag");
    let mut resumed = watch(&mut client, &[], Some(seen)).await;
    let first = next_change(&mut resumed).await;
    assert_eq!(first.version, missed.version);
    assert_eq!(first.change, Some(Change::Upserted(missed.clone())));

    // Then live changes follow on the same stream.
    let deleted = delete(&mut client, "missed", None).await.expect("delete");
    let second = next_change(&mut resumed).await;
    assert_eq!(
        (second.version, second.change),
        (deleted, Some(Change::DeletedKey("missed".into())))
    );

    // Resuming with a filter sends only the wanted keys' later changes.
    let mut filtered = watch(&mut client, &["dark_mode"], Some(seen)).await;
    let dark = upsert(
        &mut client,
        pb::UpsertFlagRequest {
            enabled: Some(true),
            ..upsert_request("dark_mode")
        },
    )
    .await
    .flag
    .expect("flag");
    let only = next_change(&mut filtered).await;
    assert_eq!(
        (only.version, only.change),
        (dark.version, Some(Change::Upserted(dark)))
    );
    server.stop().await;
}

#[tokio::test]
async fn since_version_in_the_future_or_too_old_gets_a_snapshot() {
    let (_db, server, mut client) = start().await;
    upsert(&mut client, upsert_request("one_more")).await;
    let listed = list(&mut client, "").await;
    for since in [listed.version + 1_000_000, 1, 0] {
        let mut stream = watch(&mut client, &[], Some(since)).await;
        let snapshot = next_snapshot(&mut stream).await;
        assert_eq!(snapshot.version, listed.version, "since_version {since}");
        assert_eq!(snapshot.flags, listed.flags, "since_version {since}");
    }
    server.stop().await;
}

/// One random upsert of the property test.
#[derive(Debug, Clone)]
struct RandomUpsert {
    key: &'static str,
    enabled: bool,
    rollout: u32,
    users: Vec<&'static str>,
    roles: Vec<&'static str>,
    environments: Vec<&'static str>,
    strings: bool,
}

impl RandomUpsert {
    fn request(&self) -> pb::UpsertFlagRequest {
        let (value_type, on, off) = if self.strings {
            (
                FlagValueType::String,
                pb_json(json!("on!")),
                pb_json(json!("off!")),
            )
        } else {
            (FlagValueType::Unspecified, None, None)
        };
        pb::UpsertFlagRequest {
            targeting: None,
            client_visible: None,
            permanent: None,
            key: self.key.into(),
            description: String::new(),
            enabled: Some(self.enabled),
            value_type: value_type.into(),
            on_value: on,
            off_value: off,
            environments: strings(&self.environments),
            target_users: strings(&self.users),
            target_roles: strings(&self.roles),
            rollout_percentage: Some(self.rollout),
            expected_version: None,
        }
    }
}

fn random_upsert() -> impl Strategy<Value = RandomUpsert> {
    (
        prop::sample::select(vec!["p.a", "p.b", "p.c"]),
        any::<bool>(),
        prop_oneof![Just(0u32), Just(100u32), 1u32..100],
        prop::sample::subsequence(vec!["u1", "u2", "u3"], 0..=3),
        prop::sample::subsequence(vec!["admin", "beta"], 0..=2),
        prop::sample::select(vec![
            vec![],
            vec!["test"],
            vec!["prod"],
            vec!["prod", "test"],
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(key, enabled, rollout, users, roles, environments, strings)| RandomUpsert {
                key,
                enabled,
                rollout,
                users,
                roles,
                environments,
                strings,
            },
        )
}

fn random_context() -> impl Strategy<Value = (String, Vec<&'static str>)> {
    (
        prop_oneof![
            Just(String::new()),
            prop::sample::select(vec!["u1", "u2", "u4"]).prop_map(str::to_owned),
            "[a-z0-9]{1,8}",
        ],
        prop::sample::subsequence(vec!["admin", "beta", "guest"], 0..=3),
    )
}

/// DESIGN.md's evaluation order, written out independently of the engine:
/// (variant, reason) for a flag in environment `test`.
fn oracle(flag: &Flag, user: &str, roles: &[&str]) -> (&'static str, Why) {
    if !flag.enabled
        || (!flag.environments.is_empty() && !flag.environments.iter().any(|e| e == "test"))
    {
        return ("off", Why::Disabled);
    }
    if !user.is_empty() && flag.target_users.iter().any(|u| u == user) {
        return ("on", Why::TargetingMatch);
    }
    if roles
        .iter()
        .any(|r| flag.target_roles.iter().any(|t| t == r))
    {
        return ("on", Why::TargetingMatch);
    }
    let targeting = !flag.target_users.is_empty() || !flag.target_roles.is_empty();
    match flag.rollout_percentage {
        100 if targeting => ("on", Why::Default),
        100 => ("on", Why::Static),
        0 => ("off", Why::Default),
        _ if user.is_empty() => ("off", Why::Default),
        p if bucket(&flag.key, user) <= u32::from(p) => ("on", Why::Split),
        _ => ("off", Why::Split),
    }
}

fn failed(status: Status) -> TestCaseError {
    TestCaseError::fail(format!("{status:?}"))
}

async fn check_case(
    mut client: Client,
    upserts: Vec<RandomUpsert>,
    contexts: Vec<(String, Vec<&'static str>)>,
) -> Result<(), TestCaseError> {
    let mut last: BTreeMap<&str, pb::Flag> = BTreeMap::new();
    for random in upserts {
        let request = random.request();
        let written = client
            .upsert_flag(admin(request.clone()))
            .await
            .map_err(failed)?
            .into_inner()
            .flag
            .expect("flag");
        prop_assert_eq!(
            (
                written.enabled,
                written.rollout_percentage,
                &written.environments,
                &written.target_users,
                &written.target_roles,
            ),
            (
                random.enabled,
                random.rollout,
                &request.environments,
                &request.target_users,
                &request.target_roles,
            )
        );
        last.insert(random.key, written);
    }
    for (key, written) in &last {
        let got = client
            .get_flag(pb::GetFlagRequest { key: (*key).into() })
            .await
            .map_err(failed)?
            .into_inner()
            .flag
            .expect("flag");
        prop_assert_eq!(&got, written, "GetFlag answers the last write");
        let flag = to_flag(&got);
        let compiled = CompiledFlag::new(flag.clone()).expect("a valid flag");
        for (user, roles) in &contexts {
            let answer = client
                .evaluate_flag(pb::EvaluateFlagRequest {
                    explain: false,
                    key: (*key).into(),
                    context: Some(context(user, roles)),
                })
                .await
                .map_err(failed)?
                .into_inner();
            let ctx = EvaluationContext {
                user_id: Some(user.clone()),
                roles: strings(roles),
                attributes: serde_json::Map::new(),
            };
            let expected =
                readyd::flags::evaluate(&compiled, "test", &ctx, &readyd::flags::NoFlags);
            prop_assert_eq!(
                answer.variant.as_str(),
                expected.variant,
                "{} for {:?}",
                key,
                (user, roles)
            );
            prop_assert_eq!(answer.reason(), Why::from(expected.reason));
            prop_assert_eq!(&json_of(&answer.value), expected.value);
            prop_assert_eq!(answer.flag_version, got.version);
            prop_assert_eq!(
                (answer.variant.as_str(), answer.reason()),
                oracle(&flag, user, roles)
            );
        }
    }
    Ok(())
}

#[test]
fn evaluate_flag_answers_as_the_engine_does_for_the_flag_get_flag_returns() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (db, server, client) = runtime.block_on(start());
    let mut runner = TestRunner::new(Config {
        cases: 20,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/flags_api.proptest-regressions",
        ))),
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(random_upsert(), 1..5),
        prop::collection::vec(random_context(), 1..8),
    );
    let result = runner.run(&strategy, |(upserts, contexts)| {
        runtime.block_on(check_case(client.clone(), upserts, contexts))
    });
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}
