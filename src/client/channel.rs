//! The gRPC channel readyd uses to call a gRPC server (another readyd, or a
//! dependency's grpc.health.v1): tonic's `Channel` plus a transparent retry
//! of calls the server never processed.
//!
//! Why the retry: when a server shuts down gracefully it sends HTTP/2
//! GOAWAY. hyper's HTTP/2 client (under tonic) has a race there
//! (hyperium/hyper#2500): a call handed to the connection while the GOAWAY
//! is being read fails with the GOAWAY's `NO_ERROR`, which tonic maps to
//! `INTERNAL`, although the call never reached the server. Clients do not
//! retry `INTERNAL`. HTTP/2 (RFC 9113 §6.8, §8.7) and gRPC's transparent
//! retry say such a call may be sent again, on a new connection: that is
//! what this does, so a call racing a shutdown ends OK (on another server
//! or connection) or `UNAVAILABLE` (nothing accepts it any more), never
//! `INTERNAL`.
//!
//! A call is retried only when the error proves the server did not process
//! it: GOAWAY with `NO_ERROR` for a stream above the server's last stream
//! (or never sent), `REFUSED_STREAM`, or hyper's "canceled" (queued on a
//! connection that closed before it was written). The request body is
//! buffered to be sent again, so this is for unary and server-streaming
//! calls (readyd has no others).

use std::error::Error as StdError;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

/// Errors as tower passes them.
type BoxError = Box<dyn StdError + Send + Sync>;

/// Attempts per call, the first included: one retry almost always reaches a
/// new connection; the others cover a second connection closing meanwhile.
const ATTEMPTS: usize = 4;

/// A connected channel that retries calls the server never processed.
pub type RetryingChannel = RetryUnprocessed<Channel>;

/// Connects to `endpoint` now.
pub async fn connect(endpoint: Endpoint) -> Result<RetryingChannel, tonic::transport::Error> {
    Ok(RetryUnprocessed::new(endpoint.connect().await?))
}

/// A channel that connects on its first call (and reconnects as needed).
pub fn connect_lazy(endpoint: Endpoint) -> RetryingChannel {
    RetryUnprocessed::new(endpoint.connect_lazy())
}

/// Wraps a gRPC transport so that calls the server never processed are sent
/// again (see the module documentation).
#[derive(Debug, Clone)]
pub struct RetryUnprocessed<S> {
    /// The transport.
    inner: S,
}

impl<S> RetryUnprocessed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<http::Request<Body>> for RetryUnprocessed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready makes the first attempt (tower's
        // contract); later attempts wait for readiness themselves.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body: Bytes = body.collect().await?.to_bytes();
            let mut attempt = 1;
            loop {
                let request =
                    http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
                let result = if attempt == 1 {
                    inner.call(request).await
                } else {
                    match inner.ready().await {
                        Ok(ready) => ready.call(request).await,
                        Err(err) => Err(err),
                    }
                };
                match result {
                    Err(err) => {
                        let err: BoxError = err.into();
                        if attempt < ATTEMPTS && never_processed(err.as_ref()) {
                            tracing::debug!(attempt, error = %err, "the server did not process the call; sending it again");
                            attempt += 1;
                            continue;
                        }
                        return Err(err);
                    }
                    Ok(response) => return Ok(response),
                }
            }
        })
    }
}

/// Whether `err` proves the server never processed the call, so that
/// sending it again cannot do anything twice.
pub fn never_processed(err: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let refused_by_goaway = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
            let refused_stream = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (refused_by_goaway || refused_stream);
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        source = err.source();
    }
    false
}
