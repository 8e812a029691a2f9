//! Relay mode: a readyd that follows an upstream readyd instead of a
//! database, so a fleet of sidecars runs on one PostgreSQL (DESIGN "Relay
//! mode", README "Scaling out").
//!
//! Every readyd can be followed ([`upstream`]: the Follow stream, whose
//! snapshots and changes are encoded once and shared by every follower).
//! A follower's source of data is its upstream instead of the change
//! listener ([`follower`]); everything above the source (the snapshot,
//! streams, evaluation, health, the snapshot on disk, STALE) is the same.
//! Calls that need the database are sent to the upstream with the caller's
//! own credentials ([`forward`]), and who is admin on a follower is decided
//! from verifiers of the upstream's tokens ([`verifiers`]).

pub mod coverage;
pub mod encode;
pub mod follower;
pub mod forward;
pub mod upstream;
pub mod verifiers;

/// The replication protocol this readyd speaks. A follower and an upstream
/// that speak different ones refuse each other with a message naming both
/// (during a rolling update across a protocol change, followers keep
/// serving from memory until their upstream speaks theirs again).
pub const PROTOCOL: u32 = 2;

/// The response header carrying the version a write produced, so that
/// each tier answers a forwarded write only once it holds that version
/// (read-your-writes through any number of followers).
pub const VERSION_HEADER: &str = "x-readyd-version";
