//! readyd.v1.HealthService: the health report, its history, and a direct
//! database check.

use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::pb::readyd::v1::health_service_server::HealthService;
use crate::api::pb::readyd::v1::{CheckDatabaseRequest, CheckDatabaseResponse, HealthStatus};
use crate::api::to_timestamp;
use crate::store::Store;

/// The HealthService handlers.
#[derive(Debug, Clone)]
pub struct HealthApi {
    /// readyd's database.
    store: Store,
    /// This instance's name, recorded with history rows.
    instance: String,
    /// This instance's environment, to pick the recorded app version.
    environment: String,
}

impl HealthApi {
    /// Handlers over `store`, for this instance.
    pub fn new(store: Store, instance: String, environment: String) -> Self {
        Self {
            store,
            instance,
            environment,
        }
    }
}

fn health_status(raw: &str) -> HealthStatus {
    match raw {
        "healthy" => HealthStatus::Healthy,
        "degraded" => HealthStatus::Degraded,
        "unhealthy" => HealthStatus::Unhealthy,
        _ => HealthStatus::Unspecified,
    }
}

#[tonic::async_trait]
impl HealthService for HealthApi {
    async fn check_database(
        &self,
        _request: Request<CheckDatabaseRequest>,
    ) -> Result<Response<CheckDatabaseResponse>, Status> {
        let started = Instant::now();
        let health = self
            .store
            .check_system_health(&self.instance, &serde_json::json!({}), &self.environment)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(CheckDatabaseResponse {
            status: health_status(&health.status).into(),
            database_size_bytes: health.database_size_bytes,
            active_connections: health.active_connections,
            max_connections: health.max_connections,
            connection_utilization: health.connection_utilization,
            error_count: health.error_count,
            response_time_ms: health.response_time_ms,
            checked_at: Some(to_timestamp(health.checked_at)),
            record_id: health.id,
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
        }))
    }
}
