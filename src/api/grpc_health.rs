//! grpc.health.v1, spec-exact: Check, List and Watch over [`Probes`].
//!
//! Our own implementation rather than tonic-health, which has no List,
//! fails Watch on an unknown name instead of streaming SERVICE_UNKNOWN, and
//! may resend an unchanged status.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::pb::grpc_health_v1::health_check_response::ServingStatus as PbStatus;
use crate::api::pb::grpc_health_v1::health_server::Health;
use crate::api::pb::grpc_health_v1::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use crate::api::streams::StreamGate;
use crate::health::{Probes, ServingStatus};

/// List answers RESOURCE_EXHAUSTED past this many names (gRFC A90).
pub const LIST_LIMIT: usize = 100;

impl From<ServingStatus> for PbStatus {
    fn from(status: ServingStatus) -> Self {
        match status {
            ServingStatus::Serving => PbStatus::Serving,
            ServingStatus::NotServing => PbStatus::NotServing,
        }
    }
}

fn response(status: PbStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

/// The grpc.health.v1.Health service.
#[derive(Debug, Clone)]
pub struct GrpcHealth {
    /// Where the statuses live.
    probes: Arc<Probes>,
    /// Admits Watch streams; ends them at shutdown, after the probes have
    /// drained, so the server can finish.
    streams: Arc<StreamGate>,
}

impl GrpcHealth {
    /// A service over `probes`, whose streams `streams` admits and ends.
    pub fn new(probes: Arc<Probes>, streams: Arc<StreamGate>) -> Self {
        Self { probes, streams }
    }
}

#[tonic::async_trait]
impl Health for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = &request.get_ref().service;
        let Some(status) = self.probes.get(name) else {
            return Err(Status::not_found(format!(
                "unknown health service name {:?}",
                crate::echo::truncate(name)
            )));
        };
        Ok(Response::new(response(status.into())))
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let all = self.probes.all();
        if all.len() > LIST_LIMIT {
            return Err(Status::resource_exhausted(format!(
                "{} health service names exceed the List limit of {LIST_LIMIT}; use Check per name",
                all.len()
            )));
        }
        let statuses = all
            .iter()
            .map(|(name, status)| (name.clone(), response((*status).into())))
            .collect();
        Ok(Response::new(HealthListResponse { statuses }))
    }

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<HealthCheckResponse>>, Status> {
        let name = request.into_inner().service;
        let ticket = self.streams.admit("probes")?;
        let mut statuses = self.probes.subscribe();
        // A small buffer is enough: only changes are sent, and a watcher that
        // does not read blocks only its own task.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last_sent = None;
            loop {
                let current = statuses
                    .borrow_and_update()
                    .get(&name)
                    .map_or(PbStatus::ServiceUnknown, |status| (*status).into());
                if last_sent != Some(current) {
                    if tx.send(Ok(response(current))).await.is_err() {
                        return; // the watcher went away
                    }
                    last_sent = Some(current);
                }
                tokio::select! {
                    // Changes first: the final NOT_SERVING of a drain is sent
                    // before the stream ends.
                    biased;
                    changed = statuses.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                    () = ticket.ended() => {
                        if statuses.has_changed().unwrap_or(false) {
                            continue;
                        }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
