//! The flusher: every flush interval (and once more at shutdown) it takes
//! the counts out of memory into hourly rows and adds them to `flag_usage`
//! in one statement, or sends them to the upstream on a follower.
//!
//! Exactly once: a batch gets an id (a UUID) when it is first sent and
//! keeps it, rows unchanged, until a write is known to have succeeded;
//! the database records the id in the same transaction as the counts and
//! adds nothing for an id it has seen, so a retry after a write whose
//! outcome is unknown (a timeout, a connection cut after COMMIT) cannot
//! count twice. Counts taken out meanwhile wait in [`Pending`], bounded:
//! past [`MAX_PENDING_ROWS`] rows the oldest hours are dropped, and the
//! evaluations dropped are counted in `readyd_flag_usage_dropped_total`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};

use super::rows::{Pending, UsageRow, hour_of};
use crate::api::convert::to_timestamp;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::replication_service_client::ReplicationServiceClient;
use crate::client::channel::RetryingChannel;
use crate::client::code_name;
use crate::settings::Secret;
use crate::state::State;
use crate::store::Store;
use crate::store::usage::UsageAddition;
use crate::telemetry::{FLAG_USAGE, FLAG_USAGE_DROPPED, FLAG_USAGE_PENDING};

/// Rows waiting at most (about 100 bytes each): hours of a few thousand
/// flags' variants and reasons.
pub const MAX_PENDING_ROWS: usize = 50_000;

/// Rows in one batch (one statement, one RPC well under 4 MiB).
pub const MAX_BATCH_ROWS: usize = 10_000;

/// How long one write may take before its outcome counts as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the last flush at shutdown keeps trying.
const FINAL_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// How long flush ids are kept (a batch is retried with its id for at most
/// this long: see README, "Flag usage").
const FLUSH_IDS_KEPT: TimeDelta = TimeDelta::days(7);

/// How often the database side prunes old rows.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How the flusher runs.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// This instance's environment, recorded with its rows.
    pub environment: String,
    /// Time between two flushes.
    pub interval: Duration,
    /// How long usage rows are kept.
    pub retention: Duration,
    /// Whether to export a Prometheus counter per flag and variant.
    pub flag_labels: bool,
}

/// Where flushed counts go.
#[derive(Debug)]
pub enum UsageSink {
    /// Into `flag_usage` (and old rows are pruned).
    Database(Store),
    /// Up to the upstream, which writes them (a follower has no database).
    Upstream {
        /// The connection to the upstream.
        channel: RetryingChannel,
        /// `Bearer <replication token>`.
        authorization: MetadataValue<Ascii>,
    },
}

impl UsageSink {
    /// The upstream behind `channel`, called with `token`; `None` when the
    /// token cannot be a header.
    pub fn upstream(channel: RetryingChannel, token: &Secret) -> Option<Self> {
        let authorization = format!("Bearer {}", token.expose()).parse().ok()?;
        Some(UsageSink::Upstream {
            channel,
            authorization,
        })
    }

    /// Adds `rows` under flush `id`, once.
    async fn write(&self, id: &str, rows: &[UsageAddition]) -> Result<(), String> {
        match self {
            UsageSink::Database(store) => store
                .add_usage(id, rows)
                .await
                .map(|_| ())
                .map_err(|err| err.to_string()),
            UsageSink::Upstream {
                channel,
                authorization,
            } => {
                let mut request = tonic::Request::new(pb::RecordUsageRequest {
                    flush_id: id.to_owned(),
                    counts: rows
                        .iter()
                        .map(|row| pb::UsageCount {
                            flag_key: row.flag.clone(),
                            hour: Some(to_timestamp(row.hour)),
                            environment: row.environment.clone(),
                            variant: row.variant.clone(),
                            reason: row.reason.clone(),
                            count: u64::try_from(row.count).unwrap_or_default(),
                        })
                        .collect(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                ReplicationServiceClient::new(channel.clone())
                    .record_usage(request)
                    .await
                    .map(|_| ())
                    .map_err(|status| {
                        format!(
                            "the upstream did not take it ({}): {}",
                            code_name(status.code()),
                            status.message()
                        )
                    })
            }
        }
    }
}

/// A batch on its way: the same id and rows until it is known written.
#[derive(Debug)]
struct Batch {
    id: String,
    rows: Vec<UsageAddition>,
}

/// A random (version 4) UUID.
fn new_flush_id() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for a flush id".to_owned())?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Counts on their way from memory to the table.
#[derive(Debug)]
pub struct Flusher {
    state: Arc<State>,
    sink: UsageSink,
    settings: UsageSettings,
    /// Rows taken out of memory, not yet in a batch.
    pending: Pending,
    /// The batch sent and not known written.
    inflight: Option<Batch>,
    /// When the database side last pruned.
    last_prune: Option<Instant>,
}

impl Flusher {
    /// A flusher of `state`'s counts into `sink`.
    pub fn new(state: Arc<State>, sink: UsageSink, settings: UsageSettings) -> Self {
        Self {
            state,
            sink,
            settings,
            pending: Pending::new(MAX_PENDING_ROWS),
            inflight: None,
            last_prune: None,
        }
    }

    /// Takes the counts out of memory into the rows of the hour of `now`.
    pub fn gather(&mut self, now: DateTime<Utc>) {
        let hour = hour_of(now);
        let pending = &mut self.pending;
        let flag_labels = self.settings.flag_labels;
        let mut dropped = 0u64;
        self.state.drain_usage(|flag, variant, reason, count| {
            if flag_labels {
                counter!(FLAG_USAGE, "flag" => flag.to_owned(), "variant" => variant.to_owned())
                    .increment(count);
            }
            dropped = dropped.saturating_add(pending.add(
                super::rows::UsageKey {
                    hour,
                    flag: flag.to_owned(),
                    variant: variant.to_owned(),
                    reason: reason.as_str(),
                },
                count,
            ));
        });
        if dropped > 0 {
            counter!(FLAG_USAGE_DROPPED).increment(dropped);
            tracing::warn!(
                dropped,
                "flag usage could not be written for long: dropped the oldest hours' counts"
            );
        }
        gauge!(FLAG_USAGE_PENDING).set(self.pending.len() as f64);
    }

    /// Writes every batch there is (the one in flight first).
    pub async fn flush(&mut self) -> Result<(), String> {
        loop {
            let batch = match self.inflight.take() {
                Some(batch) => batch,
                None if self.pending.is_empty() => break,
                None => Batch {
                    id: new_flush_id()?,
                    rows: additions(
                        self.pending.take(MAX_BATCH_ROWS),
                        &self.settings.environment,
                    ),
                },
            };
            let written =
                tokio::time::timeout(WRITE_TIMEOUT, self.sink.write(&batch.id, &batch.rows))
                    .await
                    .map_err(|_| "writing flag usage timed out".to_owned())
                    .and_then(|written| written);
            if let Err(err) = written {
                // Kept as it is: a retry sends the same id.
                self.inflight = Some(batch);
                return Err(err);
            }
            gauge!(FLAG_USAGE_PENDING).set(self.pending.len() as f64);
        }
        self.prune().await;
        Ok(())
    }

    /// Rows waiting or in flight.
    pub fn waiting(&self) -> usize {
        self.pending.len() + self.inflight.as_ref().map_or(0, |batch| batch.rows.len())
    }

    /// Deletes rows past the retention, at most once an hour.
    async fn prune(&mut self) {
        let UsageSink::Database(store) = &self.sink else {
            return;
        };
        if self
            .last_prune
            .is_some_and(|last| last.elapsed() < PRUNE_EVERY)
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let now = Utc::now();
        let retention = TimeDelta::from_std(self.settings.retention).unwrap_or(TimeDelta::MAX);
        let usage_before = now
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::UNIX_EPOCH);
        let flushes_before = now - FLUSH_IDS_KEPT;
        match store.prune_usage(usage_before, flushes_before).await {
            Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned old flag usage rows"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not prune flag usage"),
        }
    }
}

/// Rows as the table takes them.
fn additions(rows: Vec<UsageRow>, environment: &str) -> Vec<UsageAddition> {
    rows.into_iter()
        .map(|(key, count)| UsageAddition {
            flag: key.flag,
            hour: key.hour,
            environment: environment.to_owned(),
            variant: key.variant,
            reason: key.reason.to_owned(),
            count: i64::try_from(count).unwrap_or(i64::MAX),
        })
        .collect()
}

/// Flushes every interval until `stop` fires, then gathers and flushes a
/// last time (retrying for a few seconds): call it after the servers have
/// drained, so the last evaluations are in.
pub async fn run(mut flusher: Flusher, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(flusher.settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        flusher.gather(Utc::now());
        // Not raced with `stop`: a write cut short would only be retried
        // below, and it is bounded by its own timeout.
        if let Err(err) = flusher.flush().await {
            tracing::warn!(error = %err, waiting = flusher.waiting(), "could not write flag usage; will retry");
        }
    }
    let deadline = tokio::time::Instant::now() + FINAL_FLUSH_DEADLINE;
    flusher.gather(Utc::now());
    loop {
        match tokio::time::timeout_at(deadline, flusher.flush()).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %err, "last flag usage flush failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, lost_rows = flusher.waiting(), "flag usage not written at shutdown");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    lost_rows = flusher.waiting(),
                    "flag usage not written at shutdown: out of time"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_ids_are_distinct_version_4_uuids() {
        let a = new_flush_id().expect("an id");
        let b = new_flush_id().expect("an id");
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
