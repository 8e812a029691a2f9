//! Health: the probe states served by grpc.health.v1 (and, with the health
//! issue, dependency checks and their aggregation).

pub mod probes;

pub use probes::{Probes, ServingStatus};
