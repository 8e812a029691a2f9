//! Every HTTP request, observed once, as the gRPC calls are
//! (`api::observe`): a `http` tracing span (route, method, peer, status,
//! duration), a warning for a 5xx, and the HTTP metrics (count by route,
//! method and status; latency by route). Routes are the router's patterns
//! (`/ofrep/v1/evaluate/flags/{key}`), never the raw path, so labels stay a
//! fixed set whatever clients send. A stream is observed when it starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram, counter, histogram};
use tracing::Instrument;

use crate::telemetry::{HTTP_DURATION, HTTP_REQUESTS};

/// The label of requests to no route.
const UNKNOWN: &str = "unknown";

/// The metric handles of every route, method and status seen so far:
/// looked up by label values on every request, the metrics cost a fifth of
/// a small request's time in the service. The sets are bounded: routes are
/// the router's patterns, methods five labels, statuses the codes readyd
/// answers.
#[derive(Default)]
pub struct HttpMetrics {
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
}

/// One route's handles.
struct RouteMetrics {
    route: String,
    duration: Histogram,
    requests: RwLock<HashMap<(&'static str, u16), Counter>>,
}

impl HttpMetrics {
    /// The handles of `route`.
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(found) = self
            .routes
            .read()
            .ok()
            .and_then(|routes| routes.get(route).cloned())
        {
            return found;
        }
        let made = || {
            Arc::new(RouteMetrics {
                route: route.to_owned(),
                duration: histogram!(HTTP_DURATION, "route" => route.to_owned()),
                requests: RwLock::default(),
            })
        };
        match self.routes.write() {
            Ok(mut routes) => Arc::clone(routes.entry(route.to_owned()).or_insert_with(made)),
            // Poisoned (a panic while held): handles made afresh still count.
            Err(_) => made(),
        }
    }
}

impl RouteMetrics {
    /// Counts one request answered `status`.
    fn count(&self, method: &'static str, status: u16) {
        if let Some(counter) = self
            .requests
            .read()
            .ok()
            .and_then(|requests| requests.get(&(method, status)).cloned())
        {
            counter.increment(1);
            return;
        }
        let made = || counter!(HTTP_REQUESTS, "route" => self.route.clone(), "method" => method, "status" => status.to_string());
        match self.requests.write() {
            Ok(mut requests) => requests
                .entry((method, status))
                .or_insert_with(made)
                .increment(1),
            Err(_) => made().increment(1),
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn observe(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = metrics.route(
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNKNOWN, MatchedPath::as_str),
    );
    let method = method_label(request.method());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    // At debug, as the gRPC span; its fields are formatted only when it
    // is enabled, which it is not by default.
    let span = tracing::debug_span!(
        "http",
        route = %route.route,
        method,
        peer = %peer_label(peer),
        status = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    if !span.is_disabled() {
        span.record("status", status);
        span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
    }
    if response.status().is_server_error() && status != 503 {
        tracing::warn!(
            route = %route.route,
            method,
            peer = %peer_label(peer),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "HTTP request failed"
        );
    } else {
        span.in_scope(|| tracing::debug!("request finished"));
    }
    route.count(method, status);
    route.duration.record(elapsed.as_secs_f64());
    response
}

/// A peer as the log shows it (`-`: unknown).
fn peer_label(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_owned(), |peer| peer.to_string())
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
