//! The `flag_usage` and `flag_usage_flushes` tables.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::usage::stale::UsageAggregate;

/// One row of a flush: evaluations to add to an hour's count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageAddition {
    /// The flag's key.
    pub flag: String,
    /// The start of the hour.
    pub hour: DateTime<Utc>,
    /// The environment of the instance that counted.
    pub environment: String,
    /// The variant answered.
    pub variant: String,
    /// Why (`STATIC`, `SPLIT`, …).
    pub reason: String,
    /// Evaluations to add (at most `i64::MAX`).
    pub count: i64,
}

/// One stored usage row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRecord {
    /// The flag's key.
    pub flag_key: String,
    /// The start of the hour.
    pub hour: DateTime<Utc>,
    /// The environment.
    pub environment: String,
    /// The variant answered.
    pub variant: String,
    /// Why.
    pub reason: String,
    /// Evaluations in the hour.
    pub count: i64,
}

impl Store {
    /// Adds `rows` to their hours' counts, once: the flush `id` (a UUID) is
    /// recorded in the same transaction, and a flush whose id is already
    /// recorded adds nothing. `Ok(false)`: it had been applied before.
    /// Rows must be distinct by flag, hour, environment, variant and
    /// reason (one statement cannot add to a row twice).
    pub async fn add_usage(&self, id: &str, rows: &[UsageAddition]) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO flag_usage_flushes (id) VALUES ($1::uuid) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(false);
        }
        let mut flags = Vec::with_capacity(rows.len());
        let mut hours = Vec::with_capacity(rows.len());
        let mut environments = Vec::with_capacity(rows.len());
        let mut variants = Vec::with_capacity(rows.len());
        let mut reasons = Vec::with_capacity(rows.len());
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            flags.push(row.flag.as_str());
            hours.push(row.hour);
            environments.push(row.environment.as_str());
            variants.push(row.variant.as_str());
            reasons.push(row.reason.as_str());
            counts.push(row.count);
        }
        // One statement for the whole flush, whatever its size.
        sqlx::query(
            "INSERT INTO flag_usage (flag_key, hour, environment, variant, reason, count) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
             ON CONFLICT (flag_key, hour, environment, variant, reason) \
             DO UPDATE SET count = flag_usage.count + EXCLUDED.count",
        )
        .bind(&flags)
        .bind(&hours)
        .bind(&environments)
        .bind(&variants)
        .bind(&reasons)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Usage rows of flag `key` with an hour in `since..until`, ordered by
    /// hour, environment, variant and reason; at most `limit`.
    pub async fn flag_usage(
        &self,
        key: &str,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT flag_key, hour, environment, variant, reason, count FROM flag_usage \
             WHERE flag_key = $1 AND hour >= $2 AND hour < $3 \
             ORDER BY hour, environment, variant, reason LIMIT $4",
        )
        .bind(key)
        .bind(since)
        .bind(until)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every flag's usage for the stale list: the last hour with an
    /// evaluation (any time) and the evaluations per variant of the hours
    /// from `since` on. Flags without a row are not in the map.
    pub async fn usage_aggregates(
        &self,
        since: DateTime<Utc>,
    ) -> Result<HashMap<String, UsageAggregate>, StoreError> {
        let last: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT flag_key, max(hour) FROM flag_usage WHERE count > 0 GROUP BY flag_key",
        )
        .fetch_all(self.pool())
        .await?;
        // The sum is numeric; capped so it always fits an int8.
        let served: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT flag_key, variant, least(sum(count), 9223372036854775807)::int8 \
             FROM flag_usage WHERE hour >= $1 AND count > 0 GROUP BY flag_key, variant",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        let mut aggregates: HashMap<String, UsageAggregate> = HashMap::with_capacity(last.len());
        for (flag, hour) in last {
            aggregates.entry(flag).or_default().last_evaluated = Some(hour);
        }
        for (flag, variant, count) in served {
            aggregates
                .entry(flag)
                .or_default()
                .variants
                .insert(variant, u64::try_from(count).unwrap_or(0));
        }
        Ok(aggregates)
    }

    /// Deletes usage rows of hours before `usage_before` and flush ids
    /// recorded before `flushes_before`; returns the usage rows deleted.
    pub async fn prune_usage(
        &self,
        usage_before: DateTime<Utc>,
        flushes_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let pruned = sqlx::query("DELETE FROM flag_usage WHERE hour < $1")
            .bind(usage_before)
            .execute(self.pool())
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM flag_usage_flushes WHERE at < $1")
            .bind(flushes_before)
            .execute(self.pool())
            .await?;
        Ok(pruned)
    }
}
