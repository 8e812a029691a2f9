//! The `app_config` and `config_audit` tables. The audit rows themselves are
//! written by the table's triggers, in the same transaction as the change,
//! for every writer (readyd or plain SQL).

use chrono::{DateTime, Utc};

use super::audit::AuditQuery;
use super::flags::check_expected;
use super::{Store, StoreError, begin_change, deletion_version};
use crate::config::{ConfigRow, ValidConfigDraft};

/// Every column of `app_config`, in the order of [`ConfigRow`].
const COLUMNS: &str =
    "key, environment, value, description, is_sensitive, version, updated_at, updated_by";

/// One row as PostgreSQL returns it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ConfigRowRecord {
    key: String,
    environment: String,
    value: serde_json::Value,
    description: String,
    is_sensitive: bool,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

impl From<ConfigRowRecord> for ConfigRow {
    fn from(r: ConfigRowRecord) -> Self {
        ConfigRow {
            key: r.key,
            environment: r.environment,
            value: r.value,
            description: r.description,
            is_sensitive: r.is_sensitive,
            version: r.version,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
        }
    }
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRow {
    /// Row id; grows with time.
    pub id: i64,
    /// The key.
    pub key: String,
    /// The environment of the changed row.
    pub environment: String,
    /// insert, update or delete.
    pub action: String,
    /// Value before; a fingerprint when sensitive.
    pub old_value: Option<serde_json::Value>,
    /// Value after; a fingerprint when sensitive.
    pub new_value: Option<serde_json::Value>,
    /// Who made the change.
    pub actor: String,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Version of the change.
    pub version: i64,
}

impl Store {
    /// Every configuration row.
    pub(crate) async fn config_rows(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
    ) -> Result<Vec<ConfigRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM app_config"));
        let rows: Vec<ConfigRowRecord> = sqlx::query_as(sql).fetch_all(executor).await?;
        Ok(rows.into_iter().map(ConfigRow::from).collect())
    }

    /// One row as stored now.
    pub async fn config_row(
        &self,
        key: &str,
        environment: &str,
    ) -> Result<Option<ConfigRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app_config WHERE key = $1 AND environment = $2"
        ));
        let row: Option<ConfigRowRecord> = sqlx::query_as(sql)
            .bind(key)
            .bind(environment)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(ConfigRow::from))
    }

    /// One row, for `actor` to see a sensitive value: the reveal is
    /// recorded in `config_audit` (action `reveal`, the version seen, no
    /// value) in the same transaction, before the row is read. `None` when
    /// there is no such row (nothing recorded).
    pub async fn reveal_config(
        &self,
        key: &str,
        environment: &str,
        actor: &str,
    ) -> Result<Option<ConfigRow>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO config_audit (key, environment, action, actor, version) \
             SELECT key, environment, 'reveal', $3, version FROM app_config \
              WHERE key = $1 AND environment = $2",
        )
        .bind(key)
        .bind(environment)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            return Ok(None);
        }
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM app_config WHERE key = $1 AND environment = $2"
        ));
        let row: Option<ConfigRowRecord> = sqlx::query_as(sql)
            .bind(key)
            .bind(environment)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.map(ConfigRow::from))
    }

    /// Creates or replaces one row. With `expected_version`, writes only if
    /// the row's current version equals it (0: must not exist yet).
    pub async fn set_config(
        &self,
        draft: &ValidConfigDraft,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<ConfigRow, StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        let row = write_config(
            &mut tx,
            &draft.key,
            &draft.environment,
            &draft.value,
            Details {
                description: draft.description.as_deref(),
                is_sensitive: draft.is_sensitive,
                make_public: draft.make_public,
            },
            expected_version,
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes one row; returns the version of the deletion.
    pub async fn delete_config(
        &self,
        key: &str,
        environment: &str,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM app_config WHERE key = $1 AND environment = $2",
        )
        .bind(key)
        .bind(environment)
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            return Err(StoreError::NotFound(format!(
                "config {key:?} has no row for environment {environment:?}"
            )));
        }
        check_expected(key, current, expected_version)?;
        sqlx::query("DELETE FROM app_config WHERE key = $1 AND environment = $2")
            .bind(key)
            .bind(environment)
            .execute(&mut *tx)
            .await?;
        let version = deletion_version(&mut tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Sets `maintenance_mode` and `maintenance_message` of `environment`
    /// in one transaction; returns both rows.
    pub async fn set_maintenance(
        &self,
        environment: &str,
        enabled: bool,
        message: &str,
        actor: &str,
    ) -> Result<(ConfigRow, ConfigRow), StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        let mode = write_config(
            &mut tx,
            "maintenance_mode",
            environment,
            &serde_json::Value::Bool(enabled),
            Details::KEEP,
            None,
        )
        .await?;
        let text = write_config(
            &mut tx,
            "maintenance_message",
            environment,
            &serde_json::Value::String(message.to_owned()),
            Details::KEEP,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok((mode, text))
    }

    /// Audit rows, newest first.
    pub async fn audit_rows(&self, query: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows_of(
            "config_audit",
            "id, key, environment, action, old_value, new_value, actor, changed_at, version",
            query,
        )
        .await
    }
}

/// What a write says about a row besides its value.
#[derive(Debug, Clone, Copy)]
struct Details<'a> {
    /// The new description; `None` keeps the row's.
    description: Option<&'a str>,
    /// The new sensitivity; `None` keeps the row's.
    is_sensitive: Option<bool>,
    /// The writer confirmed that a sensitive row may become public.
    make_public: bool,
}

impl Details<'_> {
    /// Keep the description and sensitivity as they are.
    const KEEP: Details<'static> = Details {
        description: None,
        is_sensitive: None,
        make_public: false,
    };
}

/// Inserts or updates one row inside `tx` (which holds the change lock, so
/// the row read here is the row written over).
async fn write_config(
    tx: &mut sqlx::PgConnection,
    key: &str,
    environment: &str,
    value: &serde_json::Value,
    details: Details<'_>,
    expected_version: Option<i64>,
) -> Result<ConfigRow, StoreError> {
    let current: Option<(i64, bool)> = sqlx::query_as(
        "SELECT version, is_sensitive FROM app_config WHERE key = $1 AND environment = $2",
    )
    .bind(key)
    .bind(environment)
    .fetch_optional(&mut *tx)
    .await?;
    check_expected(key, current.map(|(version, _)| version), expected_version)?;
    let was_sensitive = current.is_some_and(|(_, sensitive)| sensitive);
    if was_sensitive && details.is_sensitive == Some(false) && !details.make_public {
        // Turning a secret public sends its value to every reader: never
        // by omission (a client that sent is_sensitive = false by default).
        return Err(StoreError::FailedPrecondition(format!(
            "config {key:?} in environment {environment:?} is sensitive: set make_public \
             (readyd config set --public) to make it public, or leave is_sensitive unset to keep it secret"
        )));
    }
    let (description, is_sensitive) = (details.description, details.is_sensitive);
    // Not INSERT ... ON CONFLICT: its BEFORE INSERT trigger would take a
    // version even when the row is then updated, leaving a gap.
    let sql = if current.is_some() {
        format!(
            "UPDATE app_config SET value = $3, description = coalesce($4, description), \
             is_sensitive = coalesce($5, is_sensitive) \
             WHERE key = $1 AND environment = $2 RETURNING {COLUMNS}"
        )
    } else {
        format!(
            "INSERT INTO app_config (key, environment, value, description, is_sensitive) \
             VALUES ($1, $2, $3, coalesce($4, ''), coalesce($5, false)) RETURNING {COLUMNS}"
        )
    };
    let row: ConfigRowRecord = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(environment)
        .bind(value)
        .bind(description)
        .bind(is_sensitive)
        .fetch_one(&mut *tx)
        .await?;
    Ok(row.into())
}
