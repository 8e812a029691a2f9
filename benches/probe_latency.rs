//! Probe latency with a hung dependency: grpc.health.v1 Check on
//! `readiness` while one declared check hangs on every attempt (its peer
//! accepts connections and never answers). Goal: p99 < 5 ms.
//!
//! Two ways of probing are measured: over one kept connection (an app or a
//! mesh asking often), and on a new connection per probe (what the kubelet
//! does). The baseline, measured in the same run the same way, is the same
//! grpc.health.v1 service over a fixed status map, with no checks, no
//! database and no other service: whatever readyd adds shows as the ratio.
//!
//! Run: `cargo bench --bench probe_latency` (PROBES=10000 by default;
//! DATABASE_URL as for the tests, else a private PostgreSQL is started).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use readyd::api::grpc_health::GrpcHealth;
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::grpc_health_v1::health_server::HealthServer;
use readyd::api::streams::StreamGate;
use readyd::health::probes::READINESS;
use readyd::health::{Probes, ServingStatus as Probe};
use support::{TestDb, TestServer, serve_args, wait_for_probe};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Latencies of `count` probes, in microseconds.
async fn probe_many(addr: SocketAddr, count: u64, new_connection_each: bool) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .tcp_nodelay(true);
    let mut kept: Option<HealthClient<Channel>> = None;
    for _ in 0..count {
        let started = Instant::now();
        let mut client = match (&kept, new_connection_each) {
            (Some(client), false) => client.clone(),
            _ => HealthClient::new(endpoint.connect().await.expect("connect")),
        };
        let status = client
            .check(HealthCheckRequest {
                service: READINESS.to_owned(),
            })
            .await
            .expect("probe")
            .into_inner()
            .status();
        let elapsed = started.elapsed();
        assert_eq!(status, ServingStatus::Serving, "readiness must serve");
        histogram
            .record(
                u64::try_from(elapsed.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .expect("record");
        if !new_connection_each && kept.is_none() {
            kept = Some(client);
        }
    }
    histogram
}

/// The baseline: grpc.health.v1 over a fixed map, nothing else.
async fn baseline_server() -> (SocketAddr, CancellationToken) {
    let probes = Arc::new(Probes::new());
    probes.set(READINESS, Probe::Serving);
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let gate = StreamGate::new("Watch", "--max-watch-streams", 10_000);
    let service = HealthServer::new(GrpcHealth::new(probes, Arc::clone(&gate)));
    let until = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { until.cancelled().await }),
    );
    (addr, stop)
}

fn row(name: &str, histogram: &Histogram<u64>, baseline: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    let p50 = histogram.value_at_quantile(0.50);
    let p99 = histogram.value_at_quantile(0.99);
    println!(
        "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
        histogram.len(),
        ms(p50),
        ms(p99),
        ms(histogram.max()),
        p50 as f64 / baseline.value_at_quantile(0.50).max(1) as f64,
        p99 as f64 / baseline.value_at_quantile(0.99).max(1) as f64,
    );
}

fn main() {
    let probes: u64 = std::env::var("PROBES")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // A peer that accepts and never answers.
        let hung = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hung_addr = hung.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((stream, _)) = hung.accept().await {
                held.push(stream);
            }
        });

        let db = TestDb::new().await;
        let mut args = serve_args(&db.url);
        args.checks = vec![format!(
            "hung=http://{hung_addr}/healthz?timeout=2s&interval=100ms&critical=false"
        )];
        let server = TestServer::start(args).await;
        wait_for_probe(server.channel().await, "startup", ServingStatus::Serving).await;
        let (baseline_addr, baseline_stop) = baseline_server().await;

        // Warm up both, then measure alternately so both see the same machine.
        probe_many(server.addr, 200, false).await;
        probe_many(baseline_addr, 200, false).await;
        let base_kept = probe_many(baseline_addr, probes, false).await;
        let kept = probe_many(server.addr, probes, false).await;
        let fresh_count = (probes / 5).max(1);
        let base_fresh = probe_many(baseline_addr, fresh_count, true).await;
        let fresh = probe_many(server.addr, fresh_count, true).await;

        println!("| Probe | Count | p50 ms | p99 ms | max ms | p50 ratio | p99 ratio |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        row("baseline, kept connection", &base_kept, &base_kept);
        row("readyd, hung check, kept connection", &kept, &base_kept);
        row("baseline, new connection each", &base_fresh, &base_fresh);
        row(
            "readyd, hung check, new connection each",
            &fresh,
            &base_fresh,
        );

        baseline_stop.cancel();
        server.stop().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
}
