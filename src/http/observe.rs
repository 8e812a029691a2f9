//! Every HTTP request, observed once, as the gRPC calls are
//! (`api::observe`): a `http` tracing span (route, method, peer, status,
//! duration), a warning for a 5xx, and the HTTP metrics (count by route,
//! method and status; latency by route). Routes are the router's patterns
//! (`/ofrep/v1/evaluate/flags/{key}`), never the raw path, so labels stay a
//! fixed set whatever clients send. A stream is observed when it starts.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};
use tracing::Instrument;

use crate::telemetry::{HTTP_DURATION, HTTP_REQUESTS};

/// The label of requests to no route.
const UNKNOWN: &str = "unknown";

/// The middleware (`axum::middleware::from_fn`).
pub async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNKNOWN, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |info| info.0.to_string());
    // At debug, as the gRPC span: formatting its fields on every request
    // costs time though nothing below warn is logged by default.
    let span = tracing::debug_span!(
        "http",
        route = %route,
        method,
        peer = %peer,
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
    if response.status().is_server_error() && status != 503 {
        tracing::warn!(
            route = %route,
            method,
            peer = %peer,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "HTTP request failed"
        );
    } else {
        span.in_scope(|| tracing::debug!("request finished"));
    }
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route).record(elapsed.as_secs_f64());
    response
}

/// A method's label: the ones the surface serves by name, the rest
/// `other` (labels stay a fixed set).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
