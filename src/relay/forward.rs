//! On a follower, calls that need the database go to the upstream.
//!
//! A follower answers from its own memory exactly what a readyd answers
//! from its snapshot (evaluation, flag and config reads, Watch streams,
//! health, the flagd protocol, Follow). Every other method (writes, the
//! audit trail, deployments, health history, CheckDatabase, and any method
//! added later) is sent as it came, headers included, so the upstream
//! decides with the caller's own token and records the caller's actor: a
//! follower never holds more rights than its caller.
//!
//! A write answers once the follower's own snapshot holds the version it
//! produced (the upstream names it in [`VERSION_HEADER`]), so the writer's
//! next read through this follower sees it, through any number of tiers.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use tonic::body::Body;
use tower::{Layer, Service, ServiceExt};

use super::VERSION_HEADER;
use crate::api::read_your_write;
use crate::client::channel::RetryingChannel;
use crate::state::State;

/// Methods a follower answers itself, by full path; services answered
/// whole end with `/`.
const LOCAL: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/flagd.evaluation.v1.Service/",
    "/flagd.evaluation.v2.Service/",
    "/readyd.v1.FlagService/GetFlag",
    "/readyd.v1.FlagService/ListFlags",
    "/readyd.v1.FlagService/EvaluateFlag",
    "/readyd.v1.FlagService/EvaluateFlags",
    "/readyd.v1.FlagService/WatchFlags",
    "/readyd.v1.FlagService/GetSegment",
    "/readyd.v1.FlagService/ListSegments",
    "/readyd.v1.ConfigService/GetConfig",
    "/readyd.v1.ConfigService/ListConfigs",
    "/readyd.v1.ConfigService/GetMaintenanceMode",
    "/readyd.v1.ConfigService/WatchConfigs",
    "/readyd.v1.HealthService/GetHealth",
    "/readyd.v1.HealthService/WatchHealth",
    "/readyd.v1.ReplicationService/Follow",
];

/// Whether a follower answers `path` from its own memory.
pub fn is_local(path: &str) -> bool {
    LOCAL.iter().any(|local| {
        if local.ends_with('/') {
            path.starts_with(local)
        } else {
            path == *local
        }
    })
}

/// The layer: forwards to `upstream` when set (a follower), else does
/// nothing.
#[derive(Debug, Clone)]
pub struct ForwardLayer {
    /// The upstream, and the state whose version a write waits for.
    to: Option<(RetryingChannel, Arc<State>)>,
}

impl ForwardLayer {
    /// Forwards to `upstream`, waiting for versions in `state`.
    pub fn to(upstream: RetryingChannel, state: Arc<State>) -> Self {
        Self {
            to: Some((upstream, state)),
        }
    }

    /// Forwards nothing (a readyd with a database).
    pub fn none() -> Self {
        Self { to: None }
    }
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Forward {
            inner,
            to: self.to.clone(),
        }
    }
}

/// The service made by [`ForwardLayer`].
#[derive(Debug, Clone)]
pub struct Forward<S> {
    inner: S,
    to: Option<(RetryingChannel, Arc<State>)>,
}

impl<S> Service<http::Request<Body>> for Forward<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some((upstream, state)) = self
            .to
            .as_ref()
            .filter(|_| !is_local(request.uri().path()))
            .cloned()
        else {
            return Either::Left(self.inner.call(request));
        };
        Either::Right(Box::pin(async move {
            let answer = match upstream.oneshot(request).await {
                Ok(answer) => answer,
                Err(err) => {
                    let status = tonic::Status::unavailable(format!(
                        "this readyd follows an upstream, which cannot be reached: {err}"
                    ));
                    return Ok(status.into_http());
                }
            };
            let written = answer
                .headers()
                .get(VERSION_HEADER)
                .and_then(|value| value.to_str().ok()?.parse::<i64>().ok());
            if let Some(version) = written {
                read_your_write(&state, version).await;
            }
            Ok(answer)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_memory_are_local_and_the_rest_is_forwarded() {
        for local in [
            "/grpc.health.v1.Health/Check",
            "/flagd.evaluation.v2.Service/ResolveBoolean",
            "/readyd.v1.FlagService/EvaluateFlag",
            "/readyd.v1.ConfigService/ListConfigs",
            "/readyd.v1.ReplicationService/Follow",
        ] {
            assert!(is_local(local), "{local}");
        }
        for forwarded in [
            "/readyd.v1.FlagService/UpsertFlag",
            "/readyd.v1.ConfigService/ListConfigAudit",
            "/readyd.v1.DeploymentService/ListDeployments",
            "/readyd.v1.HealthService/ListHealthHistory",
            "/readyd.v1.HealthService/CheckDatabase",
            // Usage and the stale list need the database.
            "/readyd.v1.FlagService/GetFlagUsage",
            "/readyd.v1.FlagService/ListStaleFlags",
            "/readyd.v1.ReplicationService/RecordHealth",
            "/readyd.v1.FlagService/SomethingNew",
            "/readyd.v1.FlagService/EvaluateFlagX",
        ] {
            assert!(!is_local(forwarded), "{forwarded}");
        }
    }
}
