//! The `feature_flags` table.

use chrono::{DateTime, Utc};

use super::audit::{ObjectAuditRow, Trail};
use super::segments::{SegmentDraft, missing_segments, write_segment};
use super::{Store, StoreError, begin_change, check_deletable, delete_row};
use crate::flags::segment::Segment;
use std::collections::HashMap;

use crate::flags::targeting::check_prerequisite_chain;
use crate::flags::{Flag, Prerequisite, Targeting, ValidFlagDraft, ValidationErrors, ValueType};

/// Every column, in the order of [`FlagRow`].
const COLUMNS: &str = "key, description, enabled, value_type, on_value, off_value, environments, \
                       target_users, target_roles, rollout_percentage, version, updated_at, updated_by, \
                       targeting, client_visible, created_at, permanent";

/// The flag model this readyd evaluates (DESIGN.md, "Flag model v2"): a
/// flag with v2 parts has `@2` after its value type in `value_type`, which
/// readyd binaries of the first model do not know and so leave out.
pub const FLAG_MODEL: u32 = 2;

/// One row as PostgreSQL returns it (or as the change log holds it).
#[derive(Debug, sqlx::FromRow, serde::Deserialize)]
pub(crate) struct FlagRow {
    key: String,
    description: String,
    enabled: bool,
    value_type: String,
    on_value: serde_json::Value,
    off_value: serde_json::Value,
    environments: Vec<String>,
    target_users: Vec<String>,
    target_roles: Vec<String>,
    rollout_percentage: i32,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
    /// The v2 parts; NULL for a flag of the first model.
    #[serde(default)]
    targeting: Option<serde_json::Value>,
    /// Whether client tokens may evaluate it (absent in rows from before
    /// the mark existed).
    #[serde(default)]
    client_visible: bool,
    /// When the flag was created (absent in rows from before the column).
    #[serde(default)]
    created_at: DateTime<Utc>,
    /// Kept off the stale list (absent in rows from before the mark).
    #[serde(default)]
    permanent: bool,
}

/// `value_type` as stored: the type, marked `@2` when the flag has v2 parts.
fn stored_value_type(value_type: ValueType, has_targeting: bool) -> String {
    if has_targeting {
        format!("{value_type}@{FLAG_MODEL}")
    } else {
        value_type.as_str().to_owned()
    }
}

impl FlagRow {
    /// The flag, or why the row cannot be one (bad data written by SQL, or
    /// a flag of a newer model than this readyd's).
    pub(crate) fn into_flag(self) -> Result<Flag, String> {
        let (type_name, model) = match self.value_type.split_once('@') {
            None => (self.value_type.as_str(), 1),
            Some((type_name, model)) => (
                type_name,
                model
                    .parse::<u32>()
                    .map_err(|_| format!("unknown value_type {:?}", self.value_type))?,
            ),
        };
        if model > FLAG_MODEL {
            return Err(format!(
                "the flag uses flag model {model}, and this readyd knows up to {FLAG_MODEL}: \
                 upgrade readyd to serve it"
            ));
        }
        let value_type: ValueType = type_name
            .parse()
            .map_err(|_| format!("unknown value_type {:?}", self.value_type))?;
        let targeting = match (model, self.targeting) {
            (1, None | Some(serde_json::Value::Null)) => None,
            (2, Some(document)) if !document.is_null() => Some(Box::new(
                serde_json::from_value(document)
                    .map_err(|err| format!("targeting does not decode: {err}"))?,
            )),
            _ => {
                return Err(format!(
                    "value_type {:?} and targeting disagree about the flag model",
                    self.value_type
                ));
            }
        };
        let rollout_percentage = u8::try_from(self.rollout_percentage)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| {
                format!(
                    "rollout_percentage {} is outside 0..=100",
                    self.rollout_percentage
                )
            })?;
        Ok(Flag {
            key: self.key,
            description: self.description,
            enabled: self.enabled,
            value_type,
            on_value: self.on_value,
            off_value: self.off_value,
            environments: self.environments,
            target_users: self.target_users,
            target_roles: self.target_roles,
            rollout_percentage,
            version: self.version,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
            targeting,
            client_visible: self.client_visible,
            created_at: self.created_at,
            permanent: self.permanent,
        })
    }
}

/// Rows that decode into flags; the others are logged and left out.
pub(crate) fn decode_rows(rows: Vec<FlagRow>) -> Vec<Flag> {
    rows.into_iter()
        .filter_map(|row| {
            let key = row.key.clone();
            match row.into_flag() {
                Ok(flag) => Some(flag),
                Err(problem) => {
                    tracing::warn!(flag = %key, %problem, "flag row is invalid; it is left out");
                    None
                }
            }
        })
        .collect()
}

/// One recorded flag change.
pub type FlagAuditRow = ObjectAuditRow<Flag>;

/// The flags' audit trail.
pub const FLAG_TRAIL: Trail<Flag> = Trail {
    table: "flag_audit",
    old: "old_flag",
    new: "new_flag",
    decode: audited_flag,
};

/// A flag as the audit trail recorded it, when it is one.
fn audited_flag(row: serde_json::Value) -> Option<Flag> {
    serde_json::from_value::<FlagRow>(row)
        .ok()
        .and_then(|row| row.into_flag().ok())
}

/// The outcome of an upsert.
#[derive(Debug, Clone)]
pub struct UpsertedFlag {
    /// The flag as stored, with its new version.
    pub flag: Flag,
    /// Whether the flag is new.
    pub created: bool,
}

impl Store {
    /// Every flag.
    pub(crate) async fn flag_rows(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
    ) -> Result<Vec<FlagRow>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM feature_flags"));
        Ok(sqlx::query_as(sql).fetch_all(executor).await?)
    }

    /// One flag as stored now; `Ok(None)` when it does not exist or its row
    /// is invalid.
    pub async fn flag(&self, key: &str) -> Result<Option<Flag>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM feature_flags WHERE key = $1"
        ));
        let row: Option<FlagRow> = sqlx::query_as(sql)
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(row
            .map(|row| decode_rows(vec![row]))
            .and_then(|mut flags| flags.pop()))
    }

    /// Creates or replaces a flag in one transaction. With
    /// `expected_version`, writes only if the current version equals it (0:
    /// the flag must not exist yet).
    pub async fn upsert_flag(
        &self,
        draft: &ValidFlagDraft,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<UpsertedFlag, StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        let upserted = write_flag(&mut tx, draft, expected_version).await?;
        tx.commit().await?;
        Ok(upserted)
    }

    /// Creates or replaces every segment of `segments`, then every flag of
    /// `drafts`, in order, in one transaction: all are written or, when one
    /// cannot be (a stale expected version, a rule that no longer holds),
    /// none.
    pub async fn apply_flags(
        &self,
        segments: &[SegmentDraft],
        drafts: &[(ValidFlagDraft, Option<i64>)],
        actor: &str,
    ) -> Result<(Vec<Segment>, Vec<UpsertedFlag>), StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        // Segments first: the flags' rules may name them.
        let mut written = Vec::with_capacity(segments.len());
        for segment in segments {
            written.push(write_segment(&mut tx, segment).await?.0);
        }
        let mut upserted = Vec::with_capacity(drafts.len());
        for (draft, expected_version) in drafts {
            upserted.push(write_flag(&mut tx, draft, *expected_version).await?);
        }
        tx.commit().await?;
        Ok((written, upserted))
    }

    /// Deletes a flag; returns the version of the deletion.
    pub async fn delete_flag(
        &self,
        key: &str,
        expected_version: Option<i64>,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut tx = begin_change(self.pool(), actor).await?;
        check_deletable(&mut tx, "feature_flags", "flag", key, expected_version).await?;
        let version = delete_row(&mut tx, "feature_flags", key).await?;
        tx.commit().await?;
        Ok(version)
    }
}

/// ABORTED-style conflict when `expected` is set and differs from `current`
/// (0 standing for "does not exist").
pub(crate) fn check_expected(
    key: &str,
    current: Option<i64>,
    expected: Option<i64>,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current.unwrap_or(0) => Err(StoreError::VersionConflict {
            key: key.to_owned(),
            expected,
            current: current.unwrap_or(0),
        }),
        _ => Ok(()),
    }
}

/// Creates or replaces one flag inside `tx`, which holds the change lock
/// (so the row read here is the row written over).
async fn write_flag(
    tx: &mut sqlx::PgConnection,
    draft: &ValidFlagDraft,
    expected_version: Option<i64>,
) -> Result<UpsertedFlag, StoreError> {
    let stored: Option<(i64, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT version, targeting FROM feature_flags WHERE key = $1")
            .bind(draft.key())
            .fetch_optional(&mut *tx)
            .await?;
    let current = stored.as_ref().map(|(version, _)| *version);
    check_expected(draft.key(), current, expected_version)?;
    // A write that does not say what the v2 parts are keeps them.
    let kept = match stored.and_then(|(_, targeting)| targeting) {
        Some(document) if !document.is_null() => Some(
            serde_json::from_value::<Targeting>(document)
                .map_err(|err| StoreError::Decode(format!("stored targeting: {err}")))?,
        ),
        _ => None,
    };
    let draft = draft.clone().keeping(kept).map_err(StoreError::Invalid)?;
    if let Some(targeting) = draft.targeting() {
        let missing = missing_segments(&mut *tx, &targeting.named_segments()).await?;
        if !missing.is_empty() {
            return Err(StoreError::Invalid(ValidationErrors::single(
                crate::flags::ValidationError::new(
                    "targeting.rules",
                    format!(
                        "segment{} {} {} not exist; create {} first",
                        if missing.len() == 1 { "" } else { "s" },
                        missing.join(", "),
                        if missing.len() == 1 { "does" } else { "do" },
                        if missing.len() == 1 { "it" } else { "them" },
                    ),
                ),
            )));
        }
    }
    if let Some(targeting) = draft.targeting()
        && !targeting.prerequisites.is_empty()
    {
        let others = prerequisite_graph(&mut *tx).await?;
        let required: Vec<String> = targeting.required_flags().map(str::to_owned).collect();
        check_prerequisite_chain(draft.key(), &required, &others)
            .map_err(|error| StoreError::Invalid(ValidationErrors::single(error)))?;
    }
    let targeting = draft
        .targeting()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|err| StoreError::Decode(format!("targeting: {err}")))?;
    let returning = format!("RETURNING {COLUMNS}");
    // Not INSERT ... ON CONFLICT: its BEFORE INSERT trigger would take a
    // version even when the row is then updated, leaving a gap.
    let sql = if current.is_some() {
        format!(
            "UPDATE feature_flags SET description = $2, enabled = $3, value_type = $4, on_value = $5, \
             off_value = $6, environments = $7, target_users = $8, target_roles = $9, \
             rollout_percentage = $10, targeting = $11, \
             client_visible = coalesce($12, client_visible), \
             permanent = coalesce($13, permanent) WHERE key = $1 {returning}"
        )
    } else {
        format!(
            "INSERT INTO feature_flags (key, description, enabled, value_type, on_value, off_value, \
             environments, target_users, target_roles, rollout_percentage, targeting, \
             client_visible, permanent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, false), \
             coalesce($13, false)) {returning}"
        )
    };
    let row: FlagRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(draft.key())
        .bind(draft.description())
        .bind(draft.enabled())
        .bind(stored_value_type(draft.value_type(), targeting.is_some()))
        .bind(draft.on_value())
        .bind(draft.off_value())
        .bind(draft.environments())
        .bind(draft.target_users())
        .bind(draft.target_roles())
        .bind(i32::from(draft.rollout_percentage()))
        .bind(targeting)
        .bind(draft.client_visible())
        .bind(draft.permanent())
        .fetch_one(&mut *tx)
        .await?;
    let flag = row.into_flag().map_err(StoreError::Decode)?;
    Ok(UpsertedFlag {
        flag,
        created: current.is_none(),
    })
}

/// What every flag with prerequisites requires: key to required keys.
async fn prerequisite_graph(
    tx: &mut sqlx::PgConnection,
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let rows: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT key, targeting -> 'prerequisites' FROM feature_flags \
         WHERE jsonb_array_length(coalesce(targeting -> 'prerequisites', '[]')) > 0",
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, prerequisites)| {
            let required = prerequisites
                .and_then(|p| serde_json::from_value::<Vec<Prerequisite>>(p).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.flag)
                .collect();
            (key, required)
        })
        .collect())
}
