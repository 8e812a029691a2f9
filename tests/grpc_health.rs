//! grpc.health.v1 over real connections: Check, List and Watch, on a full
//! readyd and on the service alone with probe states the test controls.

mod support;

use std::sync::Arc;
use std::time::Duration;

use readyd::api::grpc_health::GrpcHealth;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::grpc_health_v1::health_server::HealthServer;
use readyd::api::pb::grpc_health_v1::{HealthCheckRequest, HealthListRequest};
use readyd::api::streams::StreamGate;
use readyd::health::{Probes, ServingStatus as Probe};
use support::{TestDb, TestServer, next, serve_args, wait_for_probe};
use tonic::Code;
use tonic::transport::Channel;

fn request(name: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: name.into(),
    }
}

async fn status(
    client: &mut HealthClient<Channel>,
    name: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = client.check(request(name)).await?;
    Ok(response.into_inner().status())
}

/// The health service alone, on a loopback port, over probes the test sets.
struct BareHealth {
    probes: Arc<Probes>,
    streams: Arc<StreamGate>,
    client: HealthClient<Channel>,
}

async fn bare_health() -> BareHealth {
    let probes = Arc::new(Probes::new());
    let streams = StreamGate::new("Watch", "--max-watch-streams", 100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = HealthServer::new(GrpcHealth::new(Arc::clone(&probes), Arc::clone(&streams)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = HealthClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    BareHealth {
        probes,
        streams,
        client,
    }
}

#[tokio::test]
async fn a_started_readyd_serves_every_standard_name() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    wait_for_probe(server.channel().await, "startup", ServingStatus::Serving).await;
    let mut client = HealthClient::new(server.channel().await);
    for name in ["", "liveness", "startup", "readiness", "dep.database"] {
        assert_eq!(
            status(&mut client, name).await.expect("check"),
            ServingStatus::Serving,
            "{name:?}"
        );
    }
    let listed = client
        .list(HealthListRequest {})
        .await
        .expect("list")
        .into_inner()
        .statuses;
    let mut names: Vec<_> = listed.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        ["", "dep.database", "liveness", "readiness", "startup"]
    );
    assert!(
        listed
            .values()
            .all(|s| s.status() == ServingStatus::Serving)
    );
    server.stop().await;
}

#[tokio::test]
async fn check_on_an_unknown_name_is_not_found() {
    let mut health = bare_health().await;
    let err = status(&mut health.client, "dep.nothing")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn watch_on_an_unknown_name_streams_service_unknown_then_the_real_status() {
    let mut health = bare_health().await;
    let mut stream = health
        .client
        .watch(request("dep.redis"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut stream).await.expect("first").status(),
        ServingStatus::ServiceUnknown
    );
    health.probes.set("dep.redis", Probe::NotServing);
    assert_eq!(
        next(&mut stream).await.expect("appears").status(),
        ServingStatus::NotServing
    );
    health.probes.set("dep.redis", Probe::Serving);
    assert_eq!(
        next(&mut stream).await.expect("recovers").status(),
        ServingStatus::Serving
    );
    health.probes.remove("dep.redis");
    assert_eq!(
        next(&mut stream).await.expect("removed").status(),
        ServingStatus::ServiceUnknown
    );
}

#[tokio::test]
async fn watch_sends_only_changes() {
    let mut health = bare_health().await;
    let mut stream = health
        .client
        .watch(request("readiness"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut stream).await.expect("first").status(),
        ServingStatus::NotServing
    );
    // Unchanged sets of this name, and changes of other names, send nothing.
    health.probes.set("readiness", Probe::NotServing);
    health.probes.set("dep.other", Probe::Serving);
    health.probes.set("liveness", Probe::NotServing);
    health.probes.set("readiness", Probe::Serving);
    // The next message is the real change, not a repeat.
    assert_eq!(
        next(&mut stream).await.expect("change").status(),
        ServingStatus::Serving
    );
    let quiet = tokio::time::timeout(
        Duration::from_millis(200),
        tokio_stream::StreamExt::next(&mut stream),
    )
    .await;
    assert!(quiet.is_err(), "no message without a change, got {quiet:?}");
}

#[tokio::test]
async fn draining_turns_watchers_not_serving_then_ends_their_streams() {
    let mut health = bare_health().await;
    health.probes.set("readiness", Probe::Serving);
    let mut stream = health
        .client
        .watch(request("readiness"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut stream).await.expect("first").status(),
        ServingStatus::Serving
    );
    health.probes.drain();
    health.streams.end_all();
    assert_eq!(
        next(&mut stream).await.expect("drained").status(),
        ServingStatus::NotServing
    );
    assert!(
        next(&mut stream).await.is_none(),
        "the stream ends cleanly after the drain"
    );
    // Draining is final: nothing turns SERVING again.
    health.probes.set("readiness", Probe::Serving);
    assert_eq!(
        status(&mut health.client, "readiness")
            .await
            .expect("check"),
        ServingStatus::NotServing
    );
}

#[tokio::test]
async fn list_refuses_more_than_one_hundred_names() {
    let mut health = bare_health().await;
    // Four standard names plus 96 makes exactly 100: still listed.
    for i in 0..96 {
        health.probes.set(&format!("dep.check{i}"), Probe::Serving);
    }
    let listed = health
        .client
        .list(HealthListRequest {})
        .await
        .expect("100 names")
        .into_inner();
    assert_eq!(listed.statuses.len(), 100);
    health.probes.set("dep.one-too-many", Probe::Serving);
    let err = health
        .client
        .list(HealthListRequest {})
        .await
        .expect_err("101 names");
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn shutdown_turns_a_watched_readiness_not_serving_before_the_stream_ends() {
    let db = TestDb::new().await;
    let mut server = TestServer::start(serve_args(&db.url)).await;
    wait_for_probe(server.channel().await, "readiness", ServingStatus::Serving).await;
    let mut client = HealthClient::new(server.channel().await);
    let mut stream = client
        .watch(request("readiness"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut stream).await.expect("first").status(),
        ServingStatus::Serving
    );
    server.begin_shutdown();
    assert_eq!(
        next(&mut stream).await.expect("draining").status(),
        ServingStatus::NotServing
    );
    assert!(next(&mut stream).await.is_none(), "the stream ends with OK");
    server.stop().await;
}
