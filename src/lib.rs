//! readyd: a sidecar that serves health, configuration, feature flags and
//! deployment history over gRPC, backed by PostgreSQL.
pub mod api;
