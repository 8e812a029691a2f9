//! The gRPC edge: one file per proto service, the auth layer, and the error
//! mapping. Translates between protobuf and the cores; no rules live here.

pub mod auth;
pub mod error;
pub mod grpc_health;
pub mod health;
pub mod pb;

use chrono::{DateTime, Utc};

/// Converts a time to protobuf.
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}
