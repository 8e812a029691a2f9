//! One timeline of what changed: deployments and rollbacks, flag, segment
//! and config changes with their actors, and health transitions (a
//! recorded row whose overall status differs from the instance's row
//! before it), newest first. Read from the tables as they are: nothing is
//! recorded twice.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Most entries one read returns.
pub const MAX_ENTRIES: i64 = 500;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct TimelineEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// `deploy`, `rollback`, `flag`, `segment`, `config` or `health`.
    pub kind: String,
    /// The environment it concerns; `None` for what concerns all of them
    /// (flags, segments, health).
    pub environment: Option<String>,
    /// Who: the actor, the deployer, or for health the instance.
    pub actor: String,
    /// What, for people: `deployed 1.4.2 (success)`, `update checkout`,
    /// `healthy → unhealthy`. Never a value (sensitive ones included).
    pub what: String,
}

/// Entries from `since` to `until`, of `environment` (and what concerns
/// every environment; `None`: all), newest first, at most `limit`.
pub async fn timeline(
    store: &Store,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    environment: Option<&str>,
    limit: i64,
) -> Result<Vec<TimelineEntry>, StoreError> {
    let rows = sqlx::query_as::<_, TimelineEntry>(
        "WITH health AS ( \
             SELECT recorded_at, coalesce(instance, '') AS instance, \
                    coalesce(checks->>'overall', status) AS overall, \
                    lag(coalesce(checks->>'overall', status)) \
                        OVER (PARTITION BY instance ORDER BY recorded_at, id) AS before \
               FROM system_health \
              WHERE recorded_at >= $1 - interval '1 day' AND recorded_at < $2 \
         ) \
         SELECT at, kind, environment, actor, what FROM ( \
             SELECT deployed_at AS at, kind::text AS kind, environment, deployed_by AS actor, \
                    CASE kind WHEN 'rollback' THEN 'rolled back to ' ELSE 'deployed ' END \
                        || version || ' (' || status || ')' AS what \
               FROM deployment_history \
              WHERE deployed_at >= $1 AND deployed_at < $2 AND ($3::text IS NULL OR environment = $3) \
             UNION ALL \
             SELECT changed_at, 'flag', NULL, actor, action || ' ' || key \
               FROM flag_audit WHERE changed_at >= $1 AND changed_at < $2 \
             UNION ALL \
             SELECT changed_at, 'segment', NULL, actor, action || ' ' || key \
               FROM segment_audit WHERE changed_at >= $1 AND changed_at < $2 \
             UNION ALL \
             SELECT changed_at, 'config', environment, actor, action || ' ' || key \
               FROM config_audit \
              WHERE changed_at >= $1 AND changed_at < $2 \
                AND ($3::text IS NULL OR environment IN ($3, '*')) \
             UNION ALL \
             SELECT recorded_at, 'health', NULL, instance, before || ' → ' || overall \
               FROM health \
              WHERE recorded_at >= $1 AND before IS NOT NULL AND before <> overall \
         ) AS entries \
         ORDER BY at DESC, kind \
         LIMIT $4",
    )
    .bind(since)
    .bind(until)
    .bind(environment)
    .bind(limit.clamp(1, MAX_ENTRIES))
    .fetch_all(store.pool())
    .await?;
    Ok(rows)
}
