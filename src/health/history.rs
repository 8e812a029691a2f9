//! The health history: one `system_health` row every history interval and
//! on every change of the overall status, recorded through
//! `check_system_health()`; rows older than the retention are pruned.
//!
//! A row's `checks` holds `{"overall": "<status>", "checks": {name:
//! {state, critical, target, latency_ms, consecutive_failures, last_error}}}`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};

use tokio_util::sync::CancellationToken;

use super::monitor::{CheckView, HealthMonitor};
use super::rules::{CheckState, OverallStatus};
use crate::api::convert::to_pb_struct;
use crate::api::pb::readyd::v1 as pb;
use crate::api::pb::readyd::v1::replication_service_client::ReplicationServiceClient;
use crate::client::channel::RetryingChannel;
use crate::client::code_name;
use crate::settings::Secret;
use crate::store::Store;

/// How the recorder runs.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// This instance's name, recorded with each row.
    pub instance: String,
    /// This instance's environment (picks the recorded app version).
    pub environment: String,
    /// Time between two regular rows.
    pub interval: Duration,
    /// How long rows are kept.
    pub retention: Duration,
}

/// The lower-case name of a check state, as recorded.
pub fn state_name(state: CheckState) -> &'static str {
    match state {
        CheckState::Pending => "pending",
        CheckState::Passing => "passing",
        CheckState::Warning => "warning",
        CheckState::Failing => "failing",
    }
}

/// The `checks` value of a history row.
pub fn checks_json(overall: OverallStatus, checks: &[CheckView]) -> serde_json::Value {
    let checks: serde_json::Map<String, serde_json::Value> = checks
        .iter()
        .map(|check| {
            (
                check.name.clone(),
                serde_json::json!({
                    "state": state_name(check.state),
                    "critical": check.critical,
                    "target": check.target,
                    "latency_ms": check.record.latency.map(|latency| latency.as_secs_f64() * 1000.0),
                    "consecutive_failures": check.record.consecutive_failures,
                    "last_error": check.record.last_error,
                }),
            )
        })
        .collect();
    serde_json::json!({ "overall": overall.as_str(), "checks": checks })
}

/// Where history rows go.
#[derive(Debug)]
pub enum HistorySink {
    /// Into `system_health` (and old rows are pruned).
    Database(Store),
    /// Up to the upstream, which writes them (a follower has no database).
    Upstream(UpstreamHistory),
}

impl HistorySink {
    /// Records one row; `Ok(pruned)`: rows pruned meanwhile.
    async fn record(
        &mut self,
        settings: &HistorySettings,
        row: &serde_json::Value,
    ) -> Result<u64, String> {
        match self {
            HistorySink::Database(store) => {
                store
                    .check_system_health(&settings.instance, row, &settings.environment)
                    .await
                    .map_err(|err| err.to_string())?;
                store
                    .prune_health_history(settings.retention)
                    .await
                    .map_err(|err| err.to_string())
            }
            HistorySink::Upstream(upstream) => upstream.record(settings, row).await.map(|()| 0),
        }
    }
}

/// A follower's history rows on their way to its upstream: sent as they
/// are made; while the upstream is away they wait, the newest
/// [`UpstreamHistory::KEPT`] at most, and go up together when it is back.
#[derive(Debug)]
pub struct UpstreamHistory {
    /// The connection to the upstream.
    channel: RetryingChannel,
    /// `Bearer <replication token>`.
    authorization: MetadataValue<Ascii>,
    /// Rows not yet recorded, oldest first.
    pending: VecDeque<pb::HealthRecording>,
}

impl UpstreamHistory {
    /// Rows kept while the upstream is away; older ones are dropped.
    pub const KEPT: usize = crate::relay::upstream::MAX_RECORDINGS;

    /// Rows for the upstream behind `channel`, sent with `token`; `None`
    /// when the token cannot be a header.
    pub fn new(channel: RetryingChannel, token: &Secret) -> Option<Self> {
        let authorization = format!("Bearer {}", token.expose()).parse().ok()?;
        Some(Self {
            channel,
            authorization,
            pending: VecDeque::new(),
        })
    }

    async fn record(
        &mut self,
        settings: &HistorySettings,
        row: &serde_json::Value,
    ) -> Result<(), String> {
        let Some(object) = row.as_object() else {
            return Err("a history row that is not an object".to_owned());
        };
        if self.pending.len() >= Self::KEPT {
            self.pending.pop_front();
            tracing::warn!(
                "the upstream has been away long: dropped the oldest waiting health history row"
            );
        }
        self.pending.push_back(pb::HealthRecording {
            instance: settings.instance.clone(),
            environment: settings.environment.clone(),
            checks: Some(to_pb_struct(object)),
        });
        let mut request = tonic::Request::new(pb::RecordHealthRequest {
            recordings: self.pending.iter().cloned().collect(),
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        ReplicationServiceClient::new(self.channel.clone())
            .record_health(request)
            .await
            .map_err(|status| {
                format!(
                    "the upstream did not take it ({}): {}",
                    code_name(status.code()),
                    status.message()
                )
            })?;
        self.pending.clear();
        Ok(())
    }
}

/// Records history until `stop` fires. The first row is written once the
/// first round of checks has finished (the first change of status).
pub async fn record(
    monitor: Arc<HealthMonitor>,
    mut sink: HistorySink,
    settings: HistorySettings,
    stop: CancellationToken,
) {
    let mut summary = monitor.subscribe();
    // The first round may have finished before this task subscribed: look
    // at the summary as it is now first.
    summary.mark_changed();
    let mut last_overall: Option<OverallStatus> = None;
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first row waits for a real status.
    ticks.tick().await;
    loop {
        let due = tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => monitor.startup_finished(),
            changed = summary.changed() => {
                if changed.is_err() {
                    return;
                }
                let (started, overall) = {
                    let summary = summary.borrow_and_update();
                    (summary.startup_finished, summary.overall)
                };
                let due = started && overall != last_overall;
                if due {
                    last_overall = overall;
                }
                due
            }
        };
        if !due {
            continue;
        }
        let checks = monitor.checks();
        let overall = monitor.overall_of(&checks);
        last_overall = Some(overall);
        let row = checks_json(overall, &checks);
        // Bounded, so a hung database cannot pile up recordings.
        let recording = tokio::time::timeout(
            settings.interval.max(Duration::from_secs(5)),
            sink.record(&settings, &row),
        );
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = recording => attempt,
        };
        match attempt {
            Ok(Ok(pruned)) if pruned > 0 => {
                tracing::debug!(pruned, "pruned old health history rows");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not record health history"),
            Err(_) => tracing::warn!("recording health history timed out"),
        }
    }
}
