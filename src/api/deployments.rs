//! readyd.v1.DeploymentService: deployment history. Recording a deployment
//! or a rollback goes to the store (one transaction that also sets the
//! environment's `app_version`) and answers once this instance's snapshot
//! holds the new `app_version` (read-your-writes). History reads go to the
//! database, not the snapshot: the snapshot holds configuration and flags
//! only, and history is not on any hot path.

use crate::api::{read_your_write, written};
use crate::paging::next_page_token;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::Database;
use crate::api::convert::to_timestamp;
use crate::api::error::ApiError;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::deployment_service_server::DeploymentService;
use crate::deployments::{
    Deployment, DeploymentDraft, DeploymentKind, DeploymentStatus, RollbackDraft,
    check_environment, environment_filter, page_size, page_token,
};
use crate::state::State;
use crate::store::deployments::DeploymentQuery;

/// The DeploymentService handlers.
#[derive(Debug, Clone)]
pub struct DeploymentApi {
    /// Waited on for read-your-writes of `app_version`.
    state: Arc<State>,
    /// Where history is written and read.
    store: Database,
}

impl DeploymentApi {
    /// Handlers over `state` and `store`.
    pub fn new(state: Arc<State>, store: Database) -> Self {
        Self { state, store }
    }
}

/// A status named by a request: `None` when unspecified; a number the proto
/// does not define is refused.
fn status_of(field: &'static str, raw: i32) -> Result<Option<DeploymentStatus>, ApiError> {
    match pb::DeploymentStatus::try_from(raw) {
        Ok(pb::DeploymentStatus::Unspecified) => Ok(None),
        Ok(pb::DeploymentStatus::Pending) => Ok(Some(DeploymentStatus::Pending)),
        Ok(pb::DeploymentStatus::InProgress) => Ok(Some(DeploymentStatus::InProgress)),
        Ok(pb::DeploymentStatus::Success) => Ok(Some(DeploymentStatus::Success)),
        Ok(pb::DeploymentStatus::Failed) => Ok(Some(DeploymentStatus::Failed)),
        Ok(pb::DeploymentStatus::RolledBack) => Ok(Some(DeploymentStatus::RolledBack)),
        Err(_) => Err(ApiError::InvalidArgument {
            field,
            message: format!("{raw} is not a deployment status"),
        }),
    }
}

impl From<DeploymentStatus> for pb::DeploymentStatus {
    fn from(status: DeploymentStatus) -> Self {
        match status {
            DeploymentStatus::Pending => pb::DeploymentStatus::Pending,
            DeploymentStatus::InProgress => pb::DeploymentStatus::InProgress,
            DeploymentStatus::Success => pb::DeploymentStatus::Success,
            DeploymentStatus::Failed => pb::DeploymentStatus::Failed,
            DeploymentStatus::RolledBack => pb::DeploymentStatus::RolledBack,
        }
    }
}

impl From<DeploymentKind> for pb::DeploymentKind {
    fn from(kind: DeploymentKind) -> Self {
        match kind {
            DeploymentKind::Deploy => pb::DeploymentKind::Deploy,
            DeploymentKind::Rollback => pb::DeploymentKind::Rollback,
        }
    }
}

impl From<Deployment> for pb::Deployment {
    /// Absent text (commit, notes, previous version) becomes the empty
    /// string, as proto3 has it.
    fn from(row: Deployment) -> Self {
        pb::Deployment {
            id: row.id,
            version: row.version,
            environment: row.environment,
            status: pb::DeploymentStatus::from(row.status).into(),
            kind: pb::DeploymentKind::from(row.kind).into(),
            deployed_by: row.deployed_by,
            commit_sha: row.commit_sha.unwrap_or_default(),
            notes: row.notes.unwrap_or_default(),
            previous_version: row.previous_version.unwrap_or_default(),
            rollback_of: row.rollback_of,
            deployed_at: Some(to_timestamp(row.deployed_at)),
            completed_at: row.completed_at.map(to_timestamp),
        }
    }
}

#[tonic::async_trait]
impl DeploymentService for DeploymentApi {
    async fn record_deployment(
        &self,
        request: Request<pb::RecordDeploymentRequest>,
    ) -> Result<Response<pb::RecordDeploymentResponse>, Status> {
        let request = request.into_inner();
        let status = status_of("status", request.status)?;
        let deployment = DeploymentDraft {
            version: request.version,
            environment: request.environment,
            deployed_by: request.deployed_by,
            commit_sha: request.commit_sha,
            notes: request.notes,
            status,
        }
        .validate()
        .map_err(ApiError::from)?;
        let recorded = self
            .store
            .get()?
            .record_deployment(&deployment)
            .await
            .map_err(ApiError::from)?;
        let message = pb::RecordDeploymentResponse {
            deployment: Some(recorded.deployment.into()),
        };
        match recorded.config_version {
            Some(version) => {
                read_your_write(&self.state, version).await;
                Ok(written(version, message))
            }
            None => Ok(Response::new(message)),
        }
    }

    async fn record_rollback(
        &self,
        request: Request<pb::RecordRollbackRequest>,
    ) -> Result<Response<pb::RecordRollbackResponse>, Status> {
        let request = request.into_inner();
        let rollback = RollbackDraft {
            environment: request.environment,
            target_deployment_id: request.target_deployment_id,
            reason: request.reason,
            actor: request.actor,
        }
        .validate()
        .map_err(ApiError::from)?;
        let done = self
            .store
            .get()?
            .record_rollback(&rollback)
            .await
            .map_err(ApiError::from)?;
        read_your_write(&self.state, done.config_version).await;
        Ok(written(
            done.config_version,
            pb::RecordRollbackResponse {
                rollback: Some(done.rollback.into()),
                rolled_back: Some(done.rolled_back.into()),
            },
        ))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let request = request.into_inner();
        let environment = environment_filter(&request.environment)
            .map_err(ApiError::from)?
            .map(str::to_owned);
        let status = status_of("status", request.status)?;
        let page_size = page_size(request.page_size).map_err(ApiError::from)?;
        let before_id = page_token(&request.page_token).map_err(ApiError::from)?;
        let mut rows = self
            .store
            .get()?
            .deployments(&DeploymentQuery {
                environment,
                status,
                before_id,
                limit: i64::from(page_size) + 1,
            })
            .await
            .map_err(ApiError::from)?;
        let next_page_token = next_page_token(&mut rows, page_size, |row| row.id);
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn get_current_deployment(
        &self,
        request: Request<pb::GetCurrentDeploymentRequest>,
    ) -> Result<Response<pb::GetCurrentDeploymentResponse>, Status> {
        let environment = &request.get_ref().environment;
        check_environment("environment", environment).map_err(ApiError::from)?;
        let Some(current) = self
            .store
            .get()?
            .current_deployment(environment)
            .await
            .map_err(ApiError::from)?
        else {
            return Err(ApiError::NotFound(format!(
                "environment {environment:?} has no successful deployment"
            ))
            .into());
        };
        Ok(Response::new(pb::GetCurrentDeploymentResponse {
            deployment: Some(current.into()),
        }))
    }
}
