//! Prometheus metrics: every metric's name in one place, the exporter on
//! `--metrics-listen`, and the sampler of values nobody pushes (database
//! pool, process memory and CPU).
//!
//! Code records through the `metrics` facade; without an installed exporter
//! (`--metrics-listen off`, or tests) every recording is a no-op. Hot paths
//! keep handles ([`metrics::Counter`]) made once, so recording is one atomic
//! add with no look-up.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::flags::Reason;
use crate::store::Store;

/// Calls by service, method and gRPC code.
pub const RPC_REQUESTS: &str = "readyd_rpc_requests_total";
/// Call latency by service and method, until the response headers.
pub const RPC_DURATION: &str = "readyd_rpc_duration_seconds";
/// HTTP requests by route, method and status.
pub const HTTP_REQUESTS: &str = "readyd_http_requests_total";
/// HTTP request latency by route, until the response headers.
pub const HTTP_DURATION: &str = "readyd_http_request_duration_seconds";
/// Flag evaluations by reason.
pub const FLAG_EVALUATIONS: &str = "readyd_flag_evaluations_total";
/// Flag evaluations by flag and variant, added at each usage flush; only
/// with `--metrics-flag-labels` (flag keys are unbounded label values).
pub const FLAG_USAGE: &str = "readyd_flag_usage_evaluations_total";
/// Evaluations whose usage counts were dropped: the database (or upstream)
/// was away so long that the waiting rows reached their bound.
pub const FLAG_USAGE_DROPPED: &str = "readyd_flag_usage_dropped_total";
/// Usage rows waiting to be flushed.
pub const FLAG_USAGE_PENDING: &str = "readyd_flag_usage_pending_rows";
/// 1 when a check serves (passing or warning), 0 otherwise, by check.
pub const CHECK_UP: &str = "readyd_check_up";
/// Duration of a check's last run, by check.
pub const CHECK_LATENCY: &str = "readyd_check_latency_seconds";
/// A check's failures in a row, by check.
pub const CHECK_FAILURES: &str = "readyd_check_consecutive_failures";
/// 1 for the current overall status, 0 for the others, by status.
pub const HEALTH_STATUS: &str = "readyd_health_status";
/// Version of the in-memory snapshot.
pub const SNAPSHOT_VERSION: &str = "readyd_snapshot_version";
/// Unix time of the last change applied to the snapshot.
pub const SNAPSHOT_LAST_CHANGE: &str = "readyd_snapshot_last_change_timestamp_seconds";
/// How long the served data has been stale (0 while current).
pub const SNAPSHOT_STALE: &str = "readyd_snapshot_stale_seconds";
/// Flags in the snapshot.
pub const SNAPSHOT_FLAGS: &str = "readyd_snapshot_flags";
/// Configuration rows in the snapshot.
pub const SNAPSHOT_CONFIGS: &str = "readyd_snapshot_configs";
/// Reconnections of the change listener.
pub const LISTENER_RECONNECTS: &str = "readyd_listener_reconnects_total";
/// Full reloads of the snapshot by the change listener.
pub const LISTENER_RELOADS: &str = "readyd_listener_reloads_total";
/// Open Watch streams by kind (flags, configs, health, probes, flagd,
/// follow).
pub const WATCH_STREAMS: &str = "readyd_watch_streams";
/// Streams refused because their limit was reached, by kind.
pub const STREAMS_REFUSED: &str = "readyd_streams_refused_total";
/// Database pool connections by state (idle, in_use).
pub const DB_POOL_CONNECTIONS: &str = "readyd_db_pool_connections";
/// The database pool's largest size.
pub const DB_POOL_MAX: &str = "readyd_db_pool_max_connections";
/// Time the database check waited for a pool connection: a sample of what
/// every query waits.
pub const DB_POOL_WAIT: &str = "readyd_db_pool_acquire_wait_seconds";

/// How often the recorder's histograms are maintained.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often the sampler reads the pool and the process.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Histogram buckets of call latency: sub-millisecond up to the shutdown
/// timeout.
const RPC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram buckets of pool waits.
const WAIT_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Serves `/metrics` on `listen` (port 0: any free port) and installs the
/// recorder as the process's. Must run inside the tokio runtime. Returns
/// the address bound, for the log; an address that cannot be bound is an
/// error; a recorder installed before (a second server in one process) is
/// kept, with a warning, and nothing is served.
pub fn install(listen: SocketAddr) -> Result<Option<SocketAddr>, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(RPC_DURATION.to_owned()), RPC_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(DB_POOL_WAIT.to_owned()), WAIT_BUCKETS)
        })
        .map_err(|err| err.to_string())?
        .build_recorder();
    // Bound here rather than by the exporter, so that port 0 works and the
    // address actually bound can be reported.
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        })
        .map_err(|err| format!("cannot serve metrics on {listen}: {err}"))?;
    let bound = listener
        .local_addr()
        .map_err(|err| format!("cannot serve metrics on {listen}: {err}"))?;
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder is already installed in this process; keeping it");
        return Ok(None);
    }
    describe();
    tokio::spawn(upkeep(handle.clone()));
    tokio::spawn(serve_metrics(listener, handle));
    Ok(Some(bound))
}

/// The recorder's periodic maintenance (draining histogram buffers), which
/// its own exporter would otherwise run.
async fn upkeep(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Answers every HTTP/1.1 request on `listener` with the metrics in
/// Prometheus' text format.
async fn serve_metrics(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // e.g. out of file descriptors: do not spin.
                tracing::warn!(error = %err, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let body = handle.render();
                async move {
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}

fn describe() {
    describe_counter!(RPC_REQUESTS, "gRPC calls by service, method and code.");
    describe_counter!(
        FLAG_USAGE,
        "Flag evaluations by flag and variant, added once a minute (--metrics-flag-labels)."
    );
    describe_counter!(
        FLAG_USAGE_DROPPED,
        "Evaluations whose usage counts were dropped while flag_usage could not be written."
    );
    describe_gauge!(FLAG_USAGE_PENDING, "Flag usage rows waiting to be written.");
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency until the response starts, by service and method."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route (the router's pattern), method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency until the response starts, by route."
    );
    describe_counter!(FLAG_EVALUATIONS, "Flag evaluations by reason.");
    describe_gauge!(CHECK_UP, "1 when the dependency check serves, else 0.");
    describe_gauge!(
        CHECK_LATENCY,
        Unit::Seconds,
        "Duration of the check's last run."
    );
    describe_gauge!(CHECK_FAILURES, "Failures of the check in a row.");
    describe_gauge!(
        HEALTH_STATUS,
        "1 for the current overall status (healthy, degraded, unhealthy)."
    );
    describe_gauge!(SNAPSHOT_VERSION, "Version of the in-memory snapshot.");
    describe_gauge!(
        SNAPSHOT_STALE,
        Unit::Seconds,
        "How long the served data has been stale, i.e. answers carry reason STALE (0 while current)."
    );
    describe_gauge!(
        SNAPSHOT_LAST_CHANGE,
        Unit::Seconds,
        "Unix time of the last change applied to the snapshot."
    );
    describe_gauge!(SNAPSHOT_FLAGS, "Flags in the snapshot.");
    describe_gauge!(SNAPSHOT_CONFIGS, "Configuration rows in the snapshot.");
    describe_counter!(LISTENER_RECONNECTS, "Reconnections of the change listener.");
    describe_counter!(LISTENER_RELOADS, "Full reloads of the snapshot.");
    // Shown at 0 from the start, so a rate() has a first sample.
    counter!(LISTENER_RECONNECTS).increment(0);
    counter!(LISTENER_RELOADS).increment(0);
    describe_gauge!(WATCH_STREAMS, "Open Watch streams by kind.");
    describe_counter!(
        STREAMS_REFUSED,
        "Streams refused with RESOURCE_EXHAUSTED because their limit was reached, by kind."
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections by state.");
    describe_gauge!(DB_POOL_MAX, "Largest size of the database pool.");
    describe_histogram!(
        DB_POOL_WAIT,
        Unit::Seconds,
        "Time a query waited for a pool connection."
    );
}

/// One open Watch stream, counted in [`WATCH_STREAMS`] until dropped.
#[derive(Debug)]
pub struct OpenStream(Gauge);

impl OpenStream {
    /// Counts a new stream of `kind`.
    pub fn open(kind: &'static str) -> Self {
        let gauge = gauge!(WATCH_STREAMS, "kind" => kind);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Samples the pool (when there is one: a follower has none) and the
/// process every few seconds until `stop` fires.
pub async fn sample(store: Option<Store>, max_connections: u32, stop: CancellationToken) {
    let process = metrics_process::Collector::default();
    process.describe();
    let idle = gauge!(DB_POOL_CONNECTIONS, "state" => "idle");
    let in_use = gauge!(DB_POOL_CONNECTIONS, "state" => "in_use");
    if store.is_some() {
        gauge!(DB_POOL_MAX).set(f64::from(max_connections));
    }
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Some(store) = &store {
            let pool = store.pool();
            let size = pool.size();
            let idle_now = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
            idle.set(f64::from(idle_now));
            in_use.set(f64::from(size - idle_now));
        }
        process.collect();
    }
}

/// Flag evaluation counters, one handle per reason, made once: counting an
/// evaluation is one atomic add.
#[derive(Debug, Clone)]
pub struct EvaluationCounters {
    by_reason: [Counter; Reason::ALL.len()],
}

impl Default for EvaluationCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl EvaluationCounters {
    /// Handles for every reason (no-ops when no exporter is installed).
    pub fn new() -> Self {
        Self {
            by_reason: Reason::ALL
                .map(|reason| counter!(FLAG_EVALUATIONS, "reason" => reason.as_str())),
        }
    }

    /// Counts one evaluation answered with `reason`.
    pub fn record(&self, reason: Reason) {
        self.by_reason[reason.index()].increment(1);
    }

    /// Counts a batch's evaluations: one atomic add per reason seen rather
    /// than one per evaluation.
    pub fn record_tally(&self, tally: &Tally) {
        for (counter, &count) in self.by_reason.iter().zip(&tally.0) {
            if count > 0 {
                counter.increment(count);
            }
        }
    }
}

/// Evaluations of one batch by reason, counted locally (no atomics).
#[derive(Debug, Default, Clone)]
pub struct Tally([u64; Reason::ALL.len()]);

impl Tally {
    /// Counts one evaluation answered with `reason`.
    pub fn add(&mut self, reason: Reason) {
        self.0[reason.index()] += 1;
    }
}
