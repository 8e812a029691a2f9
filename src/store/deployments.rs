//! The `deployment_history` table, and the `app_version` configuration rows
//! that recording a deployment or a rollback sets in the same transaction.
//!
//! Every writer here takes the change lock first (before reading anything),
//! so deployments and rollbacks are serialised against each other and
//! against configuration writers: the "current deployment" a writer reads
//! is still current when it commits, rows get ids in commit order, and each
//! row's `previous_version` is the version of the row before it. The
//! `app_version` row is written by plain UPDATE or INSERT, so its triggers
//! version, announce and audit it (with the deployer as actor) like any
//! other configuration change.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, begin_change};
use crate::deployments::{
    Deployment, DeploymentKind, DeploymentStatus, RollbackRefused, ValidDeployment, ValidRollback,
    check_target, rollback_anchor,
};

/// Every column of `deployment_history`, in the order of [`Deployment`].
const COLUMNS: &str = "id, version, environment, status, kind, deployed_by, commit_sha, notes, \
                       previous_version, rollback_of, deployed_at, completed_at";

/// The configuration key a deployment sets.
pub const APP_VERSION_KEY: &str = "app_version";

/// Description of an environment's `app_version` row when a deployment
/// creates it.
const APP_VERSION_DESCRIPTION: &str =
    "Version currently deployed to this environment; set by RecordDeployment and RecordRollback";

/// One row as PostgreSQL returns it.
#[derive(Debug, sqlx::FromRow)]
struct DeploymentRecord {
    id: i64,
    version: String,
    environment: String,
    status: String,
    kind: String,
    deployed_by: String,
    commit_sha: Option<String>,
    notes: Option<String>,
    previous_version: Option<String>,
    rollback_of: Option<i64>,
    deployed_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl TryFrom<DeploymentRecord> for Deployment {
    type Error = StoreError;

    fn try_from(r: DeploymentRecord) -> Result<Self, StoreError> {
        // The table's CHECK constraints make these unreachable unless the
        // schema changes under us; say so rather than guess.
        let status = DeploymentStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Decode(format!("deployment {} has status {:?}", r.id, r.status))
        })?;
        let kind = DeploymentKind::parse(&r.kind).ok_or_else(|| {
            StoreError::Decode(format!("deployment {} has kind {:?}", r.id, r.kind))
        })?;
        Ok(Deployment {
            id: r.id,
            version: r.version,
            environment: r.environment,
            status,
            kind,
            deployed_by: r.deployed_by,
            commit_sha: r.commit_sha,
            notes: r.notes,
            previous_version: r.previous_version,
            rollback_of: r.rollback_of,
            deployed_at: r.deployed_at,
            completed_at: r.completed_at,
        })
    }
}

/// A recorded deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The new row.
    pub deployment: Deployment,
    /// The version of the `app_version` change, when the deployment became
    /// current (status success); the caller waits for it to reach the
    /// snapshot before answering.
    pub config_version: Option<i64>,
}

/// A recorded rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The new rollback row, now current.
    pub rollback: Deployment,
    /// The row that was current, now `rolled_back`.
    pub rolled_back: Deployment,
    /// The version of the `app_version` change.
    pub config_version: i64,
}

/// Which rows ListDeployments wants.
#[derive(Debug, Clone, Default)]
pub struct DeploymentQuery {
    /// Only this environment, when set.
    pub environment: Option<String>,
    /// Only this status, when set.
    pub status: Option<DeploymentStatus>,
    /// Only rows with a smaller id (the page token).
    pub before_id: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

impl Store {
    /// Records a deployment and, when it succeeded, sets its environment's
    /// `app_version`, in one transaction.
    pub async fn record_deployment(
        &self,
        deployment: &ValidDeployment,
    ) -> Result<Recorded, StoreError> {
        let environment = deployment.environment();
        // The change lock first, before any read: what is read under it
        // stays true until commit.
        let mut tx = begin_change(self.pool(), deployment.deployed_by()).await?;
        let previous_version = match current(&mut tx, environment).await? {
            Some(current) => Some(current.version),
            // No deployment recorded yet: what the environment runs is what
            // its configuration says.
            None => resolved_app_version(&mut tx, environment).await?,
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO deployment_history \
               (version, environment, status, kind, deployed_by, commit_sha, notes, \
                previous_version, completed_at) \
             VALUES ($1, $2, $3, 'deploy', $4, $5, $6, $7, CASE WHEN $8 THEN now() END) \
             RETURNING {COLUMNS}"
        ));
        let row: DeploymentRecord = sqlx::query_as(sql)
            .bind(deployment.version())
            .bind(environment)
            .bind(deployment.status().as_str())
            .bind(deployment.deployed_by())
            .bind(deployment.commit_sha())
            .bind(deployment.notes())
            .bind(previous_version)
            .bind(deployment.status().is_finished())
            .fetch_one(&mut *tx)
            .await?;
        let deployment_row = Deployment::try_from(row)?;
        let config_version = if deployment.becomes_current() {
            Some(set_app_version(&mut tx, environment, deployment.version()).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Recorded {
            deployment: deployment_row,
            config_version,
        })
    }

    /// Rolls an environment back in one transaction: marks its current
    /// deployment `rolled_back`, records a rollback row and restores
    /// `app_version`. [`StoreError::FailedPrecondition`] (and nothing
    /// changed) when there is nothing to roll back to.
    pub async fn record_rollback(
        &self,
        rollback: &ValidRollback,
    ) -> Result<RolledBack, StoreError> {
        let environment = rollback.environment();
        let mut tx = begin_change(self.pool(), rollback.actor()).await?;
        let refused = |why: RollbackRefused| StoreError::FailedPrecondition(why.to_string());
        let Some(current) = current(&mut tx, environment).await? else {
            return Err(refused(RollbackRefused::NoCurrent(environment.to_owned())));
        };
        let target = match rollback.target_deployment_id() {
            Some(id) => {
                let target = by_id(&mut tx, id)
                    .await?
                    .ok_or_else(|| refused(RollbackRefused::UnknownTarget(id)))?;
                check_target(&current, &target).map_err(refused)?;
                target
            }
            None => default_target(&mut tx, &current).await?.ok_or_else(|| {
                refused(RollbackRefused::NoEarlier {
                    environment: environment.to_owned(),
                    before: rollback_anchor(&current),
                    version: current.version.clone(),
                })
            })?,
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE deployment_history SET status = 'rolled_back' WHERE id = $1 RETURNING {COLUMNS}"
        ));
        let rolled_back: DeploymentRecord = sqlx::query_as(sql)
            .bind(current.id)
            .fetch_one(&mut *tx)
            .await?;
        // The rollback row runs the target's code: it carries the target's
        // version and commit.
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO deployment_history \
               (version, environment, status, kind, deployed_by, commit_sha, notes, \
                previous_version, rollback_of, completed_at) \
             VALUES ($1, $2, 'success', 'rollback', $3, $4, $5, $6, $7, now()) \
             RETURNING {COLUMNS}"
        ));
        let row: DeploymentRecord = sqlx::query_as(sql)
            .bind(&target.version)
            .bind(environment)
            .bind(rollback.actor())
            .bind(&target.commit_sha)
            .bind(rollback.reason())
            .bind(&current.version)
            .bind(target.id)
            .fetch_one(&mut *tx)
            .await?;
        let rollback_row = Deployment::try_from(row)?;
        let config_version = set_app_version(&mut tx, environment, &target.version).await?;
        tx.commit().await?;
        Ok(RolledBack {
            rollback: rollback_row,
            rolled_back: Deployment::try_from(rolled_back)?,
            config_version,
        })
    }

    /// Rows newest first (by id).
    pub async fn deployments(
        &self,
        query: &DeploymentQuery,
    ) -> Result<Vec<Deployment>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deployment_history \
             WHERE ($1::text IS NULL OR environment = $1) \
               AND ($2::text IS NULL OR status = $2) \
               AND ($3::bigint IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        ));
        let rows: Vec<DeploymentRecord> = sqlx::query_as(sql)
            .bind(&query.environment)
            .bind(query.status.map(DeploymentStatus::as_str))
            .bind(query.before_id)
            .bind(query.limit)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(Deployment::try_from).collect()
    }

    /// The current deployment of `environment`: its newest successful
    /// deployment or rollback.
    pub async fn current_deployment(
        &self,
        environment: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        let mut connection = self.pool().acquire().await?;
        current(&mut connection, environment).await
    }
}

impl Store {
    /// The current deployment of every environment that has one (its newest
    /// successful row), by environment; at most `limit` environments.
    pub async fn current_deployments(&self, limit: i64) -> Result<Vec<Deployment>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (environment) {COLUMNS} FROM deployment_history \
             WHERE status = 'success' ORDER BY environment, id DESC LIMIT $1"
        ));
        let rows: Vec<DeploymentRecord> = sqlx::query_as(sql)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.into_iter().map(Deployment::try_from).collect()
    }
}

/// The newest successful row of `environment`.
async fn current(
    connection: &mut sqlx::PgConnection,
    environment: &str,
) -> Result<Option<Deployment>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployment_history \
         WHERE environment = $1 AND status = 'success' ORDER BY id DESC LIMIT 1"
    ));
    let row: Option<DeploymentRecord> = sqlx::query_as(sql)
        .bind(environment)
        .fetch_optional(connection)
        .await?;
    row.map(Deployment::try_from).transpose()
}

async fn by_id(tx: &mut sqlx::PgConnection, id: i64) -> Result<Option<Deployment>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployment_history WHERE id = $1"
    ));
    let row: Option<DeploymentRecord> = sqlx::query_as(sql).bind(id).fetch_optional(tx).await?;
    row.map(Deployment::try_from).transpose()
}

/// [`crate::deployments::default_target`] as one query.
async fn default_target(
    tx: &mut sqlx::PgConnection,
    current: &Deployment,
) -> Result<Option<Deployment>, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM deployment_history \
         WHERE environment = $1 AND status = 'success' AND id < $2 AND version <> $3 \
         ORDER BY id DESC LIMIT 1"
    ));
    let row: Option<DeploymentRecord> = sqlx::query_as(sql)
        .bind(&current.environment)
        .bind(rollback_anchor(current))
        .bind(&current.version)
        .fetch_optional(tx)
        .await?;
    row.map(Deployment::try_from).transpose()
}

/// `app_version` as `environment` resolves it (its own row, else `*`'s), as
/// text: a JSON string's content, any other JSON value's text.
async fn resolved_app_version(
    tx: &mut sqlx::PgConnection,
    environment: &str,
) -> Result<Option<String>, StoreError> {
    let version: Option<Option<String>> = sqlx::query_scalar(
        "SELECT value #>> '{}' FROM app_config \
         WHERE key = $1 AND environment IN ($2, '*') \
         ORDER BY environment = '*' LIMIT 1",
    )
    .bind(APP_VERSION_KEY)
    .bind(environment)
    .fetch_optional(tx)
    .await?;
    Ok(version.flatten())
}

/// Sets `(app_version, environment)` inside `tx` (which holds the change
/// lock); returns the change's version. Always writes, even when the value
/// is the same, so every deployment leaves exactly one audit row.
async fn set_app_version(
    tx: &mut sqlx::PgConnection,
    environment: &str,
    version: &str,
) -> Result<i64, StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT version FROM app_config WHERE key = $1 AND environment = $2")
            .bind(APP_VERSION_KEY)
            .bind(environment)
            .fetch_optional(&mut *tx)
            .await?;
    // Not INSERT ... ON CONFLICT: its BEFORE INSERT trigger would take a
    // version even when the row is then updated, leaving a gap.
    let change_version: i64 = if exists.is_some() {
        sqlx::query_scalar(
            "UPDATE app_config SET value = to_jsonb($3::text) \
             WHERE key = $1 AND environment = $2 RETURNING version",
        )
        .bind(APP_VERSION_KEY)
        .bind(environment)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?
    } else {
        sqlx::query_scalar(
            "INSERT INTO app_config (key, environment, value, description) \
             VALUES ($1, $2, to_jsonb($3::text), $4) RETURNING version",
        )
        .bind(APP_VERSION_KEY)
        .bind(environment)
        .bind(version)
        .bind(APP_VERSION_DESCRIPTION)
        .fetch_one(&mut *tx)
        .await?
    };
    Ok(change_version)
}
