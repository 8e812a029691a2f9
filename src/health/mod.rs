//! Health: dependency checks declared by URL ([`spec`]), their runners
//! ([`runners`], one per URL scheme), the pure rules of hysteresis and
//! aggregation ([`rules`]), the background monitor that runs them
//! ([`monitor`]), and the probe states served by grpc.health.v1 ([`probes`]).

pub mod history;
pub mod monitor;
pub mod probes;
pub mod redact;
pub mod rules;
pub mod runners;
pub mod spec;

pub use probes::{Probes, ServingStatus};

/// A declared check with the runner that runs it.
pub type RunnableCheck = (spec::CheckSpec, runners::Runner);
