//! The `flag_segments` table: named constraint sets that flag rules name.
//! A segment is written and deleted here; a deletion is refused while a
//! flag's rule names the segment (the error names the flags).

use chrono::{DateTime, Utc};

use super::audit::{ObjectAuditRow, Trail};
use super::flags::check_expected;
use super::{Store, StoreError, begin_change, check_deletable, delete_row};
use crate::flags::segment::{MAX_SEGMENTS, Segment, check_segment};
use crate::flags::{Constraint, ValidationError, ValidationErrors};

/// Every column, in the order of [`SegmentRow`].
const COLUMNS: &str = "key, description, constraints, version, updated_at, updated_by";

/// One row as PostgreSQL returns it (or as the change log holds it).
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct SegmentRow {
    key: String,
    description: String,
    constraints: serde_json::Value,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
}

impl SegmentRow {
    /// The segment, or why the row cannot be one (bad data written by SQL).
    pub(crate) fn into_segment(self) -> Result<Segment, String> {
        let constraints: Vec<Constraint> = serde_json::from_value(self.constraints)
            .map_err(|err| format!("constraints do not decode: {err}"))?;
        Ok(Segment {
            key: self.key,
            description: self.description,
            constraints,
            version: self.version,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
        })
    }
}

/// Rows that decode into segments; the others are logged and left out.
pub(crate) fn decode_segments(rows: Vec<SegmentRow>) -> Vec<Segment> {
    rows.into_iter()
        .filter_map(|row| {
            let key = row.key.clone();
            match row.into_segment() {
                Ok(segment) => Some(segment),
                Err(problem) => {
                    tracing::warn!(segment = %key, %problem, "segment row is invalid; it is left out");
                    None
                }
            }
        })
        .collect()
}

/// The keys of the flags whose rules name segment `key`.
const FLAGS_USING: &str = "\
SELECT f.key FROM feature_flags f
 WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(f.targeting -> 'rules', '[]')) r,
                             jsonb_array_elements_text(coalesce(r -> 'segments', '[]')) s
                WHERE s = $1)
 ORDER BY f.key";

impl Store {
    /// Every segment.
    pub(crate) async fn segment_rows(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
    ) -> Result<Vec<SegmentRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM flag_segments"));
        Ok(sqlx::query_as(sql).fetch_all(executor).await?)
    }

    /// Creates or replaces a segment in one transaction; with
    /// `expected_version`, only if the stored version equals it (0: must
    /// not exist yet). The bool: whether it is new.
    pub async fn upsert_segment(
        &self,
        draft: &SegmentDraft,
        actor: &str,
    ) -> Result<(Segment, bool), StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        let written = write_segment(&mut tx, draft).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Deletes a segment; refused while a flag's rule names it.
    pub async fn delete_segment(
        &self,
        key: &str,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        check_deletable(&mut tx, "flag_segments", "segment", key, expected_version).await?;
        let users: Vec<String> = sqlx::query_scalar(FLAGS_USING)
            .bind(key)
            .fetch_all(&mut *tx)
            .await?;
        if !users.is_empty() {
            return Err(StoreError::FailedPrecondition(format!(
                "segment {key:?} is used by flag{} {}; remove it from their rules first",
                if users.len() == 1 { "" } else { "s" },
                users.join(", ")
            )));
        }
        let version = delete_row(&mut tx, "flag_segments", key).await?;
        tx.commit().await?;
        Ok(version)
    }
}

/// One recorded segment change.
pub type SegmentAuditRow = ObjectAuditRow<Segment>;

/// The segments' audit trail.
pub const SEGMENT_TRAIL: Trail<Segment> = Trail {
    table: "segment_audit",
    old: "old_segment",
    new: "new_segment",
    decode: audited_segment,
};

/// A segment as the audit trail recorded it, when it is one.
fn audited_segment(row: serde_json::Value) -> Option<Segment> {
    serde_json::from_value::<SegmentRow>(row)
        .ok()
        .and_then(|row| row.into_segment().ok())
}

/// A segment to write, as a request says it.
#[derive(Debug, Clone)]
pub struct SegmentDraft {
    /// Its key.
    pub key: String,
    /// Free text.
    pub description: String,
    /// All must hold.
    pub constraints: Vec<Constraint>,
    /// Write only if the stored version equals it (0: must not exist).
    pub expected_version: Option<i64>,
}

/// Creates or replaces one segment inside `tx`, which holds the change lock.
pub(crate) async fn write_segment(
    tx: &mut sqlx::PgConnection,
    draft: &SegmentDraft,
) -> Result<(Segment, bool), StoreError> {
    check_segment(&draft.key, &draft.description, &draft.constraints)
        .map_err(|errors| StoreError::Invalid(validation_errors(errors)))?;
    let document = serde_json::to_value(&draft.constraints)
        .map_err(|err| StoreError::Decode(format!("constraints: {err}")))?;
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM flag_segments WHERE key = $1")
            .bind(&draft.key)
            .fetch_optional(&mut *tx)
            .await?;
    check_expected(&draft.key, current, draft.expected_version)?;
    let returning = format!("RETURNING {COLUMNS}");
    let sql = if current.is_some() {
        format!(
            "UPDATE flag_segments SET description = $2, constraints = $3 WHERE key = $1 {returning}"
        )
    } else {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM flag_segments")
            .fetch_one(&mut *tx)
            .await?;
        if count >= MAX_SEGMENTS as i64 {
            return Err(StoreError::FailedPrecondition(format!(
                "there are {count} segments, the most one database may hold; delete unused ones first"
            )));
        }
        format!(
            "INSERT INTO flag_segments (key, description, constraints) VALUES ($1, $2, $3) {returning}"
        )
    };
    let row: SegmentRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&draft.key)
        .bind(&draft.description)
        .bind(document)
        .fetch_one(&mut *tx)
        .await?;
    let segment = row.into_segment().map_err(StoreError::Decode)?;
    Ok((segment, current.is_none()))
}

/// Which of `keys` name no segment (read inside the writer's transaction,
/// which holds the change lock, so none is deleted meanwhile).
pub(crate) async fn missing_segments(
    tx: &mut sqlx::PgConnection,
    keys: &[String],
) -> Result<Vec<String>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let found: Vec<String> =
        sqlx::query_scalar("SELECT key FROM flag_segments WHERE key = ANY($1)")
            .bind(keys)
            .fetch_all(tx)
            .await?;
    Ok(keys
        .iter()
        .filter(|key| !found.contains(key))
        .cloned()
        .collect())
}

fn validation_errors(errors: Vec<ValidationError>) -> ValidationErrors {
    ValidationErrors::from_vec(errors)
        .unwrap_or_else(|| ValidationErrors::single(ValidationError::new("segment", "is invalid")))
}
