//! Stream and connection exhaustion (the security review's item 2): one
//! connection cannot open more concurrent streams than the per-connection
//! limit, the server refuses Watch streams past its own limit with
//! RESOURCE_EXHAUSTED (and counts them), a client that never reads holds a
//! few snapshot parts rather than a copy of the snapshot, and probes keep
//! answering throughout.

mod support;

use std::time::Duration;

use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use support::TestDb;
use support::daemon::{Daemon, DaemonCommand};
use support::metrics::scrape;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// `--max-streams-per-connection` of the daemon under test.
const PER_CONNECTION: usize = 100;
/// `--max-watch-streams` of the daemon under test.
const WATCH_LIMIT: usize = 1_000;

/// One sample of readyd's metrics, 0 when absent.
async fn metric(daemon: &Daemon, series: &str) -> f64 {
    scrape(daemon.metrics_addr())
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until `series` reads `want`.
async fn metric_reaches(daemon: &Daemon, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = metric(daemon, series).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stays at {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The daemon's resident memory, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

async fn connect(daemon: &Daemon) -> Channel {
    Endpoint::from_shared(daemon.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Readiness answers on a new connection, as a kubelet probes.
async fn probe_answers(daemon: &Daemon) {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "readiness".into(),
    });
    request.set_timeout(Duration::from_secs(5));
    let status = HealthClient::new(connect(daemon).await)
        .check(request)
        .await
        .expect("the probe answers")
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
}

/// Opens a WatchFlags stream and keeps it without ever reading it; the
/// outcome of opening it.
async fn open_and_hold(
    channel: Channel,
    hold: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::Status> {
    let stream = FlagServiceClient::new(channel)
        .watch_flags(pb::WatchFlagsRequest::default())
        .await?
        .into_inner();
    let mut hold = hold;
    let _ = hold.wait_for(|released| *released).await;
    drop(stream);
    Ok(())
}

/// `count` flags with descriptions of `description_bytes` each.
async fn seed_flags(db: &TestDb, count: i64, description_bytes: i64) {
    sqlx::query(
        "INSERT INTO feature_flags (key, description, enabled) \
         SELECT 'bulk_' || i, repeat('x', $2::int), true FROM generate_series(1, $1) i",
    )
    .bind(count)
    .bind(description_bytes)
    .execute(&db.pool)
    .await
    .expect("seed flags");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_its_limit_and_the_server_refuses_past_its_own() {
    let db = TestDb::new().await;
    let daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--max-streams-per-connection", &PER_CONNECTION.to_string()])
        .args(["--max-watch-streams", &WATCH_LIMIT.to_string()])
        .start()
        .await;
    let (release, hold) = tokio::sync::watch::channel(false);

    // One connection asks for 5,000 streams: HTTP/2 lets the limit through,
    // the client holds the rest back.
    let greedy = connect(&daemon).await;
    let mut greedy_calls = JoinSet::new();
    for _ in 0..5_000 {
        greedy_calls.spawn(open_and_hold(greedy.clone(), hold.clone()));
    }
    metric_reaches(
        &daemon,
        "readyd_watch_streams{kind=\"flags\"}",
        PER_CONNECTION as f64,
    )
    .await;
    probe_answers(&daemon).await;

    // Many connections ask for more than the server allows: the rest are
    // refused at once, with a status that says why.
    let mut others = JoinSet::new();
    for _ in 0..(WATCH_LIMIT / PER_CONNECTION + 2) {
        let channel = connect(&daemon).await;
        for _ in 0..PER_CONNECTION {
            others.spawn(open_and_hold(channel.clone(), hold.clone()));
        }
    }
    let asked = (WATCH_LIMIT / PER_CONNECTION + 2) * PER_CONNECTION;
    let refused_expected = PER_CONNECTION + asked - WATCH_LIMIT;
    let mut refused = 0;
    while refused < refused_expected {
        let outcome = tokio::time::timeout(Duration::from_secs(60), others.join_next())
            .await
            .expect("the refusals come at once")
            .expect("a call")
            .expect("call task");
        let status = outcome.expect_err("only refused calls end while held");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-watch-streams"),
            "{status:?}"
        );
        refused += 1;
    }
    metric_reaches(
        &daemon,
        "readyd_watch_streams{kind=\"flags\"}",
        WATCH_LIMIT as f64,
    )
    .await;
    assert_eq!(
        metric(&daemon, "readyd_streams_refused_total{kind=\"flags\"}").await,
        refused_expected as f64
    );
    // Every probe still answers, and a probe Watch is refused cleanly
    // rather than hanging.
    probe_answers(&daemon).await;
    let watch = HealthClient::new(connect(&daemon).await)
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .expect_err("no room for another Watch stream");
    assert_eq!(watch.code(), Code::ResourceExhausted);

    // Once the streams close, places are free again.
    let _ = release.send(true);
    while greedy_calls.join_next().await.is_some() {}
    while others.join_next().await.is_some() {}
    metric_reaches(&daemon, "readyd_watch_streams{kind=\"flags\"}", 0.0).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_a_few_parts_not_the_snapshot() {
    // About 4 MiB of flags: a stream that copied the snapshot would cost
    // that much; one that holds a few 32 KiB parts costs a few hundred KiB.
    const STREAMS: usize = 200;
    let db = TestDb::new().await;
    seed_flags(&db, 1_000, 4_000).await;
    let daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
        .await;
    let pid = daemon.pid();
    // Readiness turns SERVING once the first checks have run, which on a
    // busy machine can be a moment after the serving line.
    support::wait_for_probe(connect(&daemon).await, "readiness", ServingStatus::Serving).await;
    let idle = rss_mib(pid);

    let (release, hold) = tokio::sync::watch::channel(false);
    let mut calls = JoinSet::new();
    for _ in 0..STREAMS / PER_CONNECTION {
        let channel = connect(&daemon).await;
        for _ in 0..PER_CONNECTION {
            calls.spawn(open_and_hold(channel.clone(), hold.clone()));
        }
    }
    metric_reaches(
        &daemon,
        "readyd_watch_streams{kind=\"flags\"}",
        STREAMS as f64,
    )
    .await;
    probe_answers(&daemon).await;
    let held = rss_mib(pid) - idle;
    println!(
        "{STREAMS} stalled streams over a 4 MiB snapshot: RSS {idle:.1} MiB idle, +{held:.1} MiB"
    );
    // 200 copies of the snapshot would be 800 MiB and more.
    assert!(
        held < 120.0,
        "{STREAMS} stalled streams hold {held:.1} MiB: more than a few parts each"
    );
    let _ = release.send(true);
    while calls.join_next().await.is_some() {}
    metric_reaches(&daemon, "readyd_watch_streams{kind=\"flags\"}", 0.0).await;
    daemon.stop().await;
}
