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

/// One recorded `system_health` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct HealthRow {
    /// Row id.
    pub id: i64,
    /// When recorded.
    pub recorded_at: DateTime<Utc>,
    /// Instance that recorded it.
    pub instance: Option<String>,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Database size in bytes.
    pub database_size_bytes: i64,
    /// Client connections to the server.
    pub active_connections: i32,
    /// The server's `max_connections`.
    pub max_connections: i32,
    /// Deadlocks plus conflicts.
    pub error_count: i64,
    /// Time the function took, in milliseconds.
    pub response_time_ms: f64,
    /// Check results recorded with the row.
    pub checks: serde_json::Value,
    /// app_version at the time.
    pub version: Option<String>,
}

impl Store {
    /// Rows recorded in `[since, until)`, newest first, at most `limit`.
    pub async fn health_history(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<HealthRow>, StoreError> {
        let rows = sqlx::query_as::<_, HealthRow>(
            "SELECT id, recorded_at, instance, status, database_size_bytes, active_connections, \
                    max_connections, error_count, response_time_ms, checks, version \
               FROM system_health \
              WHERE ($1::timestamptz IS NULL OR recorded_at >= $1) \
                AND ($2::timestamptz IS NULL OR recorded_at < $2) \
              ORDER BY recorded_at DESC, id DESC \
              LIMIT $3",
        )
        .bind(since)
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Deletes rows recorded more than `retention` ago; returns how many.
    pub async fn prune_health_history(
        &self,
        retention: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let seconds = retention.as_secs_f64();
        let result = sqlx::query(
            "DELETE FROM system_health WHERE recorded_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }
}
