//! Every call, observed once: a tracing span (`rpc`, with service, method,
//! peer, code and duration) and the RPC metrics (count by code, latency).
//!
//! A tower layer around the whole server, outside the auth layer, so refused
//! calls are seen too. The code is read from the response headers: tonic
//! puts an error's `grpc-status` there (a trailers-only response); a
//! response without it started successfully (`OK`). A stream is observed
//! when it starts, not when it ends.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, histogram};
use prost::Message;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::client::code_name;
use crate::telemetry::{RPC_DURATION, RPC_REQUESTS};

/// The label of calls to a path readyd does not serve: labels stay a fixed
/// set whatever clients send.
const UNKNOWN: &str = "unknown";

/// Paths readyd serves, `/package.Service/Method`.
#[derive(Debug, Default)]
pub struct KnownMethods(HashSet<String>);

impl KnownMethods {
    /// Every method of every service in the encoded descriptor sets.
    pub fn from_descriptors(sets: &[&[u8]]) -> Self {
        let mut known = HashSet::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    let qualified = if package.is_empty() {
                        service_name
                    } else {
                        format!("{package}.{service_name}")
                    };
                    for method in service.method {
                        known.insert(format!("/{qualified}/{}", method.name.unwrap_or_default()));
                    }
                }
            }
        }
        Self(known)
    }

    /// (service, method) of `path` when it is known.
    fn labels<'a>(&self, path: &'a str) -> Option<(&'a str, &'a str)> {
        if !self.0.contains(path) {
            return None;
        }
        path.trim_start_matches('/').split_once('/')
    }
}

/// The layer; cheap to clone.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    known: Arc<KnownMethods>,
}

impl ObserveLayer {
    /// Observes calls, labelling those to `known` paths by name.
    pub fn new(known: KnownMethods) -> Self {
        Self::shared(Arc::new(known))
    }

    /// Like [`ObserveLayer::new`], for paths shared by several servers.
    pub fn shared(known: Arc<KnownMethods>) -> Self {
        Self { known }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            known: Arc::clone(&self.known),
        }
    }
}

/// The service made by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    known: Arc<KnownMethods>,
}

/// The gRPC code of a response, by name.
fn code_of(headers: &http::HeaderMap) -> &'static str {
    match headers.get("grpc-status") {
        None => "OK",
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(|raw| raw.parse::<i32>().ok())
            .map_or("UNKNOWN", |code| code_name(tonic::Code::from_i32(code))),
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = self
            .known
            .labels(request.uri().path())
            .map_or((UNKNOWN.to_owned(), UNKNOWN.to_owned()), |(s, m)| {
                (s.to_owned(), m.to_owned())
            });
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map_or_else(|| "-".to_owned(), |addr| addr.to_string());
        // At debug, not info: an enabled span has its fields formatted on
        // every call (about 14 % of EvaluateFlag's server CPU time, see
        // BENCHMARKS.md) though nothing below warn is logged in it by
        // default. The warn line below carries the span's fields itself.
        let span = tracing::debug_span!(
            "rpc",
            service = %service,
            method = %method,
            peer = %peer,
            code = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let in_span = span.clone();
        Box::pin(
            async move {
                let result = call.await;
                let elapsed = started.elapsed();
                let code = match &result {
                    Ok(response) => code_of(response.headers()),
                    Err(_) => "UNAVAILABLE",
                };
                span.record("code", code);
                span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
                match code {
                    "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => {
                        tracing::warn!(
                            service = %service,
                            method = %method,
                            peer = %peer,
                            code,
                            duration_ms = elapsed.as_secs_f64() * 1000.0,
                            "call failed"
                        );
                    }
                    _ => tracing::debug!("call finished"),
                }
                counter!(RPC_REQUESTS, "service" => service.clone(), "method" => method.clone(), "code" => code)
                    .increment(1);
                histogram!(RPC_DURATION, "service" => service, "method" => method)
                    .record(elapsed.as_secs_f64());
                result
            }
            .instrument(in_span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pb;

    #[test]
    fn every_served_method_is_known_and_nothing_else() {
        let known = KnownMethods::from_descriptors(&[pb::FILE_DESCRIPTOR_SET]);
        for path in [
            "/grpc.health.v1.Health/Check",
            "/readyd.v1.FlagService/EvaluateFlag",
            "/readyd.v1.HealthService/GetHealth",
        ] {
            assert!(known.labels(path).is_some(), "{path}");
        }
        assert_eq!(
            known.labels("/readyd.v1.FlagService/EvaluateFlag"),
            Some(("readyd.v1.FlagService", "EvaluateFlag"))
        );
        for junk in ["/readyd.v1.FlagService/Nope", "/x/y", "", "/"] {
            assert_eq!(known.labels(junk), None, "{junk}");
        }
    }

    #[test]
    fn codes_come_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), "OK");
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&headers), "NOT_FOUND");
        headers.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(code_of(&headers), "UNKNOWN");
    }
}
