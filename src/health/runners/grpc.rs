//! A gRPC server: grpc.health.v1 Check for the URL's service name (empty: the
//! server as a whole) must answer SERVING. This is the standard health
//! protocol that Kubernetes gRPC probes and load balancers use, so the answer
//! is the server's own verdict and not merely an open port. The channel is
//! connected on every run, so a run also proves that new connections work.

use std::fmt;

use tonic::Code;
use tonic::transport::Endpoint;

use super::{describe_error, quote};
use crate::api::pb::grpc_health_v1::HealthCheckRequest;
use crate::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use crate::api::pb::grpc_health_v1::health_client::HealthClient;

/// Connects and asks grpc.health.v1 Check.
pub struct GrpcRunner {
    /// Where to connect (plaintext HTTP/2).
    endpoint: Endpoint,
    /// The service name asked about.
    service: String,
}

impl fmt::Debug for GrpcRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrpcRunner({}, {:?})", self.endpoint.uri(), self.service)
    }
}

impl GrpcRunner {
    /// A runner for `endpoint` (`http://host:port`) and the service name
    /// `service`.
    pub fn new(endpoint: &str, service: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|err| format!("not a usable gRPC endpoint {endpoint:?}: {err}"))?
            .user_agent(concat!("readyd/", env!("CARGO_PKG_VERSION")))
            .map_err(|err| format!("cannot set the gRPC user agent: {err}"))?;
        Ok(Self {
            endpoint,
            service: service.to_owned(),
        })
    }

    /// One connection and one Check. Dropping the run drops the channel,
    /// which closes its connection.
    pub async fn run(&self) -> Result<(), String> {
        // A dependency shutting down gracefully is reported as what it is
        // (refused), not as the INTERNAL of a call racing its GOAWAY.
        let channel = crate::client::channel::connect(self.endpoint.clone())
            .await
            .map_err(|err| describe_error(&err))?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: self.service.clone(),
            })
            .await
            .map_err(|status| describe_status(&status))?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("grpc.health.v1 status {}", other.as_str_name())),
        }
    }
}

/// A failed Check, e.g. `grpc.health.v1 Check: NOT_FOUND: unknown service`.
pub(super) fn describe_status(status: &tonic::Status) -> String {
    let code = code_name(status.code());
    let message = status.message();
    if message.is_empty() {
        format!("grpc.health.v1 Check: {code}")
    } else {
        format!("grpc.health.v1 Check: {code}: {}", quote(message))
    }
}

/// The canonical name of a gRPC status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
