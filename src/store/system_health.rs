//! The `system_health` table and the `check_system_health()` function.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Store, StoreError};

/// What `check_system_health()` returns (and records as one row).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemHealth {
    /// Id of the recorded `system_health` row.
    pub id: i64,
    /// `healthy`, `degraded` or `unhealthy`, from connection utilisation.
    pub status: String,
    /// Size of the database in bytes.
    pub database_size_bytes: i64,
    /// Client connections to the server.
    pub active_connections: i32,
    /// The server's `max_connections`.
    pub max_connections: i32,
    /// active / max, 0..1.
    pub connection_utilization: f64,
    /// Deadlocks plus conflicts of this database.
    pub error_count: i64,
    /// Time the function took, in milliseconds.
    pub response_time_ms: f64,
    /// Instance that asked.
    pub instance: Option<String>,
    /// app_version at the time.
    pub version: Option<String>,
    /// Check results recorded with the row.
    pub checks: serde_json::Value,
    /// When the row was recorded.
    pub checked_at: DateTime<Utc>,
}

impl Store {
    /// Runs `check_system_health()`, which records one `system_health` row.
    pub async fn check_system_health(
        &self,
        instance: &str,
        checks: &serde_json::Value,
        environment: &str,
    ) -> Result<SystemHealth, StoreError> {
        let raw: serde_json::Value = sqlx::query_scalar("SELECT check_system_health($1, $2, $3)")
            .bind(instance)
            .bind(checks)
            .bind(environment)
            .fetch_one(self.pool())
            .await?;
        serde_json::from_value(raw)
            .map_err(|err| StoreError::Decode(format!("check_system_health(): {err}")))
    }
}
