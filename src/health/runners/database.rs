//! readyd's own database, through readyd's own pool: `SELECT 1` on a pooled
//! connection is exactly what serving a request needs, so it also catches a
//! pool that is exhausted or whose connections went stale, which a fresh
//! connection would not.

use std::fmt;
use std::time::Instant;

use metrics::histogram;

use sqlx::PgPool;

use super::postgres::describe_sqlx;
use crate::telemetry::DB_POOL_WAIT;

/// Runs `SELECT 1` through readyd's pool.
pub struct DatabaseRunner {
    /// readyd's pool (a cheap handle on the shared one).
    pool: PgPool,
}

impl fmt::Debug for DatabaseRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseRunner")
    }
}

impl DatabaseRunner {
    /// A runner over `pool`.
    pub fn new(pool: &PgPool) -> Self {
        Self { pool: pool.clone() }
    }

    /// One `SELECT 1`. Dropping it midway is safe: the pool discards or
    /// checks a connection whose query was abandoned. The time spent
    /// waiting for a pooled connection is recorded: a sample of what every
    /// query waits.
    pub async fn run(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|err| describe_sqlx(&err))?;
        histogram!(DB_POOL_WAIT).record(started.elapsed().as_secs_f64());
        sqlx::query("SELECT 1")
            .execute(&mut *connection)
            .await
            .map(drop)
            .map_err(|err| describe_sqlx(&err))
    }
}
