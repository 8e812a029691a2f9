//! 10,000 WatchFlags streams on one real readyd process: every stream gets
//! a change made by plain SQL, and when the clients vanish without closing
//! their streams, the open-streams gauge returns to zero and the memory
//! they held is given back.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::watch_flags_response::Event;
use support::TestDb;
use support::daemon::{Daemon, DaemonCommand};
use support::metrics::scrape;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Streams to open.
const STREAMS: usize = 10_000;
/// HTTP/2 connections they share: readyd sets no limit on streams per
/// connection, so 250 each is fine, and 40 sockets stay far below the
/// open-file limit of either process.
const CONNECTIONS: usize = 40;
/// Streams being opened at once (opening is where the CPU goes).
const OPENING: usize = 256;
/// The flag the change is made to.
const FLAG: &str = "dark_mode";
/// Generous deadlines: the machine running the tests may be busy.
const OPEN_DEADLINE: Duration = Duration::from_secs(90);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
/// How much more memory readyd may hold after the streams closed than it
/// did idle before they opened. 10,000 open streams take about 150 MiB
/// (some 15 KiB each: a task, a 64-message channel, a broadcast receiver,
/// HTTP/2 stream state and buffers). Once they close, readyd hands the free
/// memory back (glibc would otherwise keep all of it); what stays is the
/// allocator's bookkeeping and pages it keeps in use, about 5 MiB when
/// measured. A leak of 1.6 KiB per stream, a tenth of a stream's cost, would
/// exceed this bound.
const RSS_GROWTH_LIMIT_MIB: f64 = 16.0;
/// How long readyd may take to give the memory back (it waits for the
/// burst of closing streams to settle first).
const RSS_DEADLINE: Duration = Duration::from_secs(20);

/// `readyd_watch_streams{kind="flags"}`; 0 before the first stream.
async fn open_flag_streams(metrics: SocketAddr) -> f64 {
    let exposition = scrape(metrics).await;
    let samples: HashMap<&str, f64> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect();
    samples
        .iter()
        .find(|(series, _)| {
            series.starts_with("readyd_watch_streams{") && series.contains("kind=\"flags\"")
        })
        .map_or(0.0, |(_, value)| *value)
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

/// Waits until the gauge reads `want`, failing after `deadline`.
async fn wait_for_gauge(metrics: SocketAddr, want: f64, deadline: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let open = open_flag_streams(metrics).await;
        if open == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < deadline,
            "readyd_watch_streams{{kind=\"flags\"}} is {open}, not {want}, after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percentile `p` (0..=100) of sorted durations.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index]
}

/// One client: opens its stream, reads the snapshot, says so, waits for the
/// change to `FLAG` and reports when it came, then holds the stream open
/// until the task is aborted.
async fn watcher(
    channel: Channel,
    opening: Arc<tokio::sync::Semaphore>,
    ready: Arc<AtomicUsize>,
    changes: mpsc::UnboundedSender<Instant>,
) {
    let permit = opening.acquire_owned().await.expect("semaphore");
    let mut stream = FlagServiceClient::new(channel)
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("WatchFlags")
        .into_inner();
    let snapshot_version = loop {
        match stream.next().await {
            Some(Ok(pb::WatchFlagsResponse {
                event: Some(Event::Snapshot(snapshot)),
            })) if snapshot.last => break snapshot.version,
            Some(Ok(_)) => continue,
            other => panic!("the stream ended before its snapshot: {other:?}"),
        }
    };
    drop(permit);
    ready.fetch_add(1, Ordering::SeqCst);
    loop {
        match stream.next().await {
            Some(Ok(pb::WatchFlagsResponse {
                event: Some(Event::Change(change)),
            })) if change.version > snapshot_version => {
                let _ = changes.send(Instant::now());
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("the stream ended before the change: {other:?}"),
        }
    }
    // Held open until the test aborts the task: the client vanishes.
    std::future::pending::<()>().await;
    drop(stream);
}

async fn start(db: &TestDb) -> Daemon {
    DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_get_a_change_and_leave_nothing_behind_when_clients_vanish() {
    let test_started = Instant::now();
    let db = TestDb::new().await;
    let daemon = start(&db).await;
    let metrics = daemon.metrics_addr();
    let pid = daemon.pid();

    // Idle: serving, no stream open yet.
    assert_eq!(open_flag_streams(metrics).await, 0.0);
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
    let ready = Arc::new(AtomicUsize::new(0));
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let mut watchers = JoinSet::new();
    let open_started = Instant::now();
    for i in 0..STREAMS {
        watchers.spawn(watcher(
            channels[i % CONNECTIONS].clone(),
            Arc::clone(&opening),
            Arc::clone(&ready),
            changes_tx.clone(),
        ));
    }
    drop(changes_tx);
    while ready.load(Ordering::SeqCst) < STREAMS {
        assert!(
            open_started.elapsed() < OPEN_DEADLINE,
            "{} of {STREAMS} streams had their snapshot after {OPEN_DEADLINE:?}",
            ready.load(Ordering::SeqCst)
        );
        if let Some(Err(err)) = watchers.try_join_next() {
            panic!("a watcher failed: {err}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_time = open_started.elapsed();
    wait_for_gauge(metrics, STREAMS as f64, Duration::from_secs(10)).await;
    let open_rss = rss_mib(pid);

    // One change by plain SQL; every stream must see it.
    let changed_at = Instant::now();
    sqlx::query("UPDATE feature_flags SET enabled = NOT enabled WHERE key = $1")
        .bind(FLAG)
        .execute(&db.pool)
        .await
        .expect("change the flag");
    let mut latencies = Vec::with_capacity(STREAMS);
    while latencies.len() < STREAMS {
        match tokio::time::timeout_at((changed_at + DELIVERY_DEADLINE).into(), changes.recv()).await
        {
            Ok(Some(received)) => latencies.push(received - changed_at),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    if let Some(Err(err)) = watchers.try_join_next() {
        panic!("a watcher failed: {err}");
    }
    assert_eq!(
        latencies.len(),
        STREAMS,
        "streams that received the change within {DELIVERY_DEADLINE:?}"
    );
    latencies.sort();

    // The clients vanish: tasks aborted mid-stream, connections dropped,
    // no stream closed properly.
    watchers.abort_all();
    while watchers.join_next().await.is_some() {}
    drop(channels);
    let drained_in = wait_for_gauge(metrics, 0.0, CLOSE_DEADLINE).await;
    let closed_at = Instant::now();
    let mut after_rss = rss_mib(pid);
    while after_rss - idle_rss >= RSS_GROWTH_LIMIT_MIB && closed_at.elapsed() < RSS_DEADLINE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after_rss = rss_mib(pid);
    }
    let rss_settled_in = closed_at.elapsed();

    println!(
        "{STREAMS} streams over {CONNECTIONS} connections opened in {open_time:.1?}; \
         change received by all: p50 {:?}, p99 {:?}, max {:?}; \
         gauge back to 0 {drained_in:.1?} after the clients vanished",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies[latencies.len() - 1],
    );
    println!(
        "readyd RSS: idle {idle_rss:.1} MiB, {STREAMS} streams open {open_rss:.1} MiB, \
         after they closed {after_rss:.1} MiB within {rss_settled_in:.1?} \
         (limit: idle + {RSS_GROWTH_LIMIT_MIB} MiB); test took {:.1?}",
        test_started.elapsed()
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
