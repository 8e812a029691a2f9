//! A burst of health streams on one real readyd process: thousands of
//! grpc.health.v1 Watch and readyd WatchHealth streams each get a change of a
//! dependency's status, then their clients vanish without closing them. The
//! open-streams gauges return to zero and the memory the streams held is
//! given back, as it is for WatchFlags (see tests/watch_streams_scale.rs).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use support::TestDb;
use support::daemon::DaemonCommand;
use support::metrics::scrape;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Streams of each kind.
const STREAMS: usize = 2_000;
/// HTTP/2 connections they share (200 streams each, under the
/// per-connection limit).
const CONNECTIONS: usize = 20;
/// Streams being opened at once.
const OPENING: usize = 256;
/// Generous deadlines: the machine running the tests may be busy.
const OPEN_DEADLINE: Duration = Duration::from_secs(180);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
/// How much more memory readyd may hold after the streams closed than idle
/// before they opened: the bound of the WatchFlags test, for fewer streams
/// (4,000 open streams hold about 45 MiB; glibc would keep nearly all of it).
const RSS_GROWTH_LIMIT_MIB: f64 = 16.0;
/// How long readyd may take to give the memory back.
const RSS_DEADLINE: Duration = Duration::from_secs(20);

/// `readyd_watch_streams{kind="<kind>"}`; 0 before the first stream.
async fn open_streams(metrics: SocketAddr, kind: &str) -> f64 {
    let exposition = scrape(metrics).await;
    let samples: HashMap<&str, f64> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect();
    let label = format!("kind=\"{kind}\"");
    samples
        .iter()
        .find(|(series, _)| series.starts_with("readyd_watch_streams{") && series.contains(&label))
        .map_or(0.0, |(_, value)| *value)
}

/// Waits until both gauges read `want`, failing after `deadline`.
async fn wait_for_gauges(metrics: SocketAddr, want: f64, deadline: Duration) {
    let started = Instant::now();
    loop {
        let probes = open_streams(metrics, "probes").await;
        let health = open_streams(metrics, "health").await;
        if probes == want && health == want {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "open streams: probes {probes}, health {health}; not {want} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resident memory of a process in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Counters the watchers report through.
#[derive(Default)]
struct Progress {
    /// Streams that saw the dependency passing.
    ready: AtomicUsize,
    /// Streams that then saw it fail.
    changed: AtomicUsize,
}

/// A grpc.health.v1 Watch of `dep.flappy`: waits for SERVING, then for
/// NOT_SERVING, then holds the stream until aborted.
async fn probe_watcher(
    channel: Channel,
    opening: Arc<tokio::sync::Semaphore>,
    progress: Arc<Progress>,
) {
    let permit = opening.acquire_owned().await.expect("semaphore");
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "dep.flappy".into(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let mut ready = false;
    while let Some(message) = stream.next().await {
        let status = message.expect("a status").status();
        if !ready && status == ServingStatus::Serving {
            ready = true;
            drop(permit);
            progress.ready.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    assert!(ready, "the stream ended before SERVING");
    while let Some(message) = stream.next().await {
        if message.expect("a status").status() == ServingStatus::NotServing {
            progress.changed.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    std::future::pending::<()>().await;
    drop(stream);
}

/// Whether `report` shows the `flappy` check passing.
fn flappy_passes(report: &pb::HealthReport) -> Option<bool> {
    report
        .checks
        .iter()
        .find(|check| check.name == "flappy")
        .map(|check| check.state() == pb::CheckState::Passing)
}

/// A WatchHealth stream: waits for a report with `flappy` passing, then for
/// one with it failing, then holds the stream until aborted.
async fn report_watcher(
    channel: Channel,
    opening: Arc<tokio::sync::Semaphore>,
    progress: Arc<Progress>,
) {
    let permit = opening.acquire_owned().await.expect("semaphore");
    let mut stream = HealthServiceClient::new(channel)
        .watch_health(pb::WatchHealthRequest {})
        .await
        .expect("WatchHealth")
        .into_inner();
    let mut ready = false;
    while let Some(report) = stream.next().await {
        if flappy_passes(&report.expect("a report")) == Some(true) {
            ready = true;
            drop(permit);
            progress.ready.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    assert!(ready, "the stream ended before the check passed");
    while let Some(report) = stream.next().await {
        if flappy_passes(&report.expect("a report")) == Some(false) {
            progress.changed.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    std::future::pending::<()>().await;
    drop(stream);
}

/// Waits until `count` reads `want`, failing after `deadline`.
async fn wait_for_count(
    count: &AtomicUsize,
    want: usize,
    what: &str,
    deadline: Duration,
    watchers: &mut JoinSet<()>,
) {
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < want {
        if let Some(Err(err)) = watchers.try_join_next() {
            panic!("a watcher failed: {err}");
        }
        assert!(
            started.elapsed() < deadline,
            "{} of {want} streams {what} after {deadline:?}",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_health_streams_leaves_no_memory_behind_when_clients_vanish() {
    let db = TestDb::new().await;
    // The dependency: up while this task accepts (and drops) connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dependency = tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    let data_dir = tempfile::tempdir().expect("data dir");
    let daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg_path("--data-dir", data_dir.path())
        .args([
            "--check",
            &format!(
                "flappy=tcp://127.0.0.1:{port}?critical=false&interval=1s&timeout=2s&failures=1"
            ),
        ])
        .start()
        .await;
    let metrics = daemon.metrics_addr();
    let pid = daemon.pid();
    wait_for_gauges(metrics, 0.0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_mib(pid);

    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(
            Endpoint::from_shared(daemon.url())
                .expect("endpoint")
                .connect()
                .await
                .expect("connect"),
        );
    }
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING));
    let progress = Arc::new(Progress::default());
    let mut watchers = JoinSet::new();
    for i in 0..STREAMS {
        let channel = channels[i % CONNECTIONS].clone();
        watchers.spawn(probe_watcher(
            channel.clone(),
            Arc::clone(&opening),
            Arc::clone(&progress),
        ));
        watchers.spawn(report_watcher(
            channel,
            Arc::clone(&opening),
            Arc::clone(&progress),
        ));
    }
    wait_for_count(
        &progress.ready,
        2 * STREAMS,
        "were ready",
        OPEN_DEADLINE,
        &mut watchers,
    )
    .await;
    wait_for_gauges(metrics, STREAMS as f64, Duration::from_secs(10)).await;
    let open_rss = rss_mib(pid);

    // The dependency goes away: every stream is told.
    dependency.abort();
    let _ = dependency.await;
    wait_for_count(
        &progress.changed,
        2 * STREAMS,
        "saw the dependency fail",
        DELIVERY_DEADLINE,
        &mut watchers,
    )
    .await;

    // The clients vanish: tasks aborted mid-stream, connections dropped.
    watchers.abort_all();
    while watchers.join_next().await.is_some() {}
    drop(channels);
    wait_for_gauges(metrics, 0.0, CLOSE_DEADLINE).await;
    let closed_at = Instant::now();
    let mut after_rss = rss_mib(pid);
    while after_rss - idle_rss >= RSS_GROWTH_LIMIT_MIB && closed_at.elapsed() < RSS_DEADLINE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after_rss = rss_mib(pid);
    }
    println!(
        "readyd RSS: idle {idle_rss:.1} MiB, {STREAMS} Watch + {STREAMS} WatchHealth streams open \
         {open_rss:.1} MiB, after they closed {after_rss:.1} MiB within {:.1?}",
        closed_at.elapsed()
    );
    assert!(
        after_rss - idle_rss < RSS_GROWTH_LIMIT_MIB,
        "readyd holds {:.1} MiB more than idle {RSS_DEADLINE:?} after every stream closed",
        after_rss - idle_rss
    );
    let lines = daemon.stop().await;
    assert!(
        !lines.iter().any(|line| line.contains("panicked")),
        "the daemon panicked"
    );
}
