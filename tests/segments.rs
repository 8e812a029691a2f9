//! Segments end to end: named constraint sets that flag rules name; a
//! segment change reaches a second server, its WatchFlags streams and its
//! flagd EventStream like a flag change; a flag may not name a segment that
//! does not exist, and a segment may not be deleted while a flag names it.

mod support;

use prost_types::value::Kind;
use readyd::api::pb::flagd::evaluation_v2 as flagd;
use readyd::api::pb::readyd::v1 as pb;
use serde_json::json;
use support::{TestDb, TestServer, admin, admin_serve_args, next};
use tonic::Code;
use tonic::transport::Channel;

use pb::flag_service_client::FlagServiceClient;
use pb::watch_flags_response::Event as WatchEvent;

type Client = FlagServiceClient<Channel>;

fn constraint(attribute: &str, operator: &str, values: &[&str]) -> pb::Constraint {
    pb::Constraint {
        attribute: attribute.into(),
        operator: operator.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

fn segment(plans: &[&str]) -> pb::UpsertSegmentRequest {
    pb::UpsertSegmentRequest {
        key: "paying".into(),
        description: "customers on a paid plan".into(),
        constraints: vec![constraint("plan", "in", plans)],
        expected_version: None,
    }
}

/// A flag on for contexts in segment "paying", off otherwise.
fn gated_flag() -> pb::UpsertFlagRequest {
    pb::UpsertFlagRequest {
        key: "reports".into(),
        enabled: Some(true),
        rollout_percentage: Some(0),
        targeting: Some(pb::FlagTargeting {
            rules: vec![pb::TargetingRule {
                name: "paying customers".into(),
                segments: vec!["paying".into()],
                serve: Some(pb::Serve {
                    serve: Some(pb::serve::Serve::Variant("on".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn variant_for(client: &mut Client, plan: &str) -> String {
    let mut map = serde_json::Map::new();
    map.insert("plan".into(), json!(plan));
    client
        .evaluate_flag(pb::EvaluateFlagRequest {
            key: "reports".into(),
            context: Some(pb::EvaluationContext {
                user_id: "u1".into(),
                roles: Vec::new(),
                attributes: Some(readyd::api::convert::to_pb_struct(&map)),
            }),
            explain: false,
        })
        .await
        .expect("evaluate")
        .into_inner()
        .variant
}

#[tokio::test]
async fn a_rule_naming_a_segment_follows_the_segment_on_every_server() {
    let db = TestDb::new().await;
    let a = TestServer::start(admin_serve_args(&db.url)).await;
    let b = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client_a = FlagServiceClient::new(a.channel().await);
    let channel_b = b.channel().await;
    let mut client_b = FlagServiceClient::new(channel_b.clone());

    // A flag may not name a segment that does not exist.
    let status = client_a
        .upsert_flag(admin(gated_flag()))
        .await
        .expect_err("no such segment");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("segment paying does not exist"),
        "{status:?}"
    );

    let created = client_a
        .upsert_segment(admin(segment(&["pro"])))
        .await
        .expect("create the segment")
        .into_inner();
    assert!(created.created);
    client_a
        .upsert_flag(admin(gated_flag()))
        .await
        .expect("the flag");
    assert_eq!(variant_for(&mut client_a, "pro").await, "on");
    assert_eq!(variant_for(&mut client_a, "team").await, "off");

    // Server B: a WatchFlags stream and a flagd EventStream, then a change
    // of the segment made on A.
    let mut watch = client_b
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let Some(WatchEvent::Snapshot(snapshot)) = next(&mut watch).await.and_then(|m| m.event) else {
        panic!("a snapshot first");
    };
    assert_eq!(
        snapshot
            .segments
            .iter()
            .map(|s| s.key.as_str())
            .collect::<Vec<_>>(),
        ["paying"]
    );
    let mut events = flagd::service_client::ServiceClient::new(channel_b.clone())
        .event_stream(flagd::EventStreamRequest::default())
        .await
        .expect("event stream")
        .into_inner();
    let ready = next(&mut events).await.expect("provider_ready");
    assert_eq!(ready.r#type, "provider_ready");

    let updated = client_a
        .upsert_segment(admin(segment(&["pro", "team"])))
        .await
        .expect("update the segment")
        .into_inner()
        .segment
        .expect("a segment");
    loop {
        match next(&mut watch).await.and_then(|m| m.event) {
            Some(WatchEvent::Change(change)) if change.version == updated.version => {
                let Some(pb::flag_change::Change::SegmentUpserted(segment)) = change.change else {
                    panic!("a segment change: {change:?}");
                };
                assert_eq!(segment.constraints[0].values, ["pro", "team"]);
                break;
            }
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }
    let changed = next(&mut events).await.expect("configuration_change");
    assert_eq!(changed.r#type, "configuration_change");
    let flags = changed
        .data
        .and_then(|data| data.fields.get("flags").cloned())
        .and_then(|flags| match flags.kind {
            Some(Kind::StructValue(flags)) => {
                Some(flags.fields.keys().cloned().collect::<Vec<_>>())
            }
            _ => None,
        });
    assert_eq!(flags, Some(vec!["reports".to_owned()]));
    assert_eq!(variant_for(&mut client_b, "team").await, "on");

    // Deleting it is refused while the flag names it, and changes nothing.
    let status = client_b
        .delete_segment(admin(pb::DeleteSegmentRequest {
            key: "paying".into(),
            expected_version: None,
        }))
        .await
        .expect_err("in use");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("used by flag reports"),
        "{status:?}"
    );
    assert!(
        client_b
            .get_segment(pb::GetSegmentRequest {
                key: "paying".into()
            })
            .await
            .is_ok()
    );

    // Once no flag names it, it goes.
    client_a
        .upsert_flag(admin(pb::UpsertFlagRequest {
            client_visible: None,
            permanent: None,
            targeting: Some(pb::FlagTargeting::default()),
            ..gated_flag()
        }))
        .await
        .expect("drop the rule");
    client_a
        .delete_segment(admin(pb::DeleteSegmentRequest {
            key: "paying".into(),
            expected_version: Some(updated.version),
        }))
        .await
        .expect("delete");
    let audit = client_a
        .list_segment_audit(pb::ListFlagAuditRequest {
            key: "paying".into(),
            ..Default::default()
        })
        .await
        .expect("segment audit")
        .into_inner()
        .entries;
    let actions: Vec<pb::FlagAuditAction> = audit.iter().map(|e| e.action()).collect();
    assert_eq!(
        actions,
        [
            pb::FlagAuditAction::Delete,
            pb::FlagAuditAction::Update,
            pb::FlagAuditAction::Insert
        ]
    );
    assert_eq!(audit[1].new_segment.as_ref(), Some(&updated));
    assert_eq!(audit[0].new_segment, None);
    assert_eq!(audit[0].actor, "admin");
}

#[tokio::test]
async fn bad_segments_are_refused_naming_the_constraint() {
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client = FlagServiceClient::new(server.channel().await);
    for (request, wanted) in [
        (
            pb::UpsertSegmentRequest {
                constraints: vec![
                    constraint("plan", "in", &["pro"]),
                    constraint("seats", "num_gt", &["lots"]),
                ],
                ..segment(&[])
            },
            "constraint 2:",
        ),
        (
            pb::UpsertSegmentRequest {
                constraints: Vec::new(),
                ..segment(&[])
            },
            "at least one constraint",
        ),
        (
            pb::UpsertSegmentRequest {
                key: "Not A Key".into(),
                ..segment(&["pro"])
            },
            "not a valid segment key",
        ),
    ] {
        let status = client
            .upsert_segment(admin(request))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(wanted), "{wanted}: {status:?}");
    }
    let listed = client
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.segments.is_empty());
    // Without the admin token: refused.
    let status = client
        .upsert_segment(segment(&["pro"]))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
}
