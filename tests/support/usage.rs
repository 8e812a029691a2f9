//! `flag_usage` rows as the tests build and read them: hand-built
//! histories written by SQL, and the table's sums to compare counts with;
//! and flags made old by SQL, the other half of a stale flag's evidence.

use std::collections::BTreeMap;

use super::TestDb;

/// Sums by (flag, variant, reason), across hours and environments.
pub type Sums = BTreeMap<(String, String, String), i64>;

/// Adds `n` to the sum of (flag, variant, reason).
pub fn add(sums: &mut Sums, flag: &str, variant: &str, reason: &str, n: i64) {
    *sums
        .entry((flag.to_owned(), variant.to_owned(), reason.to_owned()))
        .or_default() += n;
}

/// The whole table's sums by (flag, variant, reason).
pub async fn table_sums(db: &TestDb) -> Sums {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT flag_key, variant, reason, sum(count)::int8 FROM flag_usage \
         GROUP BY flag_key, variant, reason",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read flag_usage");
    rows.into_iter()
        .map(|(flag, variant, reason, count)| ((flag, variant, reason), count))
        .collect()
}

/// Flag `key`'s sums by (environment, variant, reason), over the hours
/// from `hours_back` hours before this one to now.
pub async fn flag_sums(
    db: &TestDb,
    key: &str,
    hours_back: i32,
) -> BTreeMap<(String, String, String), i64> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT environment, variant, reason, sum(count)::int8 FROM flag_usage \
         WHERE flag_key = $1 AND hour >= date_trunc('hour', now()) - make_interval(hours => $2) \
         GROUP BY environment, variant, reason",
    )
    .bind(key)
    .bind(hours_back)
    .fetch_all(&db.pool)
    .await
    .expect("read flag_usage");
    rows.into_iter()
        .map(|(environment, variant, reason, count)| ((environment, variant, reason), count))
        .collect()
}

/// Adds `count` evaluations of `variant` (reason `STATIC`, environment
/// `prod`) to flag `key` in the hour `hours_ago` hours before this one.
pub async fn insert_usage(db: &TestDb, key: &str, hours_ago: i32, variant: &str, count: i64) {
    sqlx::query(
        "INSERT INTO flag_usage (flag_key, hour, environment, variant, reason, count) \
         VALUES ($1, date_trunc('hour', now()) - make_interval(hours => $2), 'prod', $3, \
         'STATIC', $4)",
    )
    .bind(key)
    .bind(hours_ago)
    .bind(variant)
    .bind(count)
    .execute(&db.pool)
    .await
    .expect("insert a usage row");
}

/// Makes flag `key` one created `days` days ago (a flag inserted by SQL
/// is created now), so that, never evaluated, it is stale.
pub async fn age_flag(db: &TestDb, key: &str, days: i32) {
    sqlx::query(
        "UPDATE feature_flags SET created_at = now() - make_interval(days => $2) WHERE key = $1",
    )
    .bind(key)
    .bind(days)
    .execute(&db.pool)
    .await
    .expect("an old flag");
}
