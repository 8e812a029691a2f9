//! The baseline server: a bare tonic server whose only RPC worth calling,
//! grpc.health.v1 `Check`, answers SERVING without looking anything up. It
//! uses readyd's transport settings (TCP_NODELAY, keepalive, message
//! limits) and none of its layers, so the gap between it and readyd is what
//! readyd's own work costs.

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

/// The address in a `LISTENING` line.
pub fn address_in(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(LISTENING)?.trim().parse().ok()
}

/// The `--serve-baseline` mode: serve until SIGTERM, on a runtime shaped
/// like readyd's (tokio's multi-threaded default).
pub fn serve_forever() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let addr = start(stop.clone()).await;
        println!("{LISTENING}{addr}");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        terminate.recv().await;
        stop.cancel();
    });
}
