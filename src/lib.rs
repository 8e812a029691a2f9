//! readyd: a sidecar that serves health, configuration, feature flags and
//! deployment history over gRPC, backed by PostgreSQL.
pub mod api;
pub mod app;
pub mod embedded_pg;
pub mod health;
pub mod http;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use app::serve;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod deployments;
pub mod echo;
pub mod flags;
pub mod memory;
pub mod paging;
pub mod relay;
pub mod signals;
pub mod snapshot_file;
pub mod source;
pub mod state;
pub mod tls;
pub mod usage;
