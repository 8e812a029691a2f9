//! The bulk evaluation answered before the router: `POST
//! /ofrep/v1/evaluate/flags` goes straight to its handler, observed as its
//! route; every other request goes to the router. A page of a web or
//! mobile client repeats this request while it polls, mostly to be told
//! `304`, and the router's work for it (matching, a boxed service per
//! layer, request extensions, a boxed handler) was about a sixth of such an
//! answer's cost (BENCHMARKS.md, "OFREP over HTTP"). Other methods on the
//! path still reach the router, which answers them `405`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::future::Either;
use tower::Service;

use super::observe::{Observe, Observed};
use super::{BULK_PATH, HttpSurface, ofrep_evaluate_all};

/// `POST /ofrep/v1/evaluate/flags` to `bulk`, everything else to `router`.
#[derive(Clone)]
pub struct BulkFirst<S> {
    bulk: Observe<BulkEvaluation>,
    router: S,
}

impl<S> BulkFirst<S> {
    /// Bulk evaluations to `bulk`, the rest to `router`.
    pub fn new(bulk: Observe<BulkEvaluation>, router: S) -> Self {
        BulkFirst { bulk, router }
    }
}

impl<S> Service<Request> for BulkFirst<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Observed<BulkFuture>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The bulk service is always ready.
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == axum::http::Method::POST && request.uri().path() == BULK_PATH {
            Either::Left(self.bulk.call(request))
        } else {
            Either::Right(self.router.call(request))
        }
    }
}

/// A bulk evaluation being answered.
pub type BulkFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// [`ofrep_evaluate_all`] as a service of its own.
#[derive(Clone)]
pub struct BulkEvaluation(Arc<HttpSurface>);

impl BulkEvaluation {
    /// Bulk evaluations of `surface`.
    pub fn new(surface: &Arc<HttpSurface>) -> Self {
        BulkEvaluation(Arc::clone(surface))
    }
}

impl Service<Request> for BulkEvaluation {
    type Response = Response;
    type Error = Infallible;
    type Future = BulkFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> BulkFuture {
        let surface = Arc::clone(&self.0);
        Box::pin(async move { Ok(ofrep_evaluate_all(State(surface), request).await) })
    }
}
