//! A private PostgreSQL cluster that a test starts, stops and starts again
//! (pg_ctl, through readyd's own embedded PostgreSQL code), for outage
//! tests. It listens on a Unix socket in its own directory, so it collides
//! with nothing; it is stopped when dropped, even when the test fails.

use std::path::Path;

use readyd::embedded_pg::EmbeddedPostgres;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A running (or stopped) private cluster.
pub struct Cluster {
    pg: Option<EmbeddedPostgres>,
    url: String,
    dir: TempDir,
}

impl Cluster {
    /// Creates and starts a cluster with a `readyd` database.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = start_in(dir.path()).await;
        let url = pg.url();
        Cluster {
            pg: Some(pg),
            url,
            dir,
        }
    }

    /// URL of its `readyd` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops it (fast shutdown: connections are cut).
    pub async fn stop(&mut self) {
        if let Some(pg) = self.pg.take() {
            pg.stop().await.expect("stop the cluster");
        }
    }

    /// Starts it again on the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.pg = Some(start_in(self.dir.path()).await);
    }

    /// A new connection to its `readyd` database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to the cluster")
    }
}

async fn start_in(dir: &Path) -> EmbeddedPostgres {
    EmbeddedPostgres::start(dir, false)
        .await
        .expect("start a private cluster")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(pg) = self.pg.take() else {
            return;
        };
        // Drop cannot await, and may run inside the test's runtime: stop
        // from a thread with a runtime of its own.
        let stopped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(pg.stop()))
        })
        .join();
        if !matches!(stopped, Ok(Ok(Ok(())))) {
            eprintln!("stopping the test cluster failed");
        }
    }
}
