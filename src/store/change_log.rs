//! `readyd_change_log`: what changed, by version (see the second migration).
//!
//! The change listener reads it after every wake-up instead of trusting a
//! notification's payload: one query returns every logged change after a
//! version with the row as that change wrote it, so a burst of changes
//! costs one round trip, not one per change, and every version is seen as
//! it was.

use serde::Deserialize;

use super::{Store, StoreError};
use crate::config::ConfigRow;
use crate::flags::Flag;

/// Entries kept when the log is pruned; a listener further behind than this
/// reloads everything instead of catching up.
pub const KEEP: i64 = 10_000;

/// One committed change, with the row it wrote.
#[derive(Debug, Clone)]
pub struct LoggedChange {
    /// Version of the change.
    pub version: i64,
    /// The table changed (`feature_flags`, `app_config`, or a newer table).
    pub table: String,
    /// The key changed; `None` for a TRUNCATE.
    pub key: Option<String>,
    /// The environment of a configuration row.
    pub environment: Option<String>,
    /// insert, update, delete or truncate.
    pub op: String,
    /// The row this change wrote (inserts and updates of a table readyd
    /// knows).
    pub row: Option<ChangedRow>,
}

/// A row as a change left it.
#[derive(Debug, Clone)]
pub enum ChangedRow {
    /// A flag.
    Flag(Flag),
    /// A configuration row.
    Config(ConfigRow),
    /// A segment.
    Segment(crate::flags::segment::Segment),
    /// A row that does not decode (bad data written by plain SQL): to a
    /// reader it is gone, as a full load would leave it out.
    Unreadable,
}

/// The changes after a version, and how far back the log reaches.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// Every committed change at or above this version is in the log.
    pub floor: i64,
    /// The changes, oldest first.
    pub changes: Vec<LoggedChange>,
}

impl ChangeBatch {
    /// Whether the log still holds every change after `version`.
    pub fn covers(&self, version: i64) -> bool {
        version + 1 >= self.floor
    }
}

/// A row of the query below.
#[derive(Debug, sqlx::FromRow)]
struct LogRecord {
    floor: i64,
    version: Option<i64>,
    table_name: Option<String>,
    key: Option<String>,
    environment: Option<String>,
    op: Option<String>,
    row: Option<serde_json::Value>,
}

/// The floor, then (left-joined, so an empty log still returns the floor)
/// every entry after $1. One statement, so both are one consistent view.
const CHANGES_SINCE: &str = "\
SELECT fl.below AS floor, l.version, l.table_name, l.key, l.environment, l.op, l.row
  FROM readyd_change_log_floor fl
  LEFT JOIN LATERAL (
        SELECT * FROM readyd_change_log WHERE version > $1 ORDER BY version LIMIT $2
  ) l ON true
 ORDER BY l.version";

impl Store {
    /// Up to `limit` changes after `version`, oldest first.
    pub async fn changes_since(&self, version: i64, limit: i64) -> Result<ChangeBatch, StoreError> {
        let records: Vec<LogRecord> = sqlx::query_as(CHANGES_SINCE)
            .bind(version)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let floor = records.first().map_or(0, |record| record.floor);
        let changes = records
            .into_iter()
            .filter_map(|record| {
                let table = record.table_name?;
                Some(LoggedChange {
                    version: record.version?,
                    row: record.row.and_then(|row| decoded(&table, row)),
                    table,
                    key: record.key,
                    environment: record.environment,
                    op: record.op?,
                })
            })
            .collect();
        Ok(ChangeBatch { floor, changes })
    }

    /// Drops all but the newest [`KEEP`] entries of the log.
    pub async fn prune_change_log(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT readyd_prune_change_log($1)")
            .bind(KEEP)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

/// The row a change of `table` wrote, decoded; `None` for a table readyd
/// does not know.
fn decoded(table: &str, row: serde_json::Value) -> Option<ChangedRow> {
    fn decode<T: for<'de> Deserialize<'de>>(
        value: serde_json::Value,
        wrap: fn(T) -> ChangedRow,
    ) -> ChangedRow {
        match T::deserialize(value) {
            Ok(row) => wrap(row),
            Err(err) => {
                tracing::warn!(error = %err, "a changed row does not decode; it is left out");
                ChangedRow::Unreadable
            }
        }
    }
    match table {
        "feature_flags" => Some(decode(row, |row: super::flags::FlagRow| {
            match row.into_flag() {
                Ok(flag) => ChangedRow::Flag(flag),
                Err(problem) => {
                    tracing::warn!(%problem, "a changed flag row is invalid; it is left out");
                    ChangedRow::Unreadable
                }
            }
        })),
        "app_config" => Some(decode(row, ChangedRow::Config)),
        "flag_segments" => Some(decode(row, |row: super::segments::SegmentRow| {
            match row.into_segment() {
                Ok(segment) => ChangedRow::Segment(segment),
                Err(problem) => {
                    tracing::warn!(%problem, "a changed segment row is invalid; it is left out");
                    ChangedRow::Unreadable
                }
            }
        })),
        _ => None,
    }
}
