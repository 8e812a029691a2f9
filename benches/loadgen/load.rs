//! The closed-loop load driver: `concurrency` callers share `connections`
//! HTTP/2 connections (or, over HTTP/1.1, have one each), each sending its
//! next request as soon as its last one answered, for a fixed time or a fixed number of requests. Latencies go to
//! an HDR histogram in microseconds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

/// How much load to send.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// HTTP/2 connections the callers share.
    pub connections: usize,
    /// Requests in flight at once (one caller each).
    pub concurrency: usize,
    /// Unrecorded run before the measured one, so connections, HTTP/2
    /// windows, caches and the allocator are warm when measuring starts.
    pub warmup: Duration,
    /// Length of the measured run.
    pub duration: Duration,
}

/// What one run measured.
pub struct LoadReport {
    /// Answered requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    /// A report of nothing yet, to [`Self::add`] runs to.
    pub fn empty() -> Self {
        LoadReport {
            requests: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            latency_us: histogram(),
        }
    }

    /// Adds `run` (a later run of the same load) to this report.
    pub fn add(&mut self, run: LoadReport) {
        self.requests += run.requests;
        self.errors += run.errors;
        if self.first_error.is_none() {
            self.first_error = run.first_error;
        }
        self.elapsed += run.elapsed;
        self.latency_us
            .add(&run.latency_us)
            .expect("histograms with equal bounds add");
    }

    /// Answered requests per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A new histogram for latencies in microseconds, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid")
}

/// Records `elapsed` in `histogram` (at least 1 µs, at most its bound).
pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, 60_000_000));
}

/// `count` separate HTTP/2 connections to `addr`, with the client settings
/// of a well-behaved caller (TCP_NODELAY).
pub async fn connect(addr: SocketAddr, count: usize) -> Vec<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(endpoint.connect().await.expect("connect to the server"));
    }
    channels
}

/// A small, fast pseudo-random sequence (splitmix64), one per caller, so
/// callers draw users without sharing state.
#[derive(Debug, Clone)]
pub struct Dice(u64);

impl Dice {
    /// A sequence starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A number below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound.max(1)
    }
}

/// Runs `call` from `shape.concurrency` callers over `channels` for
/// `duration`, or until `limit` requests were sent when one is given.
/// `call` gets a channel (caller `i` uses channel `i % channels.len()`) and
/// the caller's dice. A channel is a tonic `Channel` for gRPC, or an
/// HTTP/1.1 connection of its own per caller ([`crate::http1`]).
pub async fn run<C, F, Fut>(
    channels: &[C],
    concurrency: usize,
    duration: Duration,
    limit: Option<u64>,
    call: F,
) -> LoadReport
where
    C: Clone + Send + 'static,
    F: Fn(C, &mut Dice) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency.max(1) {
        let channel = channels[caller % channels.len()].clone();
        let call = call.clone();
        let sent = Arc::clone(&sent);
        callers.push(tokio::spawn(async move {
            let mut dice = Dice::new(caller as u64 + 1);
            let mut latency = histogram();
            let (mut errors, mut first_error) = (0u64, None);
            while Instant::now() < deadline
                && limit.is_none_or(|limit| sent.fetch_add(1, Ordering::Relaxed) < limit)
            {
                let begun = Instant::now();
                match call(channel.clone(), &mut dice).await {
                    Ok(()) => record(&mut latency, begun.elapsed()),
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
            }
            (latency, errors, first_error)
        }));
    }
    let mut report = LoadReport::empty();
    for caller in callers {
        let (latency, errors, first_error) = caller.await.expect("a caller panicked");
        report
            .latency_us
            .add(&latency)
            .expect("histograms with equal bounds add");
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    report.elapsed = started.elapsed();
    report.requests = report.latency_us.len();
    report
}
