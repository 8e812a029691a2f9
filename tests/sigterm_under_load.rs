//! SIGTERM while clients keep a real readyd busy: unary calls in a loop
//! (EvaluateFlag, GetConfig, and ListConfigAudit pages of 1,000 rows) and
//! open WatchFlags and grpc.health.v1 Watch streams.
//!
//! What is acceptable, exactly:
//! - a call readyd took ends OK: HTTP/2's graceful shutdown (GOAWAY with the
//!   highest stream id, then a ping, then the final GOAWAY) accepts every
//!   call the client sent before it heard of the shutdown, and the drain
//!   lets accepted calls finish (`graceful_shutdown.rs` proves it for one
//!   call without any timing);
//! - a call readyd did not take (sent after the client heard of the
//!   shutdown, whenever the caller started it) ends UNAVAILABLE: the client
//!   sends it again on a new connection, which readyd, no longer accepting,
//!   refuses. The clients are readyd's own (`readyd::client::channel`): a
//!   call that races the GOAWAY and is refused by it unprocessed (which
//!   tonic alone reports as INTERNAL, or CANCELLED when it was still
//!   queued) is sent again. Nothing else is acceptable;
//! - a health Watch reports NOT_SERVING, then ends; a WatchFlags stream
//!   ends; both cleanly (end of stream, or a gRPC status), long before the
//!   shutdown timeout;
//! - readyd exits 0 within `--shutdown-timeout` plus a margin.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::config_service_client::ConfigServiceClient;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::client::channel::RetryingChannel;
use support::daemon::DaemonCommand;
use support::{ADMIN_TOKEN, TestDb, admin, wait_for_probe};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::Code;

/// The daemon's `--shutdown-timeout`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack for a busy machine on top of the shutdown timeout.
const MARGIN: Duration = Duration::from_secs(5);
/// Client tasks calling in a loop.
const CALLERS: usize = 8;
/// Streams of each kind held open.
const STREAMS: usize = 16;
/// Rows in config_audit, so a ListConfigAudit page is slow-ish.
const AUDIT_ROWS: i64 = 3_000;
/// How long the load runs before the signal.
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_secs(2);

/// The unary calls the callers make.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    EvaluateFlag,
    GetConfig,
    ListConfigAudit,
}

/// One finished unary call.
struct Finished {
    rpc: Rpc,
    started: Instant,
    ended: Instant,
    code: Code,
    message: String,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} took {:?}: {:?} {}",
            self.rpc,
            self.ended - self.started,
            self.code,
            self.message
        )
    }
}

async fn call(channel: &RetryingChannel, rpc: Rpc) -> Result<(), tonic::Status> {
    match rpc {
        Rpc::EvaluateFlag => FlagServiceClient::new(channel.clone())
            .evaluate_flag(pb::EvaluateFlagRequest {
                explain: false,
                key: "dark_mode".into(),
                context: Some(pb::EvaluationContext {
                    user_id: "user-1".into(),
                    ..Default::default()
                }),
            })
            .await
            .map(drop),
        Rpc::GetConfig => ConfigServiceClient::new(channel.clone())
            .get_config(pb::GetConfigRequest {
                key: "app_name".into(),
            })
            .await
            .map(drop),
        Rpc::ListConfigAudit => ConfigServiceClient::new(channel.clone())
            .list_config_audit(admin(pb::ListConfigAuditRequest {
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .map(|response| {
                assert_eq!(response.into_inner().entries.len(), 1000, "a full page");
            }),
    }
}

/// Calls in a loop until `stop`, recording every call.
async fn caller(channel: RetryingChannel, first: usize, stop: Arc<AtomicBool>) -> Vec<Finished> {
    const ROTATION: [Rpc; 3] = [Rpc::EvaluateFlag, Rpc::GetConfig, Rpc::ListConfigAudit];
    let mut finished = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::SeqCst) {
        let rpc = ROTATION[i % ROTATION.len()];
        i += 1;
        let started = Instant::now();
        let result = tokio::time::timeout(SHUTDOWN_TIMEOUT + MARGIN, call(&channel, rpc)).await;
        let (code, message) = match result {
            Ok(Ok(())) => (Code::Ok, String::new()),
            Ok(Err(status)) => (status.code(), status.message().to_owned()),
            Err(_) => (Code::DeadlineExceeded, "no answer: the call hung".into()),
        };
        if code != Code::Ok {
            // Refused: do not spin while readyd is going away.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        finished.push(Finished {
            rpc,
            started,
            ended: Instant::now(),
            code,
            message,
        });
    }
    finished
}

/// Whether a call ended in an acceptable way: OK, or UNAVAILABLE because
/// nothing accepted it any more (readyd had stopped accepting connections
/// when the call, refused unprocessed by the GOAWAY, was sent again). An
/// UNAVAILABLE from readyd itself (e.g. its database pool closed under a
/// call it had taken) is not acceptable.
fn ended_cleanly(call: &Finished) -> bool {
    match call.code {
        Code::Ok => true,
        Code::Unavailable => call.message.contains("connect"),
        _ => false,
    }
}

/// How a stream ended, and when.
#[derive(Debug)]
struct StreamEnd {
    kind: &'static str,
    ended: Instant,
    /// `None`: a clean end of stream; else the status it ended with.
    status: Option<Code>,
    /// For health watches: the last serving status seen.
    last_serving: Option<ServingStatus>,
}

async fn flags_stream(
    channel: RetryingChannel,
    opened: tokio::sync::mpsc::Sender<()>,
) -> StreamEnd {
    let mut stream = FlagServiceClient::new(channel)
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
        .expect("WatchFlags")
        .into_inner();
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(_))), "a snapshot: {first:?}");
    let _ = opened.send(()).await;
    let status = loop {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + MARGIN * 2, stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => break Some(status.code()),
            Ok(None) => break None,
            Err(_) => panic!("a WatchFlags stream hung through the shutdown"),
        }
    };
    StreamEnd {
        kind: "WatchFlags",
        ended: Instant::now(),
        status,
        last_serving: None,
    }
}

async fn health_stream(
    channel: RetryingChannel,
    opened: tokio::sync::mpsc::Sender<()>,
) -> StreamEnd {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let mut last_serving = match stream.next().await {
        Some(Ok(message)) => Some(message.status()),
        other => panic!("the current status: {other:?}"),
    };
    let _ = opened.send(()).await;
    let status = loop {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + MARGIN * 2, stream.next()).await {
            Ok(Some(Ok(message))) => last_serving = Some(message.status()),
            Ok(Some(Err(status))) => break Some(status.code()),
            Ok(None) => break None,
            Err(_) => panic!("a health Watch hung through the shutdown"),
        }
    };
    StreamEnd {
        kind: "health Watch",
        ended: Instant::now(),
        status,
        last_serving,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_accepted_calls_ends_streams_and_exits_zero() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO config_audit (key, environment, action, old_value, new_value, actor, version) \
         SELECT 'key_' || (i % 50), '*', 'update', to_jsonb(i - 1), to_jsonb(i), 'load-test', i \
           FROM generate_series(1, $1) i",
    )
    .bind(AUDIT_ROWS)
    .execute(&db.pool)
    .await
    .expect("audit rows");
    let mut daemon = DaemonCommand::serve()
        .env("DATABASE_URL", &db.url)
        .env("READYD_ADMIN_TOKEN", ADMIN_TOKEN)
        .args(["--shutdown-timeout", "10s"])
        .start()
        .await;
    wait_for_probe(daemon.channel().await, "readiness", ServingStatus::Serving).await;

    let channels = [
        daemon.retrying_channel().await,
        daemon.retrying_channel().await,
        daemon.retrying_channel().await,
        daemon.retrying_channel().await,
    ];
    let (opened_tx, mut opened) = tokio::sync::mpsc::channel(2 * STREAMS);
    let mut streams = JoinSet::new();
    for i in 0..STREAMS {
        let channel = channels[i % channels.len()].clone();
        streams.spawn(flags_stream(channel.clone(), opened_tx.clone()));
        streams.spawn(health_stream(channel, opened_tx.clone()));
    }
    drop(opened_tx);
    for _ in 0..2 * STREAMS {
        tokio::time::timeout(Duration::from_secs(30), opened.recv())
            .await
            .expect("streams open in time")
            .expect("a stream opened");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = JoinSet::new();
    for i in 0..CALLERS {
        callers.spawn(caller(
            channels[i % channels.len()].clone(),
            i,
            Arc::clone(&stop),
        ));
    }
    tokio::time::sleep(LOAD_BEFORE_SIGNAL).await;

    let signalled = Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(SHUTDOWN_TIMEOUT + MARGIN).await;
    let exited = Instant::now();
    // A little longer, so calls made after the exit are seen refused too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);

    let mut calls = Vec::new();
    while let Some(joined) = callers.join_next().await {
        calls.extend(joined.expect("caller task"));
    }
    let mut ends = Vec::new();
    while let Some(joined) = streams.join_next().await {
        ends.push(joined.expect("stream task"));
    }
    let lines = daemon.log_lines().await;

    let before: Vec<&Finished> = calls.iter().filter(|c| c.started < signalled).collect();
    let after: Vec<&Finished> = calls.iter().filter(|c| c.started >= signalled).collect();
    let in_flight = before.iter().filter(|c| c.ended > signalled).count();
    let finished_in_drain = before
        .iter()
        .filter(|c| c.ended > signalled && c.code == Code::Ok)
        .count();
    let ok_after = after.iter().filter(|c| c.code == Code::Ok).count();

    let last_stream_end = ends
        .iter()
        .map(|end| end.ended - signalled)
        .max()
        .unwrap_or_default();
    println!(
        "{} calls before SIGTERM ({in_flight} in flight at the signal, {finished_in_drain} of them OK), \
         {} after ({ok_after} OK, {} UNAVAILABLE); {} streams ended, the last {last_stream_end:?} \
         after the signal; readyd exited {:?} after the signal with {status:?}",
        before.len(),
        after.len(),
        after.len() - ok_after,
        ends.len(),
        exited - signalled,
    );
    for rpc in [Rpc::EvaluateFlag, Rpc::GetConfig, Rpc::ListConfigAudit] {
        let of_rpc: Vec<&&Finished> = before
            .iter()
            .filter(|c| std::mem::discriminant(&c.rpc) == std::mem::discriminant(&rpc))
            .collect();
        let slowest = of_rpc
            .iter()
            .map(|c| c.ended - c.started)
            .max()
            .unwrap_or_default();
        println!("  {rpc:?}: {} calls, slowest {slowest:?}", of_rpc.len());
    }

    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|line| line.contains("panicked")),
        "the daemon panicked:\n{}",
        lines.join("\n")
    );
    assert!(
        finished_in_drain > 0,
        "no call in flight at the signal finished OK: the test did not test the drain"
    );
    let wrong: Vec<&Finished> = calls.iter().filter(|c| !ended_cleanly(c)).collect();
    assert!(
        wrong.is_empty(),
        "every call must end OK, or UNAVAILABLE because it could no longer connect: {wrong:#?}"
    );
    assert_eq!(ends.len(), 2 * STREAMS, "every stream ended");
    for end in &ends {
        assert!(
            end.ended - signalled < SHUTDOWN_TIMEOUT,
            "{} ended {:?} after the signal, not promptly",
            end.kind,
            end.ended - signalled
        );
        assert!(
            matches!(end.status, None | Some(Code::Unavailable | Code::Cancelled)),
            "{} ended with {:?}",
            end.kind,
            end.status
        );
    }
    for end in ends.iter().filter(|end| end.kind == "health Watch") {
        assert_eq!(
            end.last_serving,
            Some(ServingStatus::NotServing),
            "a health Watch reports NOT_SERVING before it ends"
        );
    }
}
