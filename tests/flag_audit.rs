//! The flag audit trail: every change through the API and by plain SQL is
//! recorded in the same transaction with its actor, the flag before and
//! after, and the change's version; `ListFlagAudit` pages through it newest
//! first, and `readyd flags history` shows it.

mod support;

use readyd::api::pb::readyd::v1 as pb;
use support::daemon::binary;
use support::{ADMIN_TOKEN, TestDb, TestServer, admin, admin_serve_args};
use tonic::Code;
use tonic::transport::Channel;

use pb::FlagAuditAction as Action;
use pb::flag_service_client::FlagServiceClient;

type Client = FlagServiceClient<Channel>;

fn as_actor<T>(message: T, actor: &str) -> tonic::Request<T> {
    let mut request = admin(message);
    request
        .metadata_mut()
        .insert("x-readyd-actor", actor.parse().expect("an ASCII actor"));
    request
}

async fn audit(
    client: &mut Client,
    request: pb::ListFlagAuditRequest,
) -> pb::ListFlagAuditResponse {
    client
        .list_flag_audit(request)
        .await
        .expect("list the audit")
        .into_inner()
}

#[tokio::test]
async fn every_change_is_recorded_with_its_actor_and_paged_newest_first() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);

    let created = client
        .upsert_flag(as_actor(
            pb::UpsertFlagRequest {
                key: "dark-mode".into(),
                enabled: Some(true),
                ..Default::default()
            },
            "alice",
        ))
        .await
        .expect("create")
        .into_inner()
        .flag
        .expect("a flag");
    let updated = client
        .upsert_flag(as_actor(
            pb::UpsertFlagRequest {
                key: "dark-mode".into(),
                enabled: Some(true),
                rollout_percentage: Some(25),
                targeting: Some(pb::FlagTargeting {
                    off_variant: "on".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "bob",
        ))
        .await
        .expect("update")
        .into_inner()
        .flag
        .expect("a flag");
    // Plain SQL: recorded too, with the database user as the actor.
    sqlx::query("UPDATE feature_flags SET description = 'by hand' WHERE key = 'dark-mode'")
        .execute(&db.pool)
        .await
        .expect("update by SQL");
    let deleted_at = client
        .delete_flag(as_actor(
            pb::DeleteFlagRequest {
                key: "dark-mode".into(),
                expected_version: None,
            },
            "carol",
        ))
        .await
        .expect("delete")
        .into_inner()
        .version;
    // Another flag's change, to see the key filter work.
    client
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "other".into(),
            ..Default::default()
        }))
        .await
        .expect("create other");

    let database_user: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&db.pool)
        .await
        .expect("the database user");
    let all = audit(
        &mut client,
        pb::ListFlagAuditRequest {
            key: "dark-mode".into(),
            ..Default::default()
        },
    )
    .await;
    let summary: Vec<(Action, &str)> = all
        .entries
        .iter()
        .map(|e| (e.action(), e.actor.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Action::Delete, "carol"),
            (Action::Update, database_user.as_str()),
            (Action::Update, "bob"),
            (Action::Insert, "alice"),
        ]
    );
    let [deleted, by_hand, by_bob, by_alice] = &all.entries[..] else {
        panic!("four entries: {:?}", all.entries);
    };
    assert_eq!(deleted.version, deleted_at);
    assert_eq!(deleted.new_flag, None);
    assert_eq!(
        deleted.old_flag.as_ref().map(|f| f.description.as_str()),
        Some("by hand")
    );
    assert_eq!(by_bob.version, updated.version);
    assert_eq!(by_bob.old_flag.as_ref(), Some(&created));
    assert_eq!(by_bob.new_flag.as_ref(), Some(&updated));
    assert!(
        by_bob
            .new_flag
            .as_ref()
            .is_some_and(|f| f.targeting.is_some())
    );
    assert_eq!(by_alice.old_flag, None);
    assert_eq!(by_alice.version, created.version);
    assert!(by_hand.version > by_bob.version && by_hand.version < deleted.version);

    // Pages of two, newest first, without gaps or repeats.
    let first = audit(
        &mut client,
        pb::ListFlagAuditRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.entries[0].key, "other");
    let second = audit(
        &mut client,
        pb::ListFlagAuditRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<i64> = first
        .entries
        .iter()
        .chain(&second.entries)
        .map(|e| e.id)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(ids.len(), 4);

    let bad = client
        .list_flag_audit(pb::ListFlagAuditRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);

    // The CLI shows the same trail.
    let output = tokio::process::Command::new(binary())
        .args(["flags", "history", "dark-mode", "--addr", &server.url()])
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("READYD_ADDR")
        .output()
        .await
        .expect("run readyd");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("VERSION"), "{text}");
    assert!(
        lines[1].contains("carol") && lines[1].contains("delete"),
        "{text}"
    );
    assert!(
        lines[3].contains("bob") && lines[3].contains("rollout_percentage, targeting"),
        "{text}"
    );
}
