//! Every HTTP request, observed once, as the gRPC calls are
//! (`api::observe`): a `http` tracing span (route, method, peer, status,
//! duration), a warning for a 5xx, and the HTTP metrics (count by route,
//! method and status; latency by route). Routes are the router's patterns
//! (`/ofrep/v1/evaluate/flags/{key}`), never the raw path, so labels stay a
//! fixed set whatever clients send. A stream is observed when it starts.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::response::Response;
use metrics::{Counter, Histogram, counter, histogram};
use tower::{Layer, Service};

use crate::telemetry::{HTTP_DURATION, HTTP_REQUESTS};

/// The label of requests to no route.
const UNKNOWN: &str = "unknown";

/// The method labels: the methods the surface serves by name, the rest
/// `other` (labels stay a fixed set).
const METHODS: [&str; 5] = ["GET", "POST", "HEAD", "OPTIONS", "other"];

/// The statuses readyd answers most, each counted through a handle made
/// once and then read without a lock; others go through a map.
const COMMON_STATUSES: [u16; 12] = [200, 204, 304, 400, 401, 403, 404, 405, 409, 413, 429, 503];

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
    /// The route's label (the router's pattern).
    route: String,
    /// Its latency.
    duration: Histogram,
    /// Its requests by method and common status, made at first use:
    /// reading one is a load, where a lock taken for reading writes to a
    /// line every core shares.
    common: [[OnceLock<Counter>; COMMON_STATUSES.len()]; METHODS.len()],
    /// Its requests by method and any other status.
    requests: RwLock<HashMap<(usize, u16), Counter>>,
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
                common: Default::default(),
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
    /// Counts one request of `method` (an index of [`METHODS`]) answered
    /// `status`.
    fn count(&self, method: usize, status: u16) {
        let label = METHODS.get(method).copied().unwrap_or("other");
        let made = || counter!(HTTP_REQUESTS, "route" => self.route.clone(), "method" => label, "status" => status.to_string());
        if let Some(slots) = self.common.get(method)
            && let Some(slot) = COMMON_STATUSES
                .iter()
                .position(|&common| common == status)
                .and_then(|at| slots.get(at))
        {
            slot.get_or_init(made).increment(1);
            return;
        }
        if let Some(counter) = self
            .requests
            .read()
            .ok()
            .and_then(|requests| requests.get(&(method, status)).cloned())
        {
            counter.increment(1);
            return;
        }
        match self.requests.write() {
            Ok(mut requests) => requests
                .entry((method, status))
                .or_insert_with(made)
                .increment(1),
            Err(_) => made().increment(1),
        }
    }
}

/// The layer (`Router::layer`, which puts it around each route's service,
/// where the route is known).
#[derive(Clone, Default)]
pub struct ObserveLayer {
    metrics: Arc<HttpMetrics>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        // Inside the router every routed request carries its route; one
        // that does not went to no route.
        self.with_route(UNKNOWN, inner)
    }
}

impl ObserveLayer {
    /// `inner` observed, a request that carries no route (from the router)
    /// counted as `route`: for a service that answers one route outside
    /// the router.
    pub fn with_route<S>(&self, route: &'static str, inner: S) -> Observe<S> {
        Observe {
            inner,
            handles: Arc::new(Handles {
                metrics: Arc::clone(&self.metrics),
                route: OnceLock::new(),
                unrouted: route,
            }),
        }
    }
}

/// What one layered service counts with.
struct Handles {
    /// Every route's handles.
    metrics: Arc<HttpMetrics>,
    /// The handles of the route this service serves, found at its first
    /// request: the router layers each route's service apart, so most
    /// requests find theirs here without a lock. A request of another
    /// route (a service shared by several, such as a fallback) looks its
    /// own up in `metrics`.
    route: OnceLock<Arc<RouteMetrics>>,
    /// The route of a request the router has not routed: `unknown`, or
    /// the one route of a service outside the router.
    unrouted: &'static str,
}

impl Handles {
    /// The handles of `route`.
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(known) = self.route.get()
            && known.route == route
        {
            return Arc::clone(known);
        }
        let found = self.metrics.route(route);
        let _ = self.route.set(Arc::clone(&found));
        found
    }
}

/// A service observed (see [`ObserveLayer`]).
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = self.handles.route(
            request
                .extensions()
                .get::<MatchedPath>()
                .map_or(self.handles.unrouted, MatchedPath::as_str),
        );
        let method = method_index(request.method());
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        // At debug, as the gRPC span; its fields are formatted only when it
        // is enabled, which it is not by default.
        let span = tracing::debug_span!(
            "http",
            route = %route.route,
            method = METHODS.get(method).copied().unwrap_or("other"),
            peer = %peer_label(peer),
            status = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Observed {
            inner,
            route,
            method,
            peer,
            span,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered: observed when its answer is ready.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        route: Arc<RouteMetrics>,
        method: usize,
        peer: Option<SocketAddr>,
        span: tracing::Span,
        started: Instant,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = {
            // Entered on each poll, as `Instrument` does.
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        // An error (none for a router's services) has no status to count.
        if let Ok(response) = &answered {
            finished(
                this.route,
                *this.method,
                *this.peer,
                this.span,
                this.started.elapsed(),
                response,
            );
        }
        Poll::Ready(answered)
    }
}

/// Observes one request answered with `response` after `elapsed`.
fn finished(
    route: &RouteMetrics,
    method: usize,
    peer: Option<SocketAddr>,
    span: &tracing::Span,
    elapsed: std::time::Duration,
    response: &Response,
) {
    let status = response.status().as_u16();
    let method_label = METHODS.get(method).copied().unwrap_or("other");
    if !span.is_disabled() {
        span.record("status", status);
        span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
    }
    if response.status().is_server_error() && status != 503 {
        tracing::warn!(
            route = %route.route,
            method = method_label,
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
}

/// A peer as the log shows it (`-`: unknown).
fn peer_label(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_owned(), |peer| peer.to_string())
}

/// A method's label, as an index of [`METHODS`]: the ones the surface
/// serves by name, the rest `other` (labels stay a fixed set).
fn method_index(method: &axum::http::Method) -> usize {
    use axum::http::Method;
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::HEAD => 2,
        Method::OPTIONS => 3,
        _ => 4,
    }
}
