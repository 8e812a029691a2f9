//! PostgreSQL access: the only module that speaks SQL. Owns the pool, the
//! embedded migrations, the schema checks of start-up, and one module per
//! table.

pub mod audit;
pub mod change_log;
pub mod config;
pub mod deployments;
pub mod flags;
pub mod listener;
pub mod segments;
pub mod system_health;
pub mod timeline;
pub mod usage;

use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

/// How long a query waits for a free connection before the caller is told
/// the database is unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The bounds on every statement of readyd's own sessions, so that a session
/// holding a lock (e.g. someone's `psql` left idle in a transaction after an
/// `UPDATE feature_flags`) makes writes fail after a while instead of
/// holding pool connections forever. Every session also runs without JIT
/// compilation (see [`DbTimeouts::set_statements`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `statement_timeout`: longest a statement may run (zero: no limit).
    /// Also readyd's `idle_in_transaction_session_timeout`: a transaction
    /// of readyd's never idles between statements for longer.
    pub statement: Duration,
    /// `lock_timeout`: longest a statement waits for a lock, the change lock
    /// (an advisory lock) included (zero: no limit).
    pub lock: Duration,
}

impl DbTimeouts {
    /// Default of `--db-statement-timeout`.
    pub const DEFAULT_STATEMENT: Duration = Duration::from_secs(5);
    /// Default of `--db-lock-timeout`.
    pub const DEFAULT_LOCK: Duration = Duration::from_secs(2);

    /// The `SET` statements that apply these bounds to a session, and turn
    /// JIT compilation off: readyd's statements read a handful of rows,
    /// and a planner without statistics yet (tables just filled) can
    /// estimate them above `jit_above_cost`, whereupon compiling each one
    /// took 100 to 300 ms of the server's CPU, on the path of every change
    /// to its subscribers. `set_config` through `pg_settings` because a
    /// server built without JIT support has no such setting.
    fn set_statements(&self) -> String {
        // Whole milliseconds, computed here: nothing from outside reaches
        // the SQL text.
        // Zero is "no limit"; anything else is at least 1 ms.
        let ms = |d: Duration| {
            if d.is_zero() {
                0
            } else {
                d.as_millis().clamp(1, i32::MAX as u128)
            }
        };
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}; \
             SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'jit'",
            ms(self.statement),
            ms(self.lock),
            ms(self.statement)
        )
    }
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            statement: Self::DEFAULT_STATEMENT,
            lock: Self::DEFAULT_LOCK,
        }
    }
}

/// Pool options whose every new connection gets `timeouts`.
fn pool_options(timeouts: DbTimeouts) -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |connection, _meta| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(timeouts.set_statements()))
                    .execute(connection)
                    .await?;
                Ok(())
            })
        })
}

fn listener_pool(options: PgConnectOptions, timeouts: DbTimeouts) -> PgPool {
    pool_options(timeouts)
        .max_connections(1)
        .connect_lazy_with(options)
}

/// A transaction ready to change `app_config` or `feature_flags`: it holds
/// the change lock (taken first, before any row lock; see the first
/// migration) and names `actor` for the audit trail and `updated_by`.
pub(crate) async fn begin_change(
    pool: &PgPool,
    actor: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGE_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    set_actor(&mut tx, actor).await?;
    Ok(tx)
}

/// Inside a change transaction: checks that `key` exists in `table` (a
/// flag or a segment, `what` in the error) at the version the caller
/// expects, if it said one.
pub(crate) async fn check_deletable(
    tx: &mut sqlx::PgConnection,
    table: &str,
    what: &str,
    key: &str,
    expected_version: Option<i64>,
) -> Result<(), StoreError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT version FROM {table} WHERE key = $1"));
    let current: Option<i64> = sqlx::query_scalar(sql)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    if current.is_none() {
        return Err(StoreError::NotFound(format!(
            "{what} {:?} does not exist",
            crate::echo::truncate(key)
        )));
    }
    flags::check_expected(key, current, expected_version)
}

/// Deletes `key` from `table` inside a change transaction and returns the
/// version the triggers gave the deletion.
pub(crate) async fn delete_row(
    tx: &mut sqlx::PgConnection,
    table: &str,
    key: &str,
) -> Result<i64, StoreError> {
    let sql = sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE key = $1"));
    sqlx::query(sql).bind(key).execute(&mut *tx).await?;
    deletion_version(tx).await
}

/// The version the triggers gave the deletion just made in this session's
/// transaction.
pub(crate) async fn deletion_version(tx: &mut sqlx::PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT currval('readyd_change_version')")
            .fetch_one(tx)
            .await?,
    )
}

/// Names the actor of the changes of this transaction (audit rows and
/// `updated_by` read it through the `readyd.actor` setting).
async fn set_actor(tx: &mut sqlx::PgConnection, actor: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT set_config('readyd.actor', $1, true)")
        .bind(actor)
        .execute(tx)
        .await?;
    Ok(())
}

/// Tables readyd cannot run without.
pub const REQUIRED_TABLES: [&str; 8] = [
    "app_config",
    "config_audit",
    "feature_flags",
    "flag_audit",
    "flag_segments",
    "segment_audit",
    "deployment_history",
    "system_health",
];

/// The database health function, with its argument types.
pub const HEALTH_FUNCTION: &str = "check_system_health(text, jsonb, text)";

/// The advisory lock every writer of `app_config` and `feature_flags` holds
/// until commit, so that versions are committed in order (see the first
/// migration). Readers take it shared for a consistent full load.
pub const CHANGE_LOCK_KEY: i64 = 7_246_851_021;

/// The channel the change feed announces on.
pub const CHANGE_CHANNEL: &str = "readyd_changes";

/// A failure talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused, timed out, closed).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A statement ran past `--db-statement-timeout` or waited for a lock
    /// past `--db-lock-timeout` (another session holds it), and was
    /// cancelled; nothing was changed.
    #[error("the database did not answer in time (another session may hold a lock): {0}")]
    TimedOut(#[source] sqlx::Error),
    /// A query failed for another reason.
    #[error("database error: {0}")]
    Query(#[source] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The row to change does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An expected version did not match the stored one.
    #[error("{key:?} is at version {current}, not the expected {expected}")]
    VersionConflict {
        /// The key written.
        key: String,
        /// The version the caller expected (0: absent).
        expected: i64,
        /// The version stored (0: absent).
        current: i64,
    },
    /// The request, together with what is stored, breaks a rule (e.g. a
    /// prerequisite that would make a cycle); nothing was changed.
    #[error("{0}")]
    Invalid(crate::flags::ValidationErrors),
    /// The request is valid, but the rows as they are do not allow it
    /// (e.g. a rollback with nothing to roll back to); nothing was changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The database answered with something readyd cannot use.
    #[error("unexpected data from the database: {0}")]
    Decode(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            StoreError::Unavailable(err)
        } else if is_timeout(&err) {
            StoreError::TimedOut(err)
        } else {
            StoreError::Query(err)
        }
    }
}

/// Whether `err` means the database cannot be reached or talked to (as
/// opposed to a query it refused): worth retrying, and UNAVAILABLE to a
/// caller.
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        // A conversation that broke off: a cut connection can surface as a
        // protocol error (e.g. an empty answer to the TLS request).
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (class 08) and a server shutting down or
        // starting up (57P01..57P03).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether `err` is a statement cancelled by `statement_timeout`
/// (57014 query_canceled) or a lock wait ended by `lock_timeout` (55P03
/// lock_not_available).
fn is_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| matches!(&*code, "57014" | "55P03")))
}

/// The migrations in `migrations/`, embedded in the binary.
///
/// Migrations applied by a newer readyd are tolerated (`ignore_missing`), so
/// an older instance keeps running during a rolling upgrade.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Something wrong with the database's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaProblem {
    /// Migrations of this readyd not yet applied (version and name each).
    PendingMigrations(Vec<String>),
    /// Anything else: a missing table or function, an altered migration.
    Other(String),
}

impl std::fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaProblem::PendingMigrations(pending) => write!(
                f,
                "{} migration(s) not applied ({}); run `readyd migrate` or start `readyd serve` without --no-migrate",
                pending.len(),
                pending.join(", ")
            ),
            SchemaProblem::Other(problem) => f.write_str(problem),
        }
    }
}

/// Handle on readyd's database.
#[derive(Clone, Debug)]
pub struct Store {
    /// Connection pool; small on purpose (see `--db-pool-size`).
    pool: PgPool,
    /// One connection of its own for the change listener, so a busy pool
    /// never delays LISTEN and the listener never starves queries.
    listener_pool: PgPool,
}

impl Store {
    /// Connects, retrying until `wait` has passed, so a database that starts
    /// a moment after readyd (a common race in pods) is not an error.
    pub async fn connect(
        options: PgConnectOptions,
        pool_size: u32,
        wait: Duration,
        timeouts: DbTimeouts,
    ) -> Result<Self, StoreError> {
        let options = options.application_name("readyd");
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = Duration::from_millis(50);
        // Probe with single connections: a pool would hide the cause of a
        // failure behind "pool timed out".
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = tokio::time::timeout(
                remaining.max(Duration::from_millis(100)),
                PgConnection::connect_with(&options),
            )
            .await;
            let err = match attempt {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    break;
                }
                Ok(Err(err)) => StoreError::from(err),
                Err(_elapsed) => StoreError::Unavailable(sqlx::Error::PoolTimedOut),
            };
            let now = tokio::time::Instant::now();
            // A refused login or a missing database will not fix itself.
            if now >= deadline || !matches!(err, StoreError::Unavailable(_)) {
                return Err(err);
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        Ok(Self::lazy(options, pool_size, timeouts))
    }

    /// A handle that connects only when first used: for a start with the
    /// database down, whose queries fail as UNAVAILABLE until it is back.
    /// Every connection, the LISTEN connection included, is bounded by
    /// `timeouts`.
    pub fn lazy(options: PgConnectOptions, pool_size: u32, timeouts: DbTimeouts) -> Self {
        let options = options.application_name("readyd");
        let pool = pool_options(timeouts)
            .max_connections(pool_size)
            .min_connections(0)
            .connect_lazy_with(options.clone());
        let listener_pool = listener_pool(options, timeouts);
        Self {
            pool,
            listener_pool,
        }
    }

    /// Wraps an existing pool (tests, tools); the listener's connection gets
    /// the default timeouts.
    pub fn from_pool(pool: PgPool) -> Self {
        let listener_pool = listener_pool(
            pool.connect_options().as_ref().clone(),
            DbTimeouts::default(),
        );
        Self {
            pool,
            listener_pool,
        }
    }

    /// The listener's own pool.
    pub(crate) fn listener_pool(&self) -> &PgPool {
        &self.listener_pool
    }

    /// The pool, for the table modules.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration. Safe to run concurrently from many
    /// instances: sqlx serialises them with an advisory lock.
    ///
    /// On a connection of its own without the statement and lock bounds: a
    /// migration may rightly take long, and an instance waits for another
    /// one's migration to finish rather than fail its start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let unbounded = DbTimeouts {
            statement: Duration::ZERO,
            lock: Duration::ZERO,
        };
        let pool = pool_options(unbounded)
            .max_connections(1)
            .connect_with(self.pool.connect_options().as_ref().clone())
            .await?;
        let applied = migrator().run(&pool).await;
        pool.close().await;
        applied?;
        Ok(())
    }

    /// Everything that stops readyd from using this database: pending or
    /// altered migrations, missing tables, a missing function.
    pub async fn schema_problems(&self) -> Result<Vec<SchemaProblem>, StoreError> {
        let mut problems = Vec::new();
        let applied: Vec<(i64, Vec<u8>, bool)> = if self.relation_exists("_sqlx_migrations").await?
        {
            sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        let migrator = migrator();
        let mut pending = Vec::new();
        for migration in migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
        {
            match applied.iter().find(|(version, _, _)| *version == migration.version) {
                None => pending.push(format!("{} {}", migration.version, migration.description)),
                Some((_, _, false)) => problems.push(SchemaProblem::Other(format!(
                    "migration {} ({}) failed part way; repair the database, then run `readyd migrate`",
                    migration.version, migration.description
                ))),
                Some((_, checksum, true)) if checksum.as_slice() != &*migration.checksum => {
                    problems.push(SchemaProblem::Other(format!(
                        "migration {} ({}) differs from the one applied to this database",
                        migration.version, migration.description
                    )))
                }
                Some(_) => {}
            }
        }
        if !pending.is_empty() {
            // Missing tables would only repeat this: migrating creates them.
            problems.push(SchemaProblem::PendingMigrations(pending));
            return Ok(problems);
        }
        for table in REQUIRED_TABLES {
            if !self.relation_exists(table).await? {
                problems.push(SchemaProblem::Other(format!("table {table} is missing")));
            }
        }
        let function: Option<String> = sqlx::query_scalar("SELECT to_regprocedure($1)::text")
            .bind(HEALTH_FUNCTION)
            .fetch_one(&self.pool)
            .await?;
        if function.is_none() {
            problems.push(SchemaProblem::Other(format!(
                "function {HEALTH_FUNCTION} is missing"
            )));
        }
        Ok(problems)
    }

    async fn relation_exists(&self, name: &str) -> Result<bool, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(exists)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.listener_pool.close().await;
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_conversations_are_unavailable_and_refused_queries_are_not() {
        let cut = StoreError::from(sqlx::Error::Protocol(
            "unexpected response from SSLRequest".into(),
        ));
        assert!(matches!(cut, StoreError::Unavailable(_)));
        let io = StoreError::from(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert!(matches!(io, StoreError::Unavailable(_)));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::Query(_)
        ));
    }
}
