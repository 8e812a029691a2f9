//! TEMPORARY stub; replaced by the real module.
use sqlx::postgres::PgConnectOptions;
use std::path::Path;
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct EmbeddedPgError;
#[derive(Debug)]
pub struct EmbeddedPostgres;
impl EmbeddedPostgres {
    pub async fn start(_data_dir: &Path, _durable: bool) -> Result<Self, EmbeddedPgError> {
        Err(EmbeddedPgError)
    }
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
    }
    pub fn url(&self) -> String {
        String::new()
    }
    pub async fn stop(&self) -> Result<(), EmbeddedPgError> {
        Ok(())
    }
}
