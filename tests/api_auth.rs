//! The auth layer over a real connection: every case of the token rules on
//! mutation RPCs, reads guarded by the read token, probes and reflection
//! always open; a refused call changes nothing.

mod support;

use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use readyd::api::pb::readyd::v1::{
    ApplyFlagsRequest, CheckDatabaseRequest, Constraint, DeleteSegmentRequest, GetFlagRequest,
    GetSegmentRequest, ListFlagAuditRequest, ListSegmentsRequest, SetConfigRequest,
    UpsertFlagRequest, UpsertSegmentRequest,
};
use support::{TestDb, TestServer, serve_args};
use tonic::{Code, Request};

const ADMIN: &str = "admin-token-for-tests";
const READER: &str = "read-token-for-tests";

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn upsert() -> UpsertFlagRequest {
    UpsertFlagRequest {
        key: "new_flag".into(),
        enabled: Some(true),
        ..Default::default()
    }
}

fn set_config() -> SetConfigRequest {
    SetConfigRequest {
        key: "new_key".into(),
        value: Some(prost_types::Value::from(1.0)),
        ..Default::default()
    }
}

/// Everything a refused mutation could have touched.
async fn state(db: &TestDb) -> (i64, i64, i64, i64) {
    let max_version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM (SELECT version FROM app_config UNION ALL SELECT version FROM feature_flags) v",
    )
    .fetch_one(&db.pool)
    .await
    .expect("max version");
    (
        db.count("feature_flags").await,
        db.count("app_config").await,
        db.count("config_audit").await,
        max_version,
    )
}

async fn upsert_code(server: &TestServer, token: Option<&str>) -> Code {
    let mut flags = FlagServiceClient::new(server.channel().await);
    flags
        .upsert_flag(with_token(upsert(), token))
        .await
        .err()
        .map_or(Code::Ok, |s| s.code())
}

#[tokio::test]
async fn mutations_need_the_admin_token_and_refusals_change_nothing() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.admin_token = Some(ADMIN.into());
    let server = TestServer::start(args).await;
    let before = state(&db).await;

    assert_eq!(upsert_code(&server, None).await, Code::Unauthenticated);
    assert_eq!(
        upsert_code(&server, Some("not-the-token")).await,
        Code::PermissionDenied
    );
    let mut config = ConfigServiceClient::new(server.channel().await);
    let refused = config
        .set_config(with_token(set_config(), None))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("authorization: Bearer"),
        "{refused:?}"
    );
    assert_eq!(
        state(&db).await,
        before,
        "refused calls changed the database"
    );

    // The right token passes the layer (the handler decides what follows).
    let code = upsert_code(&server, Some(ADMIN)).await;
    assert!(
        !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
        "got {code:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_configured_mutations_are_refused_with_how_to_enable_them() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    let before = state(&db).await;
    let mut flags = FlagServiceClient::new(server.channel().await);
    for token in [None, Some("anything")] {
        let err = flags
            .upsert_flag(with_token(upsert(), token))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("READYD_ADMIN_TOKEN"), "{err:?}");
    }
    assert_eq!(state(&db).await, before);
    server.stop().await;
}

#[tokio::test]
async fn a_read_token_guards_reads_but_never_probes_or_reflection() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.admin_token = Some(ADMIN.into());
    args.read_token = Some(READER.into());
    let server = TestServer::start(args).await;
    let channel = server.channel().await;

    let mut health = HealthServiceClient::new(channel.clone());
    let err = health
        .check_database(with_token(CheckDatabaseRequest {}, None))
        .await
        .expect_err("guarded");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = health
        .check_database(with_token(CheckDatabaseRequest {}, Some("guess")))
        .await
        .expect_err("wrong");
    assert_eq!(err.code(), Code::PermissionDenied);
    health
        .check_database(with_token(CheckDatabaseRequest {}, Some(READER)))
        .await
        .expect("read token reads");
    health
        .check_database(with_token(CheckDatabaseRequest {}, Some(ADMIN)))
        .await
        .expect("admin token reads");

    let mut flags = FlagServiceClient::new(channel.clone());
    let err = flags
        .upsert_flag(with_token(upsert(), Some(READER)))
        .await
        .expect_err("readers cannot write");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = flags
        .get_flag(with_token(
            GetFlagRequest {
                key: "dark_mode".into(),
            },
            None,
        ))
        .await
        .expect_err("read");
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut probes = HealthClient::new(channel.clone());
    probes
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .expect("probes need no token");
    let services = support_reflection::list_services(channel).await;
    assert!(
        services.contains(&"readyd.v1.FlagService".to_owned()),
        "{services:?}"
    );
    server.stop().await;
}

/// The code a call ended with (OK when it succeeded).
fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |status| status.code())
}

#[tokio::test]
async fn segment_and_audit_calls_follow_the_token_rules_and_refusals_change_nothing() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.admin_token = Some(ADMIN.into());
    args.read_token = Some(READER.into());
    let server = TestServer::start(args).await;
    let mut flags = FlagServiceClient::new(server.channel().await);
    let segment = || UpsertSegmentRequest {
        key: "beta-testers".into(),
        constraints: vec![Constraint {
            attribute: "plan".into(),
            operator: "in".into(),
            values: vec!["beta".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    flags
        .upsert_segment(with_token(segment(), Some(ADMIN)))
        .await
        .expect("the admin writes a segment");
    let before = (
        db.count("flag_segments").await,
        db.count("segment_audit").await,
        db.count("feature_flags").await,
    );

    // Writes: the admin token only.
    for token in [None, Some(READER), Some("guess")] {
        let expected = if token.is_none() {
            Code::Unauthenticated
        } else {
            Code::PermissionDenied
        };
        let delete = DeleteSegmentRequest {
            key: "beta-testers".into(),
            ..Default::default()
        };
        assert_eq!(
            code(flags.delete_segment(with_token(delete, token)).await),
            expected,
            "DeleteSegment with {token:?}"
        );
        let mut changed = segment();
        changed.description = "changed".into();
        assert_eq!(
            code(flags.upsert_segment(with_token(changed, token)).await),
            expected,
            "UpsertSegment with {token:?}"
        );
        let apply = ApplyFlagsRequest {
            flags: vec![upsert()],
            segments: vec![segment()],
        };
        assert_eq!(
            code(flags.apply_flags(with_token(apply, token)).await),
            expected,
            "ApplyFlags with {token:?}"
        );
    }
    let after = (
        db.count("flag_segments").await,
        db.count("segment_audit").await,
        db.count("feature_flags").await,
    );
    assert_eq!(after, before, "refused calls changed the database");

    // Reads: the read token (or the admin token), never no token.
    for (token, expected) in [
        (None, Code::Unauthenticated),
        (Some("guess"), Code::PermissionDenied),
        (Some(READER), Code::Ok),
        (Some(ADMIN), Code::Ok),
    ] {
        let get = GetSegmentRequest {
            key: "beta-testers".into(),
        };
        assert_eq!(
            code(flags.get_segment(with_token(get, token)).await),
            expected,
            "GetSegment with {token:?}"
        );
        assert_eq!(
            code(
                flags
                    .list_segments(with_token(ListSegmentsRequest {}, token))
                    .await
            ),
            expected,
            "ListSegments with {token:?}"
        );
        assert_eq!(
            code(
                flags
                    .list_segment_audit(with_token(ListFlagAuditRequest::default(), token))
                    .await
            ),
            expected,
            "ListSegmentAudit with {token:?}"
        );
        assert_eq!(
            code(
                flags
                    .list_flag_audit(with_token(ListFlagAuditRequest::default(), token))
                    .await
            ),
            expected,
            "ListFlagAudit with {token:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    let services = support_reflection::list_services(server.channel().await).await;
    for expected in [
        "grpc.health.v1.Health",
        "readyd.v1.HealthService",
        "readyd.v1.ConfigService",
        "readyd.v1.FlagService",
        "readyd.v1.DeploymentService",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn check_database_runs_the_health_function_and_records_one_row() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    let mut health = HealthServiceClient::new(server.channel().await);
    // The history recorder writes its own rows meanwhile; CheckDatabase's
    // are the ones with no check results.
    let direct_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM system_health WHERE checks = '{}'")
            .fetch_one(&db.pool)
            .await
            .expect("count")
    };
    let before = direct_rows().await;
    let report = health
        .check_database(CheckDatabaseRequest {})
        .await
        .expect("check")
        .into_inner();
    assert_eq!(direct_rows().await, before + 1);
    assert!(report.database_size_bytes > 0);
    assert!(report.active_connections >= 1 && report.active_connections <= report.max_connections);
    assert!(report.record_id > 0);
    assert!(report.checked_at.is_some());
    let instance: Option<String> =
        sqlx::query_scalar("SELECT instance FROM system_health WHERE id = $1")
            .bind(report.record_id)
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(instance.as_deref(), Some("test-instance"));
    server.stop().await;
}

mod support_reflection {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    /// The service names the reflection service lists (what `grpcurl list` shows).
    pub async fn list_services(channel: tonic::transport::Channel) -> Vec<String> {
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.next().await.expect("one response").expect("ok");
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
}
