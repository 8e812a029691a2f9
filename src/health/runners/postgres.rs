//! A PostgreSQL server other than readyd's own: a new connection from the URL
//! on every run, `SELECT 1`, then a clean close. A fresh connection each time
//! proves what a restarting client needs (reachable, TLS, authentication,
//! database present, a backend slot free) and keeps nothing open between runs.

use std::fmt;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{describe_error, describe_io, quote, redactor_for};
use crate::health::redact::{Redactor, redact_url};

/// Connects, runs `SELECT 1` and closes.
pub struct PostgresRunner {
    /// Connection options parsed once from the URL.
    options: PgConnectOptions,
    /// The URL without its password, for Debug.
    display: String,
    /// The URL's secrets.
    redactor: Redactor,
}

impl fmt::Debug for PostgresRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresRunner({})", self.display)
    }
}

impl PostgresRunner {
    /// A runner for the `postgres://` URL `url`.
    pub fn new(url: &str) -> Result<Self, String> {
        let options = url
            .parse::<PgConnectOptions>()
            .map_err(|err| format!("not a usable PostgreSQL URL: {}", describe_sqlx(&err)))?
            // A health check every few seconds must not flood the log.
            .disable_statement_logging();
        Ok(Self {
            options,
            display: redact_url(url),
            redactor: redactor_for(url),
        })
    }

    /// The URL's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// One connection, `SELECT 1`, close. Dropped midway, the connection's
    /// socket is closed with it.
    pub async fn run(&self) -> Result<(), String> {
        let mut conn = self
            .options
            .connect()
            .await
            .map_err(|err| describe_sqlx(&err))?;
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|err| describe_sqlx(&err))?;
        conn.close().await.map_err(|err| describe_sqlx(&err))
    }
}

/// A short description of a sqlx error: the server's own message for a
/// database error (e.g. a failed login), the network failure by name.
pub(super) fn describe_sqlx(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => quote(db.message()),
        sqlx::Error::Io(io) => describe_io(io),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection from the pool".to_owned(),
        sqlx::Error::PoolClosed => "the pool is closed".to_owned(),
        other => describe_error(other),
    }
}
