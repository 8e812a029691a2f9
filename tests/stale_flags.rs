//! Stale flags end to end, with a real PostgreSQL: flags of known ages
//! (set by SQL), hand-built `flag_usage` histories, a permanent flag and a
//! prerequisite deleted by SQL; ListStaleFlags over gRPC on a real server
//! answers the exact list, and `readyd flags stale` shows it; a follower
//! asks its upstream.

mod support;

use std::time::Duration;

use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::daemon::binary;
use support::usage::insert_usage;
use support::{TestDb, TestServer, admin, admin_serve_args};
use tonic::transport::Channel;

/// One listed flag, evidence included, in a form easy to compare.
type Listed = (String, String, Option<i64>, String, u32, u64, Vec<String>);

fn listed(answer: &pb::ListStaleFlagsResponse) -> Vec<Listed> {
    answer
        .flags
        .iter()
        .map(|f| {
            (
                f.key.clone(),
                f.reason.clone(),
                f.last_evaluated.as_ref().map(|t| t.seconds),
                f.variant.clone(),
                f.share_percent,
                f.evaluations,
                f.missing_flags.clone(),
            )
        })
        .collect()
}

fn entry(key: &str, reason: &str) -> Listed {
    (
        key.into(),
        reason.into(),
        None,
        String::new(),
        0,
        0,
        Vec::new(),
    )
}

async fn stale(channel: &Channel, days: u32) -> Result<pb::ListStaleFlagsResponse, tonic::Status> {
    FlagServiceClient::new(channel.clone())
        .list_stale_flags(pb::ListStaleFlagsRequest { days })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the list over `days` is `expected` (the server's snapshot
/// follows the SQL changes a moment later), or fails after a deadline.
async fn wait_for_list(channel: &Channel, days: u32, expected: &[Listed]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = stale(channel, days).await.expect("ListStaleFlags answers");
        if listed(&answer) == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the list never became {expected:?}; it is {:?}",
            listed(&answer)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn upsert(channel: &Channel, request: pb::UpsertFlagRequest) -> pb::Flag {
    FlagServiceClient::new(channel.clone())
        .upsert_flag(admin(request))
        .await
        .expect("UpsertFlag answers")
        .into_inner()
        .flag
        .expect("the flag")
}

fn enabled(key: &str) -> pb::UpsertFlagRequest {
    pb::UpsertFlagRequest {
        key: key.into(),
        enabled: Some(true),
        ..Default::default()
    }
}

#[tokio::test]
async fn hand_built_histories_list_exactly_the_stale_flags_with_their_evidence() {
    let db = TestDb::new().await;
    // Only this test's flags.
    sqlx::query("DELETE FROM feature_flags")
        .execute(&db.pool)
        .await
        .expect("remove the seeded flags");
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let channel = server.channel().await;

    for key in ["unread", "never-read", "rolled-out", "experiment", "fresh"] {
        upsert(&channel, enabled(key)).await;
    }
    let kill = upsert(
        &channel,
        pb::UpsertFlagRequest {
            permanent: Some(true),
            ..enabled("kill-switch")
        },
    )
    .await;
    assert!(kill.permanent);
    // A write that does not say keeps the mark.
    let kept = upsert(&channel, enabled("kill-switch")).await;
    assert!(kept.permanent, "permanent is kept when not given");
    assert!(kept.created_at.is_some());
    upsert(&channel, enabled("parent")).await;
    upsert(
        &channel,
        pb::UpsertFlagRequest {
            targeting: Some(pb::FlagTargeting {
                prerequisites: vec![pb::Prerequisite {
                    flag: "parent".into(),
                    variants: vec!["on".into()],
                }],
                ..Default::default()
            }),
            ..enabled("child")
        },
    )
    .await;

    // Every flag but `fresh` is older than any window asked here.
    sqlx::query(
        "UPDATE feature_flags SET created_at = now() - interval '90 days' WHERE key <> 'fresh'",
    )
    .execute(&db.pool)
    .await
    .expect("age the flags");
    sqlx::query("DELETE FROM feature_flags WHERE key = 'parent'")
        .execute(&db.pool)
        .await
        .expect("delete the prerequisite by SQL");

    // unread: last evaluated 45 days ago. rolled-out: `on` only in the
    // window (an `off` long before it does not count). experiment: two
    // variants. child: both variants in the last hours.
    insert_usage(&db, "unread", 45 * 24, "on", 5).await;
    insert_usage(&db, "rolled-out", 2 * 24, "on", 100).await;
    insert_usage(&db, "rolled-out", 10 * 24, "on", 20).await;
    insert_usage(&db, "rolled-out", 60 * 24, "off", 7).await;
    insert_usage(&db, "experiment", 3, "on", 4).await;
    insert_usage(&db, "experiment", 3, "off", 6).await;
    insert_usage(&db, "child", 1, "off", 3).await;
    insert_usage(&db, "child", 2, "on", 2).await;
    let unread_hour: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM hour)::int8 FROM flag_usage WHERE flag_key = 'unread'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the unread flag's hour");
    let rolled_out_last: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(hour))::int8 FROM flag_usage WHERE flag_key = 'rolled-out'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("the rolled-out flag's last hour");

    let mut child = entry("child", "broken_references");
    child.6 = vec!["parent".into()];
    let mut unread = entry("unread", "not_evaluated");
    unread.2 = Some(unread_hour);
    let mut rolled_out = entry("rolled-out", "one_variant");
    rolled_out.3 = "on".into();
    rolled_out.4 = 100;
    rolled_out.5 = 120;
    wait_for_list(
        &channel,
        0,
        &[
            child.clone(),
            entry("never-read", "not_evaluated"),
            rolled_out,
            unread.clone(),
        ],
    )
    .await;

    // Over one day, rolled-out was not evaluated at all; experiment and
    // child were.
    let mut rolled_out_unread = entry("rolled-out", "not_evaluated");
    rolled_out_unread.2 = Some(rolled_out_last);
    let answer = stale(&channel, 1).await.expect("ListStaleFlags answers");
    assert_eq!(answer.days, 1);
    assert_eq!(
        listed(&answer),
        [
            child,
            entry("never-read", "not_evaluated"),
            rolled_out_unread,
            unread
        ]
    );

    for days in [366, u32::MAX] {
        let refused = stale(&channel, days).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{days}");
        assert!(refused.message().contains("days"), "{}", refused.message());
    }

    // The command line shows the same list.
    let output = tokio::process::Command::new(binary())
        .args(["flags", "stale", "--output", "json", "--addr"])
        .arg(server.url())
        .env_remove("READYD_ADMIN_TOKEN")
        .env_remove("READYD_ADDR")
        .output()
        .await
        .expect("run readyd");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(shown["days"], 30);
    let keys: Vec<(&str, &str)> = shown["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap_or_default(),
                f["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("child", "broken_references"),
            ("never-read", "not_evaluated"),
            ("rolled-out", "one_variant"),
            ("unread", "not_evaluated"),
        ]
    );
    assert_eq!(shown["flags"][2]["share_percent"], 100);
    assert_eq!(shown["flags"][2]["evaluations"], 120);
    assert_eq!(shown["flags"][0]["missing_flags"][0], "parent");
    server.stop().await;
}

#[tokio::test]
async fn a_follower_asks_its_upstream_for_the_stale_list() {
    let db = TestDb::new().await;
    sqlx::query("DELETE FROM feature_flags")
        .execute(&db.pool)
        .await
        .expect("remove the seeded flags");
    sqlx::query(
        "INSERT INTO feature_flags (key, enabled, value_type, on_value, off_value, created_at) \
         VALUES ('old', true, 'bool', 'true', 'false', now() - interval '90 days')",
    )
    .execute(&db.pool)
    .await
    .expect("an old flag");
    let dirs = [
        tempfile::tempdir().expect("a dir"),
        tempfile::tempdir().expect("a dir"),
    ];
    let upstream = support::daemon::upstream(&db.url, "prod", dirs[0].path())
        .start()
        .await;
    let follower = support::daemon::follower(&upstream.url(), "edge", "follower", dirs[1].path())
        .start()
        .await;
    let answer = stale(&follower.channel().await, 0)
        .await
        .expect("the follower answers ListStaleFlags");
    assert_eq!(listed(&answer), [entry("old", "not_evaluated")]);
    let refused = stale(&follower.channel().await, 400)
        .await
        .expect_err("refused through the follower too");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    follower.stop().await;
    upstream.stop().await;
}
