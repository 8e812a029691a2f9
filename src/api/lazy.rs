//! A gRPC service built on its first call instead of at start.
//!
//! The reflection services decode every descriptor of the API into their
//! own tables when built: 0.25 MiB for the two of them, held for the life of
//! the process, while reflection is asked for by people with `grpcurl`, not
//! by the applications a sidecar serves. Wrapped in [`Lazy`], they cost
//! nothing until the first reflection call.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt};

/// `S`, built by `build` on the first call (and shared by the clones);
/// a build that fails answers every call `INTERNAL`.
pub struct Lazy<S, F> {
    service: Arc<OnceLock<Option<S>>>,
    build: F,
}

impl<S, F: Clone> Clone for Lazy<S, F> {
    fn clone(&self) -> Self {
        Lazy {
            service: Arc::clone(&self.service),
            build: self.build.clone(),
        }
    }
}

impl<S, F> Lazy<S, F>
where
    F: Fn() -> Option<S>,
{
    /// A service that `build` makes when it is first called.
    pub fn new(build: F) -> Self {
        Lazy {
            service: Arc::new(OnceLock::new()),
            build,
        }
    }

    /// Whether the service has been built yet.
    pub fn is_built(&self) -> bool {
        self.service.get().is_some()
    }
}

impl<S: NamedService, F> NamedService for Lazy<S, F> {
    const NAME: &'static str = S::NAME;
}

impl<S, F> Service<http::Request<Body>> for Lazy<S, F>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    F: Fn() -> Option<S>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.service.get_or_init(&self.build) {
            Some(service) => Box::pin(service.clone().oneshot(request)),
            None => Box::pin(async {
                Ok(Status::internal("this service could not be built").into_http())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_service_is_built_on_the_first_call_only() {
        let lazy = Lazy::new(|| {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::api::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .ok()
        });
        let mut clone = lazy.clone();
        assert!(!lazy.is_built());
        let request = http::Request::builder()
            .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let answer = clone.call(request).await;
        assert!(answer.is_ok());
        assert!(lazy.is_built(), "the clone built it for both");
    }

    /// Stands for a service whose build failed; never called.
    #[derive(Clone)]
    struct Unbuilt;

    impl Service<http::Request<Body>> for Unbuilt {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(Status::ok("").into_http()))
        }
    }

    #[tokio::test]
    async fn a_failed_build_answers_internal() {
        let mut lazy = Lazy::new(|| None::<Unbuilt>);
        let request = http::Request::builder()
            .uri("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .body(Body::empty())
            .unwrap();
        let answer = lazy.call(request).await.unwrap();
        assert_eq!(
            answer.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"13"[..])
        );
    }
}
