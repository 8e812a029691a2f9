//! Reading the audit trails. The rows are written by each table's triggers
//! in the changing transaction, for every writer (readyd or plain SQL):
//! `config_audit` (migration 0001), `flag_audit` (0005), `segment_audit`
//! (0006). Every trail is listed the same way: newest first, filtered by
//! key and time, paged by row id.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// Which audit rows to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this key, when set.
    pub key: Option<String>,
    /// Only changes at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only changes before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only rows with a smaller id (the page token).
    pub before_id: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

/// What follows `SELECT … FROM trail` in every listing; binds
/// [`AuditQuery`] in field order.
const FILTER: &str = "WHERE ($1::text IS NULL OR key = $1) \
       AND ($2::timestamptz IS NULL OR changed_at >= $2) \
       AND ($3::timestamptz IS NULL OR changed_at < $3) \
       AND ($4::bigint IS NULL OR id < $4) \
     ORDER BY id DESC LIMIT $5";

/// An audit trail that records whole objects as JSON (flags, segments).
pub struct Trail<T> {
    /// Its table.
    pub table: &'static str,
    /// The columns of the object before and after.
    pub old: &'static str,
    pub new: &'static str,
    /// The object a recorded row is, when it is a valid one.
    pub decode: fn(serde_json::Value) -> Option<T>,
}

/// One recorded change of an object.
#[derive(Debug, Clone)]
pub struct ObjectAuditRow<T> {
    /// Row id; grows with time.
    pub id: i64,
    /// The object's key.
    pub key: String,
    /// insert, update or delete.
    pub action: String,
    /// Before; `None` for an insert or a row that is no valid object.
    pub old: Option<T>,
    /// After; `None` for a delete or a row that is no valid object.
    pub new: Option<T>,
    /// Who made the change.
    pub actor: String,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Version of the change.
    pub version: i64,
}

/// A row of an object trail as stored.
type RawObjectRow = (
    i64,
    String,
    String,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
    String,
    DateTime<Utc>,
    i64,
);

impl Store {
    /// Rows of `table` (selecting `columns`) that `query` asks for.
    pub(crate) async fn audit_rows_of<R>(
        &self,
        table: &str,
        columns: &str,
        query: &AuditQuery,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {columns} FROM {table} {FILTER}"));
        Ok(sqlx::query_as(sql)
            .bind(&query.key)
            .bind(query.since)
            .bind(query.until)
            .bind(query.before_id)
            .bind(query.limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Rows of an object trail, newest first.
    pub async fn trail_rows<T>(
        &self,
        trail: &Trail<T>,
        query: &AuditQuery,
    ) -> Result<Vec<ObjectAuditRow<T>>, StoreError> {
        let columns = format!(
            "id, key, action, {}, {}, actor, changed_at, version",
            trail.old, trail.new
        );
        let rows: Vec<RawObjectRow> = self.audit_rows_of(trail.table, &columns, query).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, key, action, old, new, actor, changed_at, version)| ObjectAuditRow {
                    id,
                    key,
                    action,
                    old: old.and_then(trail.decode),
                    new: new.and_then(trail.decode),
                    actor,
                    changed_at,
                    version,
                },
            )
            .collect())
    }
}
