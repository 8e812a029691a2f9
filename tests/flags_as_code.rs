//! Flags as code: `readyd flags export` and `readyd flags apply` as the real
//! binary against a real server, and `ApplyFlags`, which writes all of a
//! batch in one transaction or nothing.

mod support;

use std::process::Output;

use readyd::api::pb::readyd::v1 as pb;
use serde_json::{Value, json};
use support::daemon::binary;
use support::{ADMIN_TOKEN, TestDb, TestServer, admin, admin_serve_args};
use tonic::Code;

use pb::flag_service_client::FlagServiceClient;

async fn readyd(server: &TestServer, args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .args(args)
        .arg("--addr")
        .arg(server.url())
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("READYD_ADDR")
        .output()
        .await
        .expect("run readyd")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn versions(db: &TestDb) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT key, version FROM feature_flags ORDER BY key")
        .fetch_all(&db.pool)
        .await
        .expect("read versions")
}

#[tokio::test]
async fn export_then_apply_round_trips_and_a_stale_file_changes_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);
    for (key, rollout) in [("alpha", 10), ("beta", 50)] {
        client
            .upsert_flag(admin(pb::UpsertFlagRequest {
                key: key.into(),
                enabled: Some(true),
                rollout_percentage: Some(rollout),
                ..Default::default()
            }))
            .await
            .expect("seed");
    }
    client
        .upsert_segment(admin(pb::UpsertSegmentRequest {
            key: "paying".into(),
            constraints: vec![pb::Constraint {
                attribute: "plan".into(),
                operator: "in".into(),
                values: vec!["pro".into()],
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .expect("seed a segment");
    client
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "checkout.v2".into(),
            value_type: pb::FlagValueType::String.into(),
            on_value: Some(readyd::api::convert::to_pb_value(&json!("red"))),
            off_value: Some(readyd::api::convert::to_pb_value(&json!("grey"))),
            targeting: Some(pb::FlagTargeting {
                variants: vec![pb::FlagVariant {
                    name: "blue".into(),
                    value: Some(readyd::api::convert::to_pb_value(&json!("blue"))),
                }],
                off_variant: "blue".into(),
                rules: vec![pb::TargetingRule {
                    segments: vec!["paying".into()],
                    serve: Some(pb::Serve {
                        serve: Some(pb::serve::Serve::Variant("blue".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("seed a v2 flag");

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("flags.json");
    let file = path.to_str().expect("a UTF-8 path");
    let export = readyd(&server, &["flags", "export", "--file", file]).await;
    assert!(export.status.success(), "{}", stderr(&export));
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
    // Every flag, including the ones the first migration seeds.
    let count = versions(&db).await.len();
    assert_eq!(exported["flags"].as_array().map(Vec::len), Some(count));
    let at = |key: &str| {
        exported["flags"]
            .as_array()
            .and_then(|flags| flags.iter().position(|f| f["key"] == key))
            .expect("exported")
    };
    assert_eq!(
        exported["flags"][at("checkout.v2")]["targeting"]["off_variant"],
        "blue"
    );

    assert_eq!(exported["segments"][0]["key"], "paying");

    // Applying what was exported changes nothing.
    let before = versions(&db).await;
    let apply = readyd(&server, &["flags", "apply", "-f", file]).await;
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(
        stderr(&apply).contains(&format!("0 to write, {} unchanged", count + 1)),
        "{}",
        stderr(&apply)
    );
    assert_eq!(versions(&db).await, before);

    // The same as YAML, chosen by the file's name.
    let yaml_path = dir.path().join("flags.yaml");
    let yaml = yaml_path.to_str().expect("a UTF-8 path");
    let export = readyd(&server, &["flags", "export", "--file", yaml]).await;
    assert!(export.status.success(), "{}", stderr(&export));
    let text = std::fs::read_to_string(&yaml_path).expect("read");
    assert!(text.starts_with("flags:"), "{text}");
    assert!(text.contains("off_variant: blue"), "{text}");
    let apply = readyd(&server, &["flags", "apply", "-f", yaml]).await;
    assert!(apply.status.success(), "{}", stderr(&apply));
    assert!(stderr(&apply).contains("0 to write"), "{}", stderr(&apply));
    assert_eq!(versions(&db).await, before);

    // An edit: the dry run shows it and writes nothing; the apply writes it.
    let mut edited = exported.clone();
    edited["flags"][at("alpha")]["rollout_percentage"] = json!(75);
    edited["segments"][0]["constraints"][0]["values"] = json!(["pro", "team"]);
    edited["flags"]
        .as_array_mut()
        .expect("flags")
        .push(json!({"key": "gamma", "enabled": true}));
    std::fs::write(&path, edited.to_string()).expect("write");
    let dry = readyd(&server, &["flags", "apply", "-f", file, "--dry-run"]).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stderr(&dry).contains("~ alpha: rollout_percentage"),
        "{}",
        stderr(&dry)
    );
    assert!(stderr(&dry).contains("+ gamma (new)"), "{}", stderr(&dry));
    assert!(
        stderr(&dry).contains("~ segment paying: constraints"),
        "{}",
        stderr(&dry)
    );
    assert_eq!(versions(&db).await, before);
    let apply = readyd(&server, &["flags", "apply", "-f", file]).await;
    assert!(apply.status.success(), "{}", stderr(&apply));
    let after = versions(&db).await;
    assert_eq!(after.len(), count + 1);
    let version_of = |rows: &[(String, i64)], key: &str| {
        rows.iter()
            .find(|(k, _)| k == key)
            .map(|(_, version)| *version)
    };
    assert!(version_of(&after, "alpha") > version_of(&before, "alpha"));
    assert_eq!(version_of(&after, "beta"), version_of(&before, "beta"));
    assert!(version_of(&after, "gamma").is_some());
    let values: Value = sqlx::query_scalar(
        "SELECT constraints -> 0 -> 'values' FROM flag_segments WHERE key = 'paying'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the segment");
    assert_eq!(values, json!(["pro", "team"]));

    // The same file again: alpha is now newer than the file says. Nothing
    // at all is applied, not even the flag that would be fine.
    let mut stale = edited.clone();
    stale["flags"][at("beta")]["rollout_percentage"] = json!(5);
    std::fs::write(&path, stale.to_string()).expect("write");
    let refused = readyd(&server, &["flags", "apply", "-f", file]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("! alpha: exported at version"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(versions(&db).await, after);
}

#[tokio::test]
async fn apply_flags_writes_all_or_nothing() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);
    let write = |key: &str, expected: Option<i64>| pb::UpsertFlagRequest {
        key: key.into(),
        enabled: Some(true),
        expected_version: expected,
        ..Default::default()
    };

    let applied = client
        .apply_flags(admin(pb::ApplyFlagsRequest {
            segments: Vec::new(),
            flags: vec![write("one", Some(0)), write("two", None)],
        }))
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(applied.flags.len(), 2);
    assert_eq!(applied.version, applied.flags[1].version);
    let before = versions(&db).await;

    // A stale second write: the first is not kept either.
    let status = client
        .apply_flags(admin(pb::ApplyFlagsRequest {
            segments: Vec::new(),
            flags: vec![write("three", Some(0)), write("one", Some(0))],
        }))
        .await
        .expect_err("stale");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(versions(&db).await, before);

    // Bad input names the write it is in; a key twice is refused.
    let status = client
        .apply_flags(admin(pb::ApplyFlagsRequest {
            segments: Vec::new(),
            flags: vec![
                write("four", None),
                pb::UpsertFlagRequest {
                    rollout_percentage: Some(101),
                    ..write("five", None)
                },
            ],
        }))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("flags[1] (\"five\"): rollout_percentage"),
        "{status:?}"
    );
    let status = client
        .apply_flags(admin(pb::ApplyFlagsRequest {
            segments: Vec::new(),
            flags: vec![write("six", None), write("six", None)],
        }))
        .await
        .expect_err("twice");
    assert!(status.message().contains("written twice"), "{status:?}");
    assert_eq!(versions(&db).await, before);

    // Without the admin token: refused.
    let status = client
        .apply_flags(pb::ApplyFlagsRequest {
            segments: Vec::new(),
            flags: vec![write("seven", None)],
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
}
