//! readyd's HTTP surface, on `--http-listen` (HTTP/1.1 and HTTP/2 over
//! cleartext, both on one port): plain HTTP probes and the JSON health
//! report, for clients that cannot speak gRPC. It answers from memory with
//! the same rules and the same tokens as the gRPC API; a path means the same
//! as its gRPC call (`/api/health` is `HealthService/GetHealth`).
//!
//! It has its own port rather than sharing the gRPC one: the gRPC server's
//! HTTP/2 settings, limits and two-step GOAWAY shutdown stay as they are,
//! and a pod can expose the probes without exposing the API.

mod json;
pub mod probes;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::api::auth::{TokenCheck, authorize};
use crate::api::health::HealthApi;
use crate::api::pb::readyd::v1::HealthStatus;
use crate::health::monitor::HealthMonitor;
use crate::health::probes::{Probes, ServingStatus};
use probes::Probe;

/// What the HTTP handlers answer from.
pub struct HttpSurface {
    /// The probe states (the gRPC probes').
    pub probes: Arc<Probes>,
    /// The checks.
    pub monitor: Arc<HealthMonitor>,
    /// The health report, as `GetHealth` builds it.
    pub health: HealthApi,
    /// The tokens, as the gRPC API checks them.
    pub tokens: Arc<dyn TokenCheck>,
}

/// Every route of the surface.
pub fn router(surface: Arc<HttpSurface>) -> Router {
    Router::new()
        .route("/livez", get(|s, uri| probe(s, uri, Probe::Live)))
        .route("/readyz", get(|s, uri| probe(s, uri, Probe::Ready)))
        .route("/startupz", get(|s, uri| probe(s, uri, Probe::Started)))
        .route("/api/health", get(api_health))
        .fallback(|uri: Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no such path: {}", crate::echo::truncate(uri.path())),
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this path does not take that method",
            )
        })
        .with_state(surface)
}

/// Serves `surface` on `listener` until `stop` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    surface: Arc<HttpSurface>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(surface))
        .with_graceful_shutdown(stop)
        .await
}

/// `/livez`, `/readyz`, `/startupz` (see [`probes`]).
async fn probe(State(surface): State<Arc<HttpSurface>>, uri: Uri, probe: Probe) -> Response {
    let serving = surface.probes.get(probe.service()) == Some(ServingStatus::Serving);
    let lines = probes::lines(
        probe,
        &surface.monitor.checks(),
        surface.monitor.startup_finished(),
        surface.probes.is_leaving(),
    );
    let verbose = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("verbose"))
    });
    let (code, body) = probes::answer(probe, serving, &lines, verbose);
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (code, plain_headers("text/plain; charset=utf-8"), body).into_response()
}

/// `GET /api/health`: the full report, as `GetHealth` answers it. A failing
/// check is data, not an error: the code is 200, or 503 when the report
/// is UNHEALTHY, so a plain HTTP check can read the code alone.
async fn api_health(State(surface): State<Arc<HttpSurface>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorize(
        &*surface.tokens,
        "/readyd.v1.HealthService/GetHealth",
        headers.get(header::AUTHORIZATION),
    ) {
        return status_error(&refused);
    }
    let report = surface.health.report();
    let code = if report.status() == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, &json::health_report(&report))
}

/// Headers every answer carries: answers are live state, never cached.
fn plain_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 3] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    (code, plain_headers("application/json"), body.to_string()).into_response()
}

/// An error answer: `{"code": "NOT_FOUND", "message": "…"}`, `code` being
/// the gRPC code's name the same failure has over gRPC.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

/// A gRPC status as an HTTP error.
fn status_error(status: &tonic::Status) -> Response {
    use tonic::Code;
    let (http, name) = match status.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::FailedPrecondition => (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "CANCELLED"),
        // Internal details never reach a body.
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error; see readyd's log",
            );
        }
    };
    error(http, name, status.message())
}
