//! The baseline servers. For gRPC: a bare tonic server whose only RPC worth
//! calling, grpc.health.v1 `Check`, answers SERVING without looking anything
//! up. It uses readyd's transport settings (TCP_NODELAY, keepalive, message
//! limits) and none of its layers, so the gap between it and readyd is what
//! readyd's own work costs. For HTTP ([`start_http`]): a bare axum router
//! served by `axum::serve` as readyd's HTTP surface is (HTTP/1.1 and h2c,
//! peer address recorded, graceful shutdown), whose OFREP paths read the
//! request body and answer a constant small JSON body.

use std::net::SocketAddr;
use std::time::Duration;

use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_server::{Health, HealthServer};
use readyd::api::pb::grpc_health_v1::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What `--serve-baseline` prints once it listens, followed by the address.
pub const LISTENING: &str = "baseline listening on ";

/// readyd's keepalive settings (`src/app.rs`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The empty service.
struct Empty;

#[tonic::async_trait]
impl Health for Empty {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("the baseline answers Check only"))
    }

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<HealthCheckResponse>>, Status> {
        Err(Status::unimplemented("the baseline answers Check only"))
    }
}

/// Binds a loopback port and serves the baseline on it until `stop` fires.
pub async fn start(stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let service = HealthServer::new(Empty)
        .max_decoding_message_size(readyd::app::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(readyd::app::MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service);
    tokio::spawn(
        router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
    );
    addr
}

/// What `--serve-http-baseline` prints once it listens, followed by the
/// address.
pub const HTTP_LISTENING: &str = "HTTP baseline listening on ";

/// The HTTP baseline's answer: an OFREP single answer's shape and size,
/// always the same.
pub const HTTP_BODY: &str = r#"{"key":"bench_rollout","value":true,"variant":"on","reason":"SPLIT","metadata":{"version":"1"}}"#;

/// Reads the request's body (as readyd's OFREP handlers do) and answers
/// [`HTTP_BODY`].
async fn constant(_body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        HTTP_BODY,
    )
        .into_response()
}

/// Binds a loopback port and serves the HTTP baseline on it until `stop`
/// fires: readyd's `http::serve` without readyd's routes, layers and
/// handlers. Like readyd's HTTP listener, it sets TCP_NODELAY on every
/// connection (`axum::serve` alone does not).
pub async fn start_http(stop: CancellationToken) -> SocketAddr {
    use axum::routing::post;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let router = axum::Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(constant))
        .route("/ofrep/v1/evaluate/flags", post(constant));
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    });
    addr
}

/// The address in a `HTTP_LISTENING` line.
pub fn http_address_in(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(HTTP_LISTENING)?.trim().parse().ok()
}

/// The address in a `LISTENING` line.
pub fn address_in(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(LISTENING)?.trim().parse().ok()
}

/// The `--serve-baseline` mode: serve until SIGTERM, on a runtime shaped
/// like readyd's (tokio's multi-threaded default).
pub fn serve_forever() {
    serve_until_terminated(false);
}

/// The `--serve-http-baseline` mode: the same for the HTTP baseline.
pub fn serve_http_forever() {
    serve_until_terminated(true);
}

/// Serves the gRPC baseline, or the HTTP one when `http`, until SIGTERM.
fn serve_until_terminated(http: bool) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let stop = CancellationToken::new();
        if http {
            let addr = start_http(stop.clone()).await;
            println!("{HTTP_LISTENING}{addr}");
        } else {
            let addr = start(stop.clone()).await;
            println!("{LISTENING}{addr}");
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        terminate.recv().await;
        stop.cancel();
    });
}
