//! Flag usage: how often each flag was evaluated, per variant and reason,
//! across the fleet.
//!
//! Counting happens in memory on every evaluation ([`counters`]); a
//! flusher gathers the counts into hourly rows ([`rows`]) and adds them to
//! the `flag_usage` table every minute and at shutdown ([`flush`]), through
//! the upstream on a follower; [`report`] checks what a follower sends;
//! [`stale`] tells which flags are candidates for removal.

pub mod counters;
pub mod flush;
pub mod report;
pub mod rows;
pub mod stale;
