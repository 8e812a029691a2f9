//! The real binary as a child process: zero-setup start on a private
//! PostgreSQL, SIGTERM while a Watch is open, restart on the same data dir,
//! and `readyd check` exit codes.

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1::CheckDatabaseRequest;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use support::daemon::{Daemon, DaemonCommand, binary};
use support::{next, wait_for_probe};
use tokio::process::Command;

/// Starts `readyd serve` with no DATABASE_URL (a private PostgreSQL in
/// `data_dir`).
async fn start_daemon(data_dir: &Path) -> Daemon {
    DaemonCommand::serve()
        .args(["--shutdown-timeout", "10s"])
        .arg_path("--data-dir", data_dir)
        .start()
        .await
}

#[tokio::test]
async fn zero_setup_serves_then_drains_on_sigterm_and_reuses_its_data_dir() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = start_daemon(data_dir.path()).await;
    let mut health = HealthClient::new(daemon.channel().await);
    let readiness = HealthCheckRequest {
        service: "readiness".into(),
    };
    wait_for_probe(daemon.channel().await, "readiness", ServingStatus::Serving).await;
    assert_eq!(
        health
            .check(readiness.clone())
            .await
            .expect("check")
            .into_inner()
            .status(),
        ServingStatus::Serving
    );
    let mut db = HealthServiceClient::new(daemon.channel().await);
    let first = db
        .check_database(CheckDatabaseRequest {})
        .await
        .expect("database")
        .into_inner();

    let mut watch = health.watch(readiness).await.expect("watch").into_inner();
    assert_eq!(
        next(&mut watch).await.expect("current").status(),
        ServingStatus::Serving
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        next(&mut watch).await.expect("draining").status(),
        ServingStatus::NotServing
    );
    assert!(next(&mut watch).await.is_none(), "the watch ends cleanly");
    let status = daemon.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !data_dir.path().join("pg").join("postmaster.pid").exists(),
        "the private PostgreSQL was stopped"
    );

    // Same data dir: the cluster and its rows are still there.
    let mut daemon = start_daemon(data_dir.path()).await;
    let mut db = HealthServiceClient::new(daemon.channel().await);
    let second = db
        .check_database(CheckDatabaseRequest {})
        .await
        .expect("database")
        .into_inner();
    assert!(
        second.record_id > first.record_id,
        "history continues: {} then {}",
        first.record_id,
        second.record_id
    );
    daemon.signal(Signal::SIGINT);
    assert!(daemon.wait(Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn check_exits_one_with_a_line_per_problem() {
    let output = Command::new(binary())
        .args([
            "check",
            "--listen",
            "not-an-address",
            "--environment",
            "Bad Env",
            "--db-wait",
            "100ms",
        ])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/readyd")
        .output()
        .await
        .expect("run readyd check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(problems.len(), 3, "{stderr}");
    assert!(problems[0].contains("--listen"), "{stderr}");
    assert!(problems[1].contains("--environment"), "{stderr}");
    assert!(problems[2].contains("database"), "{stderr}");
}

#[tokio::test]
async fn check_passes_on_a_migrated_database() {
    let db = support::TestDb::new().await;
    let output = Command::new(binary())
        .arg("check")
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn sigterm_the_moment_it_says_serving_is_not_lost() {
    let db = support::TestDb::new().await;
    // The window between start-up and the server's wait for a signal is
    // short: a few tries, each signalled as soon as the line is read.
    for _ in 0..3 {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let daemon = DaemonCommand::serve()
            .env("DATABASE_URL", &db.url)
            .arg_path("--data-dir", data_dir.path())
            .start()
            .await;
        daemon.stop().await;
    }
}
