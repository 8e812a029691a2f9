//! readyd.v1.HealthService: the health report (built from memory, so it
//! never fails), its stream, the recorded history, and a direct database
//! check.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::api::Database;
use crate::api::convert::{from_timestamp, to_duration, to_pb_struct, to_timestamp};
use crate::api::error::ApiError;
use crate::api::invalid;
use crate::api::pb::readyd::v1::health_service_server::HealthService;
use crate::api::pb::readyd::v1::{
    CheckDatabaseRequest, CheckDatabaseResponse, CheckResult, CheckState as PbCheckState,
    GetHealthRequest, HealthRecord, HealthReport, HealthStatus, ListHealthHistoryRequest,
    ListHealthHistoryResponse, WatchHealthRequest,
};
use crate::api::streams::StreamGate;
use crate::config;
use crate::health::monitor::{CheckView, HealthMonitor};
use crate::health::rules::{CheckState, OverallStatus};
use crate::state::State;
use crate::store::system_health::HealthRow;

/// ListHealthHistory's row count when the request names none.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// ListHealthHistory's largest row count.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// How long one CheckDatabase result answers every caller. The check runs
/// `check_system_health()` (a size computation and an INSERT): any reader
/// may call it, so callers share one run per interval instead of each
/// making the database work.
pub const CHECK_DATABASE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a failed CheckDatabase answers every caller: shorter, so a
/// database that is back shows soon.
pub const CHECK_DATABASE_FAILURE_INTERVAL: Duration = Duration::from_secs(1);

/// The last CheckDatabase answer, shared by every caller.
#[derive(Debug, Default)]
struct DatabaseCheck {
    /// When the answer was computed, and the answer. Held across the query:
    /// callers that arrive while it runs wait for its result instead of
    /// running their own (one query in flight at most).
    last: tokio::sync::Mutex<Option<(Instant, Result<CheckDatabaseResponse, Status>)>>,
}

/// The HealthService handlers.
#[derive(Debug, Clone)]
pub struct HealthApi {
    /// readyd's database (history and CheckDatabase only).
    store: Database,
    /// The checks.
    monitor: Arc<HealthMonitor>,
    /// Flags and configuration (app version, maintenance mode).
    state: Arc<State>,
    /// This instance's name.
    instance: String,
    /// This instance's environment.
    environment: String,
    /// Admits WatchHealth streams and ends them at shutdown.
    streams: Arc<StreamGate>,
    /// The shared CheckDatabase answer.
    database_check: Arc<DatabaseCheck>,
}

impl HealthApi {
    /// Handlers over `monitor`, `state` and `store`, for this instance.
    pub fn new(
        store: Database,
        monitor: Arc<HealthMonitor>,
        state: Arc<State>,
        instance: String,
        environment: String,
        streams: Arc<StreamGate>,
    ) -> Self {
        Self {
            store,
            monitor,
            state,
            instance,
            environment,
            streams,
            database_check: Arc::default(),
        }
    }

    /// Runs `check_system_health()` now.
    async fn check_database_now(&self) -> Result<CheckDatabaseResponse, Status> {
        let started = Instant::now();
        let health = self
            .store
            .get()?
            .check_system_health(&self.instance, &serde_json::json!({}), &self.environment)
            .await
            .map_err(ApiError::from)?;
        Ok(CheckDatabaseResponse {
            status: health_status(&health.status).into(),
            database_size_bytes: health.database_size_bytes,
            active_connections: health.active_connections,
            max_connections: health.max_connections,
            connection_utilization: health.connection_utilization,
            error_count: health.error_count,
            response_time_ms: health.response_time_ms,
            checked_at: Some(to_timestamp(health.checked_at)),
            record_id: health.id,
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
            cached: false,
        })
    }

    /// The report as of now, from memory only.
    pub(crate) fn report(&self) -> HealthReport {
        let checks = self.monitor.checks();
        let overall = self.monitor.overall_of(&checks);
        let snapshot = self.state.snapshot();
        let maintenance = config::maintenance(&snapshot.configs, &self.environment);
        HealthReport {
            status: pb_status(overall).into(),
            readyd_version: env!("CARGO_PKG_VERSION").to_owned(),
            app_version: config::app_version(&snapshot.configs, &self.environment),
            environment: self.environment.clone(),
            instance: self.instance.clone(),
            timestamp: Some(Timestamp::from(SystemTime::now())),
            uptime: Some(to_duration(self.monitor.uptime())),
            maintenance_mode: maintenance.enabled,
            maintenance_message: maintenance.message,
            checks: checks.iter().map(check_result).collect(),
            stale_for: self.monitor.stale_for().map(to_duration),
        }
    }
}

fn pb_status(status: OverallStatus) -> HealthStatus {
    match status {
        OverallStatus::Healthy => HealthStatus::Healthy,
        OverallStatus::Degraded => HealthStatus::Degraded,
        OverallStatus::Unhealthy => HealthStatus::Unhealthy,
    }
}

fn check_result(check: &CheckView) -> CheckResult {
    CheckResult {
        name: check.name.clone(),
        target: check.target.clone(),
        critical: check.critical,
        state: match check.state {
            CheckState::Pending => PbCheckState::Pending,
            CheckState::Passing => PbCheckState::Passing,
            CheckState::Warning => PbCheckState::Warning,
            CheckState::Failing => PbCheckState::Failing,
        }
        .into(),
        latency: check.record.latency.map(to_duration),
        last_error: check.record.last_error.clone().unwrap_or_default(),
        consecutive_failures: check.record.consecutive_failures,
        last_success: check.record.last_success.map(Timestamp::from),
        last_checked: check.record.last_checked.map(Timestamp::from),
    }
}

/// What WatchHealth compares to decide whether the report changed: the
/// report without the fields that change on every run (time, uptime,
/// latencies, times of the last run, the failure count of a check that has
/// already failed).
fn watched_part(report: &HealthReport) -> HealthReport {
    HealthReport {
        timestamp: None,
        uptime: None,
        stale_for: report.stale_for.map(|_| prost_types::Duration::default()),
        checks: report
            .checks
            .iter()
            .map(|check| CheckResult {
                latency: None,
                last_checked: None,
                last_success: None,
                // A failed check that keeps failing is no news; a warning
                // that counts up towards failing is.
                consecutive_failures: if check.state() == PbCheckState::Failing {
                    0
                } else {
                    check.consecutive_failures
                },
                ..check.clone()
            })
            .collect(),
        ..report.clone()
    }
}

fn health_status(raw: &str) -> HealthStatus {
    match raw {
        "healthy" => HealthStatus::Healthy,
        "degraded" => HealthStatus::Degraded,
        "unhealthy" => HealthStatus::Unhealthy,
        _ => HealthStatus::Unspecified,
    }
}

fn health_record(row: HealthRow) -> HealthRecord {
    HealthRecord {
        id: row.id,
        recorded_at: Some(to_timestamp(row.recorded_at)),
        instance: row.instance.unwrap_or_default(),
        status: health_status(&row.status).into(),
        database_size_bytes: row.database_size_bytes,
        active_connections: row.active_connections,
        max_connections: row.max_connections,
        error_count: row.error_count,
        response_time_ms: row.response_time_ms,
        checks: match &row.checks {
            serde_json::Value::Object(map) => Some(to_pb_struct(map)),
            _ => None,
        },
        version: row.version.unwrap_or_default(),
    }
}

/// Reports a stream holds for a slow client. One: a report is built only
/// once the client has room for it, from the state as it is then, so a
/// client that reads slowly skips the reports it had no room for (it gets
/// the latest) and holds one report, not a queue of them.
const STREAM_BUFFER: usize = 1;

#[tonic::async_trait]
impl HealthService for HealthApi {
    async fn get_health(
        &self,
        _request: Request<GetHealthRequest>,
    ) -> Result<Response<HealthReport>, Status> {
        Ok(Response::new(self.report()))
    }

    async fn watch_health(
        &self,
        _request: Request<WatchHealthRequest>,
    ) -> Result<Response<BoxStream<HealthReport>>, Status> {
        // Subscribe before the first report, so no change slips between.
        let mut summary = self.monitor.subscribe();
        let mut versions = self.state.watch_version();
        let ticket = self.streams.admit("health")?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last: Option<HealthReport> = None;
            loop {
                // Room first, then the report as it is by then.
                let room = tokio::select! {
                    () = ticket.ended() => return,
                    room = tx.reserve() => match room {
                        Ok(room) => room,
                        Err(_) => return, // the watcher went away
                    },
                };
                summary.borrow_and_update();
                versions.borrow_and_update();
                let report = api.report();
                let watched = watched_part(&report);
                if last.as_ref() != Some(&watched) {
                    last = Some(watched);
                    room.send(Ok(report));
                } else {
                    drop(room);
                }
                tokio::select! {
                    () = ticket.ended() => return,
                    () = tx.closed() => return,
                    changed = summary.changed() => if changed.is_err() { return },
                    changed = versions.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_health_history(
        &self,
        request: Request<ListHealthHistoryRequest>,
    ) -> Result<Response<ListHealthHistoryResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n if n <= MAX_HISTORY_LIMIT => n,
            n => {
                return Err(invalid(
                    "limit",
                    format!("{n} is over the limit of {MAX_HISTORY_LIMIT}"),
                )
                .into());
            }
        };
        let since = request
            .since
            .as_ref()
            .map(|time| from_timestamp(time).ok_or_else(|| invalid("since", "not a valid time")))
            .transpose()?;
        let until = request
            .until
            .as_ref()
            .map(|time| from_timestamp(time).ok_or_else(|| invalid("until", "not a valid time")))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(invalid("until", "is before since").into());
        }
        let rows = self
            .store
            .get()?
            .health_history(since, until, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListHealthHistoryResponse {
            records: rows.into_iter().map(health_record).collect(),
        }))
    }

    async fn check_database(
        &self,
        _request: Request<CheckDatabaseRequest>,
    ) -> Result<Response<CheckDatabaseResponse>, Status> {
        // The lock makes this a single flight: one query at a time, and
        // every caller within the interval gets its answer.
        let mut last = self.database_check.last.lock().await;
        if let Some((at, answer)) = last.as_ref() {
            let fresh_for = if answer.is_ok() {
                CHECK_DATABASE_INTERVAL
            } else {
                CHECK_DATABASE_FAILURE_INTERVAL
            };
            if at.elapsed() < fresh_for {
                return answer.clone().map(|response| {
                    Response::new(CheckDatabaseResponse {
                        cached: true,
                        ..response
                    })
                });
            }
        }
        let answer = self.check_database_now().await;
        *last = Some((Instant::now(), answer.clone()));
        answer.map(Response::new)
    }
}
