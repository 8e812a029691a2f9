//! readyd through database outages, as real processes on a private
//! PostgreSQL cluster the tests stop and start: answers stay correct and
//! say STALE, nothing fails that needs no database, and the data is current
//! again soon after the database is back, without a restart.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use readyd::api::pb::flagd::evaluation_v2 as flagd;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use readyd::config::ConfigRow;
use readyd::flags::{Flag, ValueType};
use readyd::snapshot_file;
use readyd::state::Snapshot;
use support::cluster::Cluster;
use support::daemon::{Daemon, DaemonCommand, binary};
use support::metrics::scrape;
use support::proxy::{Target, TcpProxy};
use support::{ADMIN_TOKEN, TestDb, admin, wait_for_probe};
use tonic::transport::Channel;

const ENVIRONMENT: &str = "test";

/// `readyd serve` on `database_url`, keeping its snapshot in `data_dir`,
/// quick to notice an outage.
fn readyd(database_url: &str, data_dir: &Path) -> DaemonCommand {
    DaemonCommand::serve()
        .env("DATABASE_URL", database_url)
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .arg_path("--data-dir", data_dir)
        // Long enough that a busy machine never makes a running database
        // look unreachable; a start with the database down waits it out.
        .args(["--environment", ENVIRONMENT, "--db-wait", "5s"])
        .args([
            "--database-check",
            "interval=200ms&timeout=500ms&failures=1",
        ])
}

async fn evaluate(channel: &Channel, key: &str, user: &str) -> pb::EvaluateFlagResponse {
    FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: key.into(),
            context: Some(pb::EvaluationContext {
                user_id: user.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("evaluation")
        .into_inner()
}

/// Evaluates until `done` holds for the answer, for at most `within`.
async fn evaluate_until(
    channel: &Channel,
    key: &str,
    within: Duration,
    done: impl Fn(&pb::EvaluateFlagResponse) -> bool,
) -> pb::EvaluateFlagResponse {
    let deadline = Instant::now() + within;
    loop {
        let answer = FlagServiceClient::new(channel.clone())
            .evaluate_flag(pb::EvaluateFlagRequest {
                explain: false,
                key: key.into(),
                context: Some(pb::EvaluationContext {
                    user_id: "someone".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(tonic::Response::into_inner);
        match &answer {
            Ok(answer) if done(answer) => return answer.clone(),
            // A flag just written by SQL may not have reached readyd yet.
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => panic!("evaluation: {status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "still {answer:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_stale(answer: &pb::EvaluateFlagResponse) -> bool {
    answer.reason() == pb::EvaluationReason::Stale
}

async fn health_report(channel: &Channel) -> pb::HealthReport {
    HealthServiceClient::new(channel.clone())
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("health")
        .into_inner()
}

/// Everything a start from the saved snapshot must answer: the last values,
/// all STALE (readyd's API, the flagd protocol, config), DEGRADED with the
/// snapshot's age, ready, the database probe failing.
async fn assert_serving_stale(daemon: &Daemon, min_age: Duration) {
    let channel = daemon.channel().await;
    let answer = evaluate(&channel, "checkout", "someone").await;
    assert_eq!(answer.reason(), pb::EvaluationReason::Stale, "{answer:?}");
    assert_eq!(answer.variant, "on");

    let resolved = flagd::service_client::ServiceClient::new(channel.clone())
        .resolve_boolean(flagd::ResolveBooleanRequest {
            flag_key: "checkout".into(),
            context: None,
        })
        .await
        .expect("flagd resolve")
        .into_inner();
    assert_eq!(
        (resolved.value, resolved.reason.as_str()),
        (Some(true), "STALE")
    );

    let config = ConfigServiceClient::new(channel.clone())
        .get_config(pb::GetConfigRequest {
            key: "greeting".into(),
        })
        .await
        .expect("config")
        .into_inner();
    assert!(config.stale, "{config:?}");
    let value = config.entry.and_then(|entry| entry.value);
    assert_eq!(
        value.and_then(|value| value.kind),
        Some(prost_types::value::Kind::StringValue("hello".into()))
    );

    wait_for_probe(channel.clone(), "readiness", ServingStatus::Serving).await;
    wait_for_probe(channel.clone(), "dep.database", ServingStatus::NotServing).await;
    let report = health_report(&channel).await;
    assert_eq!(report.status(), pb::HealthStatus::Degraded, "{report:?}");
    let age = report.stale_for.expect("stale_for is set");
    let age = Duration::new(age.seconds as u64, age.nanos as u32);
    assert!(
        age >= min_age,
        "stale for {age:?}, expected at least {min_age:?}"
    );
}

/// `readyd_snapshot_stale_seconds` from the metrics endpoint at `addr`.
async fn stale_seconds(addr: SocketAddr) -> f64 {
    scrape(addr)
        .await
        .lines()
        .find_map(|line| line.strip_prefix("readyd_snapshot_stale_seconds "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A flag and a config row, written by plain SQL.
async fn seed(cluster: &Cluster) {
    let mut db = cluster.connect().await;
    sqlx::query("INSERT INTO feature_flags (key, enabled, rollout_percentage) VALUES ('checkout', true, 100)")
        .execute(&mut db)
        .await
        .expect("flag");
    sqlx::query(
        "INSERT INTO app_config (key, environment, value) VALUES ('greeting', '*', '\"hello\"')",
    )
    .execute(&mut db)
    .await
    .expect("config");
}

/// Waits until the snapshot on disk holds at least `version`.
async fn wait_for_saved(data_dir: &Path, version: i64) -> snapshot_file::SavedSnapshot {
    let path = snapshot_file::path_for(data_dir, ENVIRONMENT);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(saved) = snapshot_file::read(&path, ENVIRONMENT)
            && saved.snapshot.version >= version
        {
            return saved;
        }
        assert!(Instant::now() < deadline, "snapshot not saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killed_while_the_database_is_down_it_restarts_stale_then_catches_up() {
    let mut cluster = Cluster::start().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let daemon = readyd(cluster.url(), data_dir.path())
        .args(["--stale-after", "1s", "--metrics-listen", "127.0.0.1:0"])
        .start()
        .await;
    let metrics = daemon.metrics_addr();
    seed(&cluster).await;
    let channel = daemon.channel().await;
    let fresh = evaluate_until(&channel, "checkout", Duration::from_secs(10), |answer| {
        answer.variant == "on"
    })
    .await;
    assert_eq!(fresh.reason(), pb::EvaluationReason::Static);
    // The file that holds the seed's last change (the config row, written
    // after the flag): nothing changes after it, so it is the one kept.
    let seeded: i64 = sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&mut cluster.connect().await)
        .await
        .expect("the last version");
    let saved = wait_for_saved(data_dir.path(), seeded).await;

    // The database goes away: after --stale-after, answers say so.
    cluster.stop().await;
    let stale = evaluate_until(&channel, "checkout", Duration::from_secs(15), is_stale).await;
    assert_eq!(stale.variant, "on", "the last known value stands");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stale_seconds(metrics).await < 1.0 {
        assert!(Instant::now() < deadline, "the staleness metric stays 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = FlagServiceClient::new(channel.clone())
        .upsert_flag(admin(pb::UpsertFlagRequest {
            key: "checkout".into(),
            enabled: Some(false),
            ..Default::default()
        }))
        .await
        .expect_err("no database, no change");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // Killed outright, and started again while the database is still down.
    daemon.kill().await;
    let daemon = readyd(cluster.url(), data_dir.path()).start().await;
    assert_serving_stale(&daemon, Duration::from_secs(1)).await;
    let kept = wait_for_saved(data_dir.path(), 0).await;
    assert_eq!(
        kept.written_at, saved.written_at,
        "a snapshot read back is not saved again as if it were new"
    );

    // The database returns: current again without a restart, and saved
    // again though nothing changed (the file's time is the data's age).
    cluster.restart().await;
    let channel = daemon.channel().await;
    evaluate_until(&channel, "checkout", Duration::from_secs(15), |answer| {
        !is_stale(answer)
    })
    .await;
    let path = snapshot_file::path_for(data_dir.path(), ENVIRONMENT);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resaved = snapshot_file::read(&path, ENVIRONMENT).expect("snapshot");
        if resaved.written_at > saved.written_at {
            assert_eq!(resaved.snapshot.version, saved.snapshot.version);
            break;
        }
        assert!(Instant::now() < deadline, "not saved again once current");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A change made by plain SQL arrives as usual.
    sqlx::query("UPDATE feature_flags SET enabled = false WHERE key = 'checkout'")
        .execute(&mut cluster.connect().await)
        .await
        .expect("update");
    let current = evaluate_until(&channel, "checkout", Duration::from_secs(15), |answer| {
        !is_stale(answer) && answer.variant == "off"
    })
    .await;
    assert_eq!(current.reason(), pb::EvaluationReason::Disabled);
    wait_for_probe(channel.clone(), "dep.database", ServingStatus::Serving).await;
    let report = health_report(&channel).await;
    assert_eq!(report.stale_for, None, "{report:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn thirty_seconds_without_the_database_under_load_fail_no_evaluation() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut cluster = Cluster::start().await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let daemon = readyd(cluster.url(), data_dir.path()).start().await;
    seed(&cluster).await;
    let channel = daemon.channel().await;
    evaluate_until(&channel, "checkout", Duration::from_secs(10), |answer| {
        answer.variant == "on"
    })
    .await;

    // Continuous evaluations from this process, on connections of their own.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, stale, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut load = Vec::new();
    for worker in 0..4 {
        let channel = daemon.channel().await;
        let (stop, ok, stale, failed) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&stale),
            Arc::clone(&failed),
        );
        load.push(tokio::spawn(async move {
            let mut client = FlagServiceClient::new(channel);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answer = client
                    .evaluate_flag(pb::EvaluateFlagRequest {
                        explain: false,
                        key: "checkout".into(),
                        context: Some(pb::EvaluationContext {
                            user_id: format!("user-{worker}-{n}"),
                            ..Default::default()
                        }),
                    })
                    .await;
                match answer {
                    Ok(answer) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if is_stale(answer.get_ref()) {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(status) => {
                        eprintln!("evaluation failed: {status:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let down_at = Instant::now();
    cluster.stop().await;
    let refused = ConfigServiceClient::new(channel.clone())
        .set_config(admin(pb::SetConfigRequest {
            key: "greeting".into(),
            value: Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("bye".into())),
            }),
            ..Default::default()
        }))
        .await
        .expect_err("no database, no change");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let report = health_report(&channel).await;
    assert!(
        report.status() != pb::HealthStatus::Unhealthy,
        "with data in memory an outage degrades, never more: {report:?}"
    );
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let stale_during_outage = stale.load(Ordering::Relaxed);

    cluster.restart().await;
    let back_at = Instant::now();
    sqlx::query("UPDATE feature_flags SET rollout_percentage = 0 WHERE key = 'checkout'")
        .execute(&mut cluster.connect().await)
        .await
        .expect("update");
    let current = evaluate_until(&channel, "checkout", Duration::from_secs(30), |answer| {
        !is_stale(answer) && answer.variant == "off"
    })
    .await;
    let resynchronised = back_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "outage {OUTAGE:?}: {ok} evaluations answered ({stale_during_outage} STALE), {failed} failed; \
         resynchronised {resynchronised:?} after the database was back"
    );
    assert_eq!(current.reason(), pb::EvaluationReason::Default);
    assert_eq!(failed, 0, "no evaluation may fail for want of the database");
    assert!(ok > 0);
    assert!(
        stale_during_outage > 0,
        "answers said STALE during the outage"
    );
    assert!(
        resynchronised < Duration::from_secs(5),
        "resynchronised after {resynchronised:?}"
    );
    daemon.stop().await;
}

/// Writes `bytes` where readyd looks for this environment's snapshot.
fn plant_snapshot(data_dir: &Path, bytes: &[u8]) {
    let path = snapshot_file::path_for(data_dir, ENVIRONMENT);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("snapshots dir");
    std::fs::write(path, bytes).expect("write snapshot");
}

/// A database URL nothing answers on.
const NOWHERE: &str = "postgres://postgres@127.0.0.1:1/readyd";

/// `readyd serve` with no database and whatever snapshot `data_dir` holds,
/// expected to refuse to start: its stderr.
async fn refused_start(data_dir: &Path) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--db-wait", "200ms"])
            .args(["--environment", ENVIRONMENT, "--metrics-listen", "off"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("DATABASE_URL", NOWHERE)
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: database: cannot connect"),
        "{stderr}"
    );
    stderr
}

#[tokio::test]
async fn without_a_database_only_a_valid_snapshot_of_this_environment_starts_readyd() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    // No snapshot at all: the start-up error.
    refused_start(data_dir.path()).await;

    // Damaged, or another environment's: ignored with a warning.
    plant_snapshot(data_dir.path(), b"{\"format\":\"readyd-snapshot\"}\njunk");
    let stderr = refused_start(data_dir.path()).await;
    assert!(
        stderr.contains("snapshot saved on disk is ignored"),
        "{stderr}"
    );
    let flag = Flag {
        client_visible: false,
        permanent: false,
        created_at: chrono::DateTime::UNIX_EPOCH,
        targeting: None,
        key: "checkout".into(),
        description: String::new(),
        enabled: true,
        value_type: ValueType::Bool,
        on_value: serde_json::json!(true),
        off_value: serde_json::json!(false),
        environments: vec![],
        target_users: vec![],
        target_roles: vec![],
        rollout_percentage: 100,
        version: 7,
        updated_at: chrono::Utc::now(),
        updated_by: "test".into(),
    };
    let config = ConfigRow {
        key: "greeting".into(),
        environment: "*".into(),
        value: serde_json::json!("hello"),
        description: String::new(),
        is_sensitive: false,
        version: 8,
        updated_at: chrono::Utc::now(),
        updated_by: "test".into(),
    };
    let snapshot = Snapshot::from_rows(8, vec![flag], vec![config]);
    let written_at = chrono::Utc::now() - chrono::Duration::hours(2);
    let foreign = snapshot_file::encode(&snapshot, "production", written_at).expect("encode");
    plant_snapshot(data_dir.path(), &foreign);
    let stderr = refused_start(data_dir.path()).await;
    assert!(stderr.contains("production"), "{stderr}");

    // This environment's: readyd starts from it, STALE, two hours old.
    let own = snapshot_file::encode(&snapshot, ENVIRONMENT, written_at).expect("encode");
    plant_snapshot(data_dir.path(), &own);
    let daemon = readyd(NOWHERE, data_dir.path()).start().await;
    assert_serving_stale(&daemon, Duration::from_secs(2 * 3600)).await;
    let lines = daemon.stop().await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("starting from the snapshot saved on disk")),
        "{}",
        lines.join("\n")
    );
    assert!(!lines.iter().any(|line| line.contains("panicked")));
    let kept = std::fs::read(snapshot_file::path_for(data_dir.path(), ENVIRONMENT)).expect("read");
    assert_eq!(kept, own, "the snapshot read back is left as it was");
}

#[tokio::test]
async fn a_silent_partition_is_noticed_and_answers_turn_stale_until_it_heals() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO feature_flags (key, enabled, rollout_percentage) VALUES ('checkout', true, 100)")
        .execute(&db.pool)
        .await
        .expect("flag");
    let proxy = TcpProxy::start(Target::of_url(&db.url)).await;
    let data_dir = tempfile::tempdir().expect("temp dir");
    let daemon = readyd(&db.proxied_url(&proxy), data_dir.path())
        .args(["--stale-after", "1s"])
        .start()
        .await;
    let channel = daemon.channel().await;
    evaluate_until(&channel, "checkout", Duration::from_secs(10), |answer| {
        answer.variant == "on" && !is_stale(answer)
    })
    .await;

    // Nothing is closed, nothing arrives: the listener alone would wait
    // forever; the failing database check makes it reconnect, and answers
    // turn STALE while it cannot.
    proxy.stall();
    sqlx::query("UPDATE feature_flags SET enabled = false WHERE key = 'checkout'")
        .execute(&db.pool)
        .await
        .expect("update");
    let stale = evaluate_until(&channel, "checkout", Duration::from_secs(20), is_stale).await;
    assert_eq!(stale.variant, "on", "the change made meanwhile is not seen");

    proxy.heal();
    evaluate_until(&channel, "checkout", Duration::from_secs(20), |answer| {
        answer.variant == "off" && !is_stale(answer)
    })
    .await;
    daemon.stop().await;
}
