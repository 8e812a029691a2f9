//! Relay mode with real processes on loopback: a readyd with a database
//! (U), a follower of it (A) and a follower of that follower (B).
//!
//! - a plain-SQL write reaches a WatchFlags subscriber of B; a write
//!   through B is in B's next read; versions are equal on all three; no
//!   follower opens a database session;
//! - following needs the replication token, and nothing is replicated
//!   without it;
//! - with the upstream killed, followers keep serving, say STALE after
//!   --stale-after, and catch up when it is back; a follower started while
//!   its upstream is down serves its snapshot on disk; a follower cut off
//!   from a running upstream resumes without a snapshot;
//! - sensitive values reach a follower and stay redacted to its non-admin
//!   readers, while the upstream's admin token shows them;
//! - a follower that stops reading gets a fresh snapshot once it reads
//!   again, while the others get every change meanwhile; a follower that
//!   goes away gives its place back;
//! - database reads (audit, deployments, history) go up, and a follower
//!   serving another environment's follower widens what it holds.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::deployment_service_client::DeploymentServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use readyd::api::pb::readyd::v1::replication_service_client::ReplicationServiceClient;
use support::daemon::{DaemonCommand, REPLICATION_TOKEN, follower};
use support::proxy::{Target, TcpProxy};
use support::{ADMIN_TOKEN, TestDb, next};
use tonic::Code;
use tonic::transport::Channel;

/// A read token, for the tests that guard reads.
const READ_TOKEN: &str = "test-read-token";

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// The prod upstream on `db` these tests start, which also takes the admin
/// token (writes, and the reads that show sensitive values).
fn upstream(db: &TestDb, data_dir: &std::path::Path) -> DaemonCommand {
    support::daemon::upstream(&db.url, "prod", data_dir).env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
}

async fn evaluate(channel: &Channel, key: &str) -> Result<pb::EvaluateFlagResponse, tonic::Status> {
    FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.into(),
            context: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The version a readyd's flag list was read at.
async fn version(channel: &Channel) -> i64 {
    FlagServiceClient::new(channel.clone())
        .list_flags(pb::ListFlagsRequest::default())
        .await
        .expect("list flags")
        .into_inner()
        .version
}

/// Waits until `done` holds for `key`'s evaluation on `channel`.
async fn evaluate_until(
    channel: &Channel,
    key: &str,
    what: &str,
    done: impl Fn(&pb::EvaluateFlagResponse) -> bool,
) -> pb::EvaluateFlagResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = evaluate(channel, key).await;
        match &answer {
            Ok(answer) if done(answer) => return answer.clone(),
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => panic!("{what}: {status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sessions of readyd on `db`.
async fn readyd_sessions(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'readyd'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("sessions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_follower_is_as_current_as_the_database_and_writes_through_it() {
    let db = TestDb::new().await;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path())
        .args(["--db-pool-size", "2"])
        .start()
        .await;
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .start()
        .await;
    let b = follower(&a.url(), "prod", "follower-b", dirs[2].path())
        .start()
        .await;
    let (u_ch, a_ch, b_ch) = (u.channel().await, a.channel().await, b.channel().await);

    // A plain-SQL write reaches a subscriber of B.
    let mut watch = FlagServiceClient::new(b_ch.clone())
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch B")
        .into_inner();
    let first = next(&mut watch).await.expect("snapshot");
    assert!(matches!(
        first.event,
        Some(pb::watch_flags_response::Event::Snapshot(_))
    ));
    let written: i64 = sqlx::query_scalar(
        "UPDATE feature_flags SET enabled = true, rollout_percentage = 100 WHERE key = 'dark_mode' RETURNING version",
    )
    .fetch_one(&db.pool)
    .await
    .expect("plain SQL");
    let change = loop {
        let message = next(&mut watch).await.expect("open");
        if let Some(pb::watch_flags_response::Event::Change(change)) = message.event
            && change.version >= written
        {
            break change;
        }
    };
    assert_eq!(change.version, written, "the version is the database's");
    match change.change {
        Some(pb::flag_change::Change::Upserted(flag)) => {
            assert_eq!(flag.key, "dark_mode");
            assert!(flag.enabled);
        }
        other => panic!("an upsert of dark_mode, not {other:?}"),
    }

    // A write through B (forwarded twice) is in B's very next read.
    let upserted = FlagServiceClient::new(b_ch.clone())
        .upsert_flag(support::admin(pb::UpsertFlagRequest {
            key: "through_b".into(),
            enabled: Some(true),
            ..Default::default()
        }))
        .await
        .expect("a write through B")
        .into_inner();
    let flag = upserted.flag.expect("the flag");
    let read = evaluate(&b_ch, "through_b")
        .await
        .expect("B has it at once");
    assert_eq!(read.variant, "on");
    assert_eq!(read.flag_version, flag.version);
    // The write's actor is the caller's, recorded by the database.
    let updated_by: String =
        sqlx::query_scalar("SELECT updated_by FROM feature_flags WHERE key = 'through_b'")
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(updated_by, "admin");

    // Versions equal everywhere.
    let at = version(&u_ch).await;
    for (name, channel) in [("A", &a_ch), ("B", &b_ch)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while version(channel).await != at {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never reached {at}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let answers = [
        evaluate(&u_ch, "dark_mode").await.expect("U"),
        evaluate(&a_ch, "dark_mode").await.expect("A"),
        evaluate(&b_ch, "dark_mode").await.expect("B"),
    ];
    assert_eq!(answers[0], answers[1], "a follower answers as its upstream");
    assert_eq!(answers[0], answers[2]);

    // Followers opened no database session: the database sees only U's
    // (a pool of 2 and the listener).
    assert!(
        readyd_sessions(&db).await <= 3,
        "only the upstream's sessions"
    );
    for daemon in [&a, &b] {
        let log =
            std::fs::read_to_string(format!("/proc/{}/environ", daemon.pid())).unwrap_or_default();
        assert!(
            !log.contains("DATABASE_URL="),
            "no database given to a follower"
        );
    }
    for daemon in [b, a, u] {
        daemon.stop().await;
    }
}

#[tokio::test]
async fn following_needs_the_replication_token() {
    let db = TestDb::new().await;
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path()).start().await;
    let channel = u.channel().await;
    let follow = |token: Option<&str>| {
        let mut request = tonic::Request::new(pb::FollowRequest {
            protocol: readyd::relay::PROTOCOL,
            environments: vec!["prod".into()],
            since_version: None,
            instance: "intruder".into(),
        });
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let channel = channel.clone();
        async move { ReplicationServiceClient::new(channel).follow(request).await }
    };
    assert_eq!(
        follow(None).await.expect_err("no token").code(),
        Code::Unauthenticated
    );
    assert_eq!(
        follow(Some("wrong")).await.expect_err("wrong token").code(),
        Code::PermissionDenied
    );
    let mut stream = follow(Some(REPLICATION_TOKEN))
        .await
        .expect("the token")
        .into_inner();
    let hello = stream.message().await.expect("message").expect("hello");
    assert!(matches!(
        hello.event,
        Some(pb::follow_response::Event::Hello(_))
    ));
    // The admin token works too.
    follow(Some(ADMIN_TOKEN)).await.expect("the admin token");
    // Another protocol is refused, naming both.
    let mut request = tonic::Request::new(pb::FollowRequest {
        protocol: readyd::relay::PROTOCOL + 1,
        environments: vec!["prod".into()],
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {REPLICATION_TOKEN}")
            .parse()
            .expect("header"),
    );
    let refused = ReplicationServiceClient::new(channel.clone())
        .follow(request)
        .await
        .expect_err("another protocol");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("protocol"), "{refused:?}");

    // A follower with a wrong token does not start, and says why.
    let output = tokio::process::Command::new(support::daemon::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .args(["--environment", "prod", "--db-wait", "5s"])
        .arg("--data-dir")
        .arg(dirs[1].path())
        .env_remove("DATABASE_URL")
        .env_remove("READYD_ADMIN_TOKEN")
        .env("READYD_UPSTREAM", u.url())
        .env("READYD_REPLICATION_TOKEN", "not-the-token")
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        !stderr.contains("not-the-token"),
        "the token is never shown: {stderr}"
    );
    assert!(
        std::fs::read_dir(dirs[1].path())
            .map(|entries| entries.count())
            .unwrap_or(0)
            == 0,
        "nothing replicated, nothing saved"
    );
    u.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_serving_without_their_upstream_and_catch_up() {
    let db = TestDb::new().await;
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    sqlx::query("UPDATE feature_flags SET enabled = true WHERE key = 'ai_insights'")
        .execute(&db.pool)
        .await
        .expect("seed");
    let u = upstream(&db, dirs[0].path()).start().await;
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .args([
            "--stale-after",
            "1s",
            "--database-check",
            "interval=200ms&timeout=500ms&failures=1",
        ])
        .start()
        .await;
    let a_ch = a.channel().await;
    evaluate_until(&a_ch, "ai_insights", "current at A", |answer| {
        answer.variant == "on"
    })
    .await;
    // Its snapshot (and the upstream's token verifiers) are saved.
    let saved = readyd::snapshot_file::path_for(dirs[1].path(), "prod");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !saved.exists() || !readyd::relay::verifiers::path_for(dirs[1].path(), "prod").exists() {
        assert!(tokio::time::Instant::now() < deadline, "nothing saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The upstream is killed: A keeps serving, then says STALE.
    u.kill().await;
    let stale = evaluate_until(&a_ch, "ai_insights", "stale at A", |answer| {
        answer.reason() == pb::EvaluationReason::Stale
    })
    .await;
    assert_eq!(stale.variant, "on", "the last known value");
    let refused = FlagServiceClient::new(a_ch.clone())
        .upsert_flag(support::admin(pb::UpsertFlagRequest {
            key: "while_away".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no upstream, no write");
    assert_eq!(refused.code(), Code::Unavailable);
    let report = HealthServiceClient::new(a_ch.clone())
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(report.status(), pb::HealthStatus::Degraded, "{report:?}");
    assert!(report.stale_for.is_some());

    // A follower started while its upstream is down serves its snapshot.
    a.kill().await;
    let a = follower("http://127.0.0.1:1", "prod", "follower-a", dirs[1].path())
        .args(["--db-wait", "1s", "--stale-after", "1s"])
        .start()
        .await;
    let a_ch = a.channel().await;
    let from_disk = evaluate(&a_ch, "ai_insights")
        .await
        .expect("served from disk");
    assert_eq!(from_disk.variant, "on");
    assert_eq!(from_disk.reason(), pb::EvaluationReason::Stale);
    // Admin still recognised (the verifiers were saved too): an admin read
    // of another environment is forwarded, and fails as the upstream is away.
    let other = ConfigServiceClient::new(a_ch.clone())
        .list_configs(support::admin(pb::ListConfigsRequest {
            all_environments: true,
            ..Default::default()
        }))
        .await
        .expect_err("the upstream is away");
    assert_eq!(other.code(), Code::Unavailable, "{other:?}");
    a.stop().await;

    // The upstream back, a follower catches up with it.
    let u = upstream(&db, dirs[0].path()).start().await;
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .start()
        .await;
    let a_ch = a.channel().await;
    sqlx::query("UPDATE feature_flags SET enabled = false WHERE key = 'ai_insights'")
        .execute(&db.pool)
        .await
        .expect("update");
    let current = evaluate_until(&a_ch, "ai_insights", "current again", |answer| {
        answer.variant == "off" && answer.reason() != pb::EvaluationReason::Stale
    })
    .await;
    assert_eq!(current.reason(), pb::EvaluationReason::Disabled);
    a.stop().await;
    u.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_a_running_upstream_resumes_without_a_snapshot() {
    let db = TestDb::new().await;
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path()).start().await;
    let proxy = TcpProxy::start(Target::Tcp(u.addr.to_string())).await;
    let mut a = follower(
        &format!("http://{}", proxy.addr),
        "prod",
        "follower-a",
        dirs[1].path(),
    )
    .start()
    .await;
    let a_ch = a.channel().await;
    let mut watch = FlagServiceClient::new(a_ch.clone())
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    next(&mut watch).await.expect("snapshot");

    proxy.cut();
    a.wait_for_log("lost the upstream", Duration::from_secs(30))
        .await;
    // Changes while cut off.
    for enabled in [true, false, true] {
        sqlx::query("UPDATE feature_flags SET enabled = $1 WHERE key = 'beta_features'")
            .bind(enabled)
            .execute(&db.pool)
            .await
            .expect("update");
    }
    let last: i64 =
        sqlx::query_scalar("SELECT version FROM feature_flags WHERE key = 'beta_features'")
            .fetch_one(&db.pool)
            .await
            .expect("version");
    proxy.heal();
    a.wait_for_log("following the upstream", Duration::from_secs(30))
        .await;
    // Every change arrives one by one: resumed, no snapshot.
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        let message = next(&mut watch).await.expect("open");
        match message.event {
            Some(pb::watch_flags_response::Event::Change(change)) => seen.push(change.version),
            other => panic!("only changes after a resume, not {other:?}"),
        }
    }
    assert_eq!(seen.len(), 3, "three changes: {seen:?}");
    let lines = a.log_lines().await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("following the upstream") && line.contains("resumed")),
        "{lines:#?}"
    );
    a.stop().await;
    u.stop().await;
}

#[tokio::test]
async fn sensitive_values_reach_a_follower_and_stay_redacted_to_its_non_admin_readers() {
    let db = TestDb::new().await;
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path())
        .env("READYD_READ_TOKEN", READ_TOKEN)
        .start()
        .await;
    ConfigServiceClient::new(u.channel().await)
        .set_config(support::admin(pb::SetConfigRequest {
            key: "db_password".into(),
            environment: "prod".into(),
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("hunter2".into())),
            }),
            is_sensitive: Some(true),
            ..Default::default()
        }))
        .await
        .expect("set a secret");
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .start()
        .await;
    let a_ch = a.channel().await;
    let get = |token: Option<&'static str>| {
        let channel = a_ch.clone();
        async move {
            let message = pb::GetConfigRequest {
                key: "db_password".into(),
            };
            let request = match token {
                Some(token) => with_token(message, token),
                None => tonic::Request::new(message),
            };
            ConfigServiceClient::new(channel).get_config(request).await
        }
    };
    // The upstream's read token guards reads here too.
    assert_eq!(
        get(None).await.expect_err("no token").code(),
        Code::Unauthenticated
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let for_reader = loop {
        match get(Some(READ_TOKEN)).await {
            Ok(answer) => break answer.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                assert!(tokio::time::Instant::now() < deadline, "never replicated");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    let entry = for_reader.entry.expect("entry");
    assert!(entry.redacted, "{entry:?}");
    assert!(entry.value.is_none(), "{entry:?}");
    let for_admin = get(Some(ADMIN_TOKEN)).await.expect("admin").into_inner();
    let entry = for_admin.entry.expect("entry");
    assert!(!entry.redacted);
    assert_eq!(
        entry.value,
        Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("hunter2".into()))
        })
    );
    // The follower holds no admin token, and neither its logs nor its
    // files show the secret in clear... except the snapshot, which holds
    // values as the database does (0600).
    let lines = a.stop().await;
    assert!(!lines.iter().any(|line| line.contains("hunter2")));
    assert!(!lines.iter().any(|line| line.contains(ADMIN_TOKEN)));
    let verifiers = std::fs::read(readyd::relay::verifiers::path_for(dirs[1].path(), "prod"))
        .expect("verifiers saved");
    assert!(
        !verifiers
            .windows(ADMIN_TOKEN.len())
            .any(|w| w == ADMIN_TOKEN.as_bytes())
    );
    u.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_reads_go_up_and_another_environment_is_held_on_demand() {
    let db = TestDb::new().await;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("dir"));
    sqlx::query(
        "INSERT INTO app_config (key, environment, value) VALUES ('region', 'staging', '\"eu-staging\"'), ('region', 'prod', '\"eu-prod\"')",
    )
    .execute(&db.pool)
    .await
    .expect("rows");
    let u = upstream(&db, dirs[0].path())
        .args(["--history-interval", "1s"])
        .start()
        .await;
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .args(["--history-interval", "1s"])
        .start()
        .await;
    // B serves staging and follows A (prod): A widens what it holds.
    let b = follower(&a.url(), "staging", "follower-b", dirs[2].path())
        .start()
        .await;
    let b_ch = b.channel().await;
    let region = ConfigServiceClient::new(b_ch.clone())
        .get_config(pb::GetConfigRequest {
            key: "region".into(),
        })
        .await
        .expect("staging's row at B")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(
        region.value,
        Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("eu-staging".into()))
        })
    );

    // Every row of every environment, asked of B in pages: forwarded up,
    // page by page, the same rows the upstream lists in one answer.
    let whole = ConfigServiceClient::new(u.channel().await)
        .list_configs(support::admin(pb::ListConfigsRequest {
            all_environments: true,
            ..Default::default()
        }))
        .await
        .expect("every row at the upstream")
        .into_inner()
        .entries;
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ConfigServiceClient::new(b_ch.clone())
            .list_configs(support::admin(pb::ListConfigsRequest {
                all_environments: true,
                page_size: 3,
                page_token: page_token.clone(),
                ..Default::default()
            }))
            .await
            .expect("a page of every row through B")
            .into_inner();
        assert!(page.entries.len() <= 3);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let rows = |entries: &[pb::ConfigEntry]| -> Vec<(String, String)> {
        entries
            .iter()
            .map(|entry| (entry.key.clone(), entry.environment.clone()))
            .collect()
    };
    assert!(whole.len() > 3, "{whole:?}");
    assert_eq!(rows(&paged), rows(&whole));

    // The audit trail, deployments and history come from the database.
    let deployed = DeploymentServiceClient::new(b_ch.clone())
        .record_deployment(support::admin(pb::RecordDeploymentRequest {
            version: "2.0.0".into(),
            environment: "staging".into(),
            deployed_by: "ci".into(),
            ..Default::default()
        }))
        .await
        .expect("record a deployment through B")
        .into_inner();
    assert!(deployed.deployment.is_some());
    let listed = DeploymentServiceClient::new(b_ch.clone())
        .list_deployments(pb::ListDeploymentsRequest {
            environment: "staging".into(),
            ..Default::default()
        })
        .await
        .expect("deployments through B")
        .into_inner();
    assert_eq!(listed.deployments.len(), 1);
    let audit = ConfigServiceClient::new(b_ch.clone())
        .list_config_audit(support::admin(pb::ListConfigAuditRequest {
            key: "region".into(),
            ..Default::default()
        }))
        .await
        .expect("audit through B")
        .into_inner();
    assert!(!audit.entries.is_empty());
    let refused = ConfigServiceClient::new(b_ch.clone())
        .list_config_audit(pb::ListConfigAuditRequest::default())
        .await
        .expect_err("the upstream decides, by the caller's own token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let history = HealthServiceClient::new(b_ch.clone())
            .list_health_history(pb::ListHealthHistoryRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("history through B")
            .into_inner();
        let instances: std::collections::BTreeSet<String> = history
            .records
            .iter()
            .map(|record| record.instance.clone())
            .collect();
        if ["upstream", "follower-a", "follower-b"]
            .iter()
            .all(|name| instances.contains(*name))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history of every instance: {instances:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for daemon in [b, a, u] {
        daemon.stop().await;
    }
}

/// SIGTERM on a follower ends its streams and it exits 0 (its upstream
/// unaffected).
#[tokio::test]
async fn a_follower_shuts_down_cleanly() {
    let db = TestDb::new().await;
    let dirs = [(); 2].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path()).start().await;
    let mut a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .start()
        .await;
    a.signal(Signal::SIGTERM);
    let status = a.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    evaluate(&u.channel().await, "dark_mode")
        .await
        .expect("the upstream serves on");
    u.stop().await;
}

/// Opens a Follow stream on `channel` with the replication token.
async fn try_follow(
    channel: &Channel,
    instance: &str,
) -> Result<tonic::Streaming<pb::FollowResponse>, tonic::Status> {
    Ok(ReplicationServiceClient::new(channel.clone())
        .follow(with_token(
            pb::FollowRequest {
                protocol: readyd::relay::PROTOCOL,
                environments: vec!["prod".into()],
                since_version: None,
                instance: instance.into(),
            },
            REPLICATION_TOKEN,
        ))
        .await?
        .into_inner())
}

/// The same, which must be admitted.
async fn follow(channel: &Channel, instance: &str) -> tonic::Streaming<pb::FollowResponse> {
    try_follow(channel, instance).await.expect("follow")
}

/// Reads `stream` until `done` holds for a message (bounded in time).
async fn read_until(
    stream: &mut tonic::Streaming<pb::FollowResponse>,
    what: &str,
    mut done: impl FnMut(&pb::follow_response::Event) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let message = stream
                .message()
                .await
                .unwrap_or_else(|status| panic!("{what}: {status:?}"))
                .unwrap_or_else(|| panic!("{what}: the stream ended"));
            if message.event.as_ref().is_some_and(&mut done) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 60s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_gets_a_fresh_snapshot_without_slowing_the_others() {
    use pb::follow_response::Event;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("dir");
    let u = upstream(&db, dir.path()).start().await;
    // Two followers on connections of their own: one stops reading.
    let mut slow = follow(&u.channel().await, "slow").await;
    let mut fast = follow(&u.channel().await, "fast").await;
    for (stream, name) in [(&mut slow, "slow"), (&mut fast, "fast")] {
        read_until(
            stream,
            name,
            |event| matches!(event, Event::Snapshot(snapshot) if snapshot.last),
        )
        .await;
    }

    // More changes than the upstream keeps for a follower, and more bytes
    // than HTTP/2 flow control and the stream's buffer hold for one that
    // does not read.
    sqlx::query(
        "INSERT INTO feature_flags (key, value_type, on_value, off_value) \
         SELECT 'bulk-' || i, 'string', to_jsonb(repeat('x', 4000)), '\"\"' \
         FROM generate_series(1, 2500) AS i",
    )
    .execute(&db.pool)
    .await
    .expect("bulk insert");
    sqlx::query("INSERT INTO feature_flags (key, enabled) VALUES ('marker', true)")
        .execute(&db.pool)
        .await
        .expect("marker");
    let marker_version: i64 =
        sqlx::query_scalar("SELECT version FROM feature_flags WHERE key = 'marker'")
            .fetch_one(&db.pool)
            .await
            .expect("marker version");

    // The reading follower reaches the marker while the other one still
    // reads nothing: change by change or, when this test reads it slower
    // than the upstream sends (a busy machine), by a fresh snapshot of its
    // own; either way the follower that stopped reading does not hold it up.
    read_until(&mut fast, "fast", |event| match event {
        Event::Change(change) => change.version == marker_version,
        Event::Snapshot(snapshot) => snapshot.last && snapshot.version >= marker_version,
        _ => false,
    })
    .await;

    // The one that fell behind is sent a fresh snapshot that holds the
    // marker, instead of the changes it missed.
    let mut snapshot_rows = 0;
    let mut in_snapshot = false;
    let mut changes_read = 0;
    read_until(&mut slow, "slow", |event| match event {
        Event::Change(_) => {
            changes_read += 1;
            false
        }
        Event::Snapshot(snapshot) => {
            if snapshot.first {
                in_snapshot = true;
                snapshot_rows = 0;
            }
            snapshot_rows += snapshot.rows.len();
            in_snapshot
                && snapshot.last
                && snapshot.version >= marker_version
                && snapshot_rows >= 2501
        }
        _ => false,
    })
    .await;
    assert!(
        changes_read < 2501,
        "the follower that fell behind was sent a snapshot, not every change ({changes_read} read)"
    );
    u.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_goes_away_gives_its_place_back() {
    use pb::follow_response::Event;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("dir");
    let u = upstream(&db, dir.path())
        .args(["--max-follow-streams", "1"])
        .start()
        .await;
    let channel = u.channel().await;
    let mut first = follow(&channel, "first").await;
    read_until(
        &mut first,
        "first",
        |event| matches!(event, Event::Snapshot(snapshot) if snapshot.last),
    )
    .await;
    let refused = try_follow(&channel, "second")
        .await
        .expect_err("refused while the first holds the only place");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // The follower goes away (its stream reset); the upstream notices and
    // admits the next one.
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match try_follow(&channel, "second").await {
                Ok(stream) => return stream,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("second: {status:?}"),
            }
        }
    })
    .await
    .expect("the first follower's place is given back within 60s");
    read_until(
        &mut second,
        "second",
        |event| matches!(event, Event::Snapshot(snapshot) if snapshot.last),
    )
    .await;
    u.stop().await;
}

/// Segments replicate like flags: a follower (and a follower started
/// after the segment exists, from its upstream's snapshot) evaluates a rule
/// that names one, and follows the segment's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_replicate_to_followers_in_snapshots_and_changes() {
    let db = TestDb::new().await;
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("dir"));
    let u = upstream(&db, dirs[0].path()).start().await;
    let a = follower(&u.url(), "prod", "follower-a", dirs[1].path())
        .start()
        .await;
    let a_ch = a.channel().await;
    let mut through_a = FlagServiceClient::new(a_ch.clone());
    let segment = |plans: &[&str]| pb::UpsertSegmentRequest {
        key: "paying".into(),
        constraints: vec![pb::Constraint {
            attribute: "plan".into(),
            operator: "in".into(),
            values: plans.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    through_a
        .upsert_segment(support::admin(segment(&["pro"])))
        .await
        .expect("a segment through A");
    through_a
        .upsert_flag(support::admin(pb::UpsertFlagRequest {
            key: "reports".into(),
            enabled: Some(true),
            rollout_percentage: Some(0),
            targeting: Some(pb::FlagTargeting {
                rules: vec![pb::TargetingRule {
                    segments: vec!["paying".into()],
                    serve: Some(pb::Serve {
                        serve: Some(pb::serve::Serve::Variant("on".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("a flag through A");
    let for_plan = |plan: &str| {
        let mut map = serde_json::Map::new();
        map.insert("plan".into(), serde_json::json!(plan));
        pb::EvaluateFlagRequest {
            key: "reports".into(),
            context: Some(pb::EvaluationContext {
                user_id: "u1".into(),
                roles: Vec::new(),
                attributes: Some(readyd::api::convert::to_pb_struct(&map)),
            }),
            explain: false,
        }
    };
    let variant = |channel: Channel, plan: &'static str| async move {
        FlagServiceClient::new(channel)
            .evaluate_flag(for_plan(plan))
            .await
            .expect("evaluate")
            .into_inner()
            .variant
    };
    assert_eq!(variant(a_ch.clone(), "pro").await, "on");
    assert_eq!(variant(a_ch.clone(), "team").await, "off");

    // A follower started now gets the segment in its first snapshot.
    let b = follower(&u.url(), "prod", "follower-b", dirs[2].path())
        .start()
        .await;
    let b_ch = b.channel().await;
    let segments = FlagServiceClient::new(b_ch.clone())
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .expect("list on B")
        .into_inner()
        .segments;
    assert_eq!(segments.len(), 1);
    assert_eq!(variant(b_ch.clone(), "pro").await, "on");

    // A change through B reaches A.
    let written = FlagServiceClient::new(b_ch.clone())
        .upsert_segment(support::admin(segment(&["pro", "team"])))
        .await
        .expect("update through B")
        .into_inner()
        .segment
        .expect("segment")
        .version;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while version(&a_ch).await < written {
        assert!(tokio::time::Instant::now() < deadline, "A never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(variant(a_ch, "team").await, "on");
    assert_eq!(variant(b_ch, "team").await, "on");
}
