//! The real binary as a child process: zero-setup start on a private
//! PostgreSQL, SIGTERM while a Watch is open, restart on the same data dir,
//! and `readyd check` exit codes.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1::CheckDatabaseRequest;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use support::{next, wait_for_probe};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_readyd");

/// A readyd child process and the address it reported.
struct Daemon {
    child: Child,
    addr: String,
}

/// Starts `readyd serve` with no DATABASE_URL on an ephemeral port and
/// waits for its "serving" log line (JSON logs on stderr).
async fn start_daemon(data_dir: &Path) -> Daemon {
    let mut child = Command::new(BINARY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--shutdown-timeout",
            "10s",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("READYD_ADMIN_TOKEN")
        .env_remove("READYD_READ_TOKEN")
        .env("READYD_LOG", "info")
        .env("READYD_METRICS_LISTEN", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn readyd");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "readyd is serving" {
                return event["listen"].as_str().expect("listen field").to_owned();
            }
        }
        panic!("readyd exited before serving");
    })
    .await
    .expect("readyd serves within 60 s");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Daemon { child, addr }
}

impl Daemon {
    async fn health(&self) -> HealthClient<tonic::transport::Channel> {
        HealthClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("running") as i32;
        kill(Pid::from_raw(pid), signal).expect("send signal");
    }

    async fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
    }
}

#[tokio::test]
async fn zero_setup_serves_then_drains_on_sigterm_and_reuses_its_data_dir() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let daemon = start_daemon(data_dir.path()).await;
    let mut health = daemon.health().await;
    let readiness = HealthCheckRequest {
        service: "readiness".into(),
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    wait_for_probe(channel, "readiness", ServingStatus::Serving).await;
    assert_eq!(
        health
            .check(readiness.clone())
            .await
            .expect("check")
            .into_inner()
            .status(),
        ServingStatus::Serving
    );
    let mut db = HealthServiceClient::connect(format!("http://{}", daemon.addr))
        .await
        .expect("connect");
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
    let daemon = start_daemon(data_dir.path()).await;
    let mut db = HealthServiceClient::connect(format!("http://{}", daemon.addr))
        .await
        .expect("connect");
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
    let output = Command::new(BINARY)
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
    let output = Command::new(BINARY)
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
