//! The background monitor: runs every check on its own interval and
//! timeout, keeps each check's record, and keeps the probe states
//! (`dep.<name>`, `readiness`, `startup`) in step with the records.
//!
//! Nothing here runs on a request path: probes and reports read what the
//! monitor last wrote, so a hung dependency costs a probe nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use metrics::gauge;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::probes::{READINESS, STARTUP};
use super::rules::{self, CheckRecord, CheckState, Outcome, OverallStatus};
use super::runners::Runner;
use super::spec::{CheckSpec, Target};
use super::{Probes, ServingStatus};
use crate::state::Freshness;
use crate::telemetry::{CHECK_FAILURES, CHECK_LATENCY, CHECK_UP, HEALTH_STATUS, SNAPSHOT_STALE};

/// How often staleness is re-evaluated between results.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Longest error message kept per check: drivers sometimes quote a whole
/// response body.
const MAX_ERROR_LEN: usize = 512;

/// One check: what it is, how it runs, what it found.
#[derive(Debug)]
struct Check {
    spec: CheckSpec,
    probe_name: String,
    runner: Runner,
    record: Mutex<CheckRecord>,
}

impl Check {
    fn record(&self) -> MutexGuard<'_, CheckRecord> {
        // A poisoned lock still holds a valid record: every update is a
        // single assignment sequence that cannot panic half-way.
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One check as a report shows it.
#[derive(Debug, Clone)]
pub struct CheckView {
    /// The check's name.
    pub name: String,
    /// Its URL without secrets.
    pub target: String,
    /// Whether it is critical now.
    pub critical: bool,
    /// Its state now (staleness applied).
    pub state: CheckState,
    /// What it found so far.
    pub record: CheckRecord,
}

/// What the report's subscribers need to know changed: the overall status
/// and each check's state, criticality, failure count and error. Latency
/// and times change on every run and are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Whether the first round of checks has finished: part of the
    /// summary so that finishing it wakes subscribers (the history
    /// recorder writes its first row then), even when no state changed.
    pub startup_finished: bool,
    /// Overall status (None before the first evaluation).
    pub overall: Option<OverallStatus>,
    /// Per check: state, critical, consecutive failures, last error.
    pub checks: Vec<(CheckState, bool, u32, Option<String>)>,
}

/// Runs the checks and answers for them.
#[derive(Debug)]
pub struct HealthMonitor {
    /// readyd's own database check first, then the declared ones.
    checks: Vec<Check>,
    /// Where probe states are published.
    probes: Arc<Probes>,
    /// The database check is critical until the snapshot has loaded: with
    /// data in memory, readyd can serve through a database outage.
    database_critical: AtomicBool,
    /// Checks still waiting for their first result.
    first_round_left: AtomicUsize,
    /// Set once every check has a first result.
    startup_finished: AtomicBool,
    /// Whether the served data is current (stale data degrades health).
    freshness: Arc<Freshness>,
    /// Changes of the summary, for WatchHealth and the history recorder.
    summary: watch::Sender<Summary>,
    /// When readyd started.
    started: Instant,
    /// Serialises refreshes, so an older view never overwrites a newer one.
    refreshing: Mutex<()>,
}

impl HealthMonitor {
    /// A monitor of `database` (readyd's own, [`Target::Database`]) and
    /// `declared`, publishing to `probes`. Every probe name
    /// is registered at once, NOT_SERVING until its first result.
    pub fn new(
        database: (CheckSpec, Runner),
        declared: Vec<(CheckSpec, Runner)>,
        probes: Arc<Probes>,
        freshness: Arc<Freshness>,
    ) -> Arc<Self> {
        let now = Instant::now();
        let checks: Vec<Check> = std::iter::once(database)
            .chain(declared)
            .map(|(spec, runner)| Check {
                probe_name: format!("dep.{}", spec.name),
                spec,
                runner,
                record: Mutex::new(CheckRecord::new(now)),
            })
            .collect();
        for check in &checks {
            probes.set(&check.probe_name, ServingStatus::NotServing);
        }
        let monitor = Self {
            first_round_left: AtomicUsize::new(checks.len()),
            checks,
            probes,
            database_critical: AtomicBool::new(true),
            startup_finished: AtomicBool::new(false),
            freshness,
            summary: watch::Sender::new(Summary::default()),
            started: now,
            refreshing: Mutex::new(()),
        };
        Arc::new(monitor)
    }

    /// Starts every check and the staleness sweep; they stop when `stop`
    /// fires. The returned set holds the tasks.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for index in 0..self.checks.len() {
            tasks.spawn(Arc::clone(self).run_check(index, stop.clone()));
        }
        tasks.spawn(Arc::clone(self).sweep(stop));
        tasks
    }

    /// The snapshot is in memory: from now on a database outage degrades
    /// readyd instead of making it unready.
    pub fn snapshot_loaded(&self) {
        self.database_critical.store(false, Ordering::SeqCst);
        self.refresh();
    }

    /// How long the served data has been stale; None when current.
    pub fn stale_for(&self) -> Option<Duration> {
        self.freshness.stale_for()
    }

    /// Whether every check has a first result.
    pub fn startup_finished(&self) -> bool {
        self.startup_finished.load(Ordering::SeqCst)
    }

    /// Time since the monitor was created (readyd's uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every check as of now, readyd's database first.
    pub fn checks(&self) -> Vec<CheckView> {
        let now = Instant::now();
        self.checks
            .iter()
            .map(|check| {
                let record = check.record().clone();
                CheckView {
                    name: check.spec.name.clone(),
                    target: check.spec.display.clone(),
                    critical: self.is_critical(check),
                    state: record.state_at(now, check.spec.stale_after()),
                    record,
                }
            })
            .collect()
    }

    /// The overall status of `checks`.
    pub fn overall_of(&self, checks: &[CheckView]) -> OverallStatus {
        rules::overall(
            checks.iter().map(|check| (check.state, check.critical)),
            self.stale_for().is_some(),
        )
    }

    /// A receiver that wakes when the summary changes.
    pub fn subscribe(&self) -> watch::Receiver<Summary> {
        self.summary.subscribe()
    }

    fn is_critical(&self, check: &Check) -> bool {
        if matches!(check.spec.target, Target::Database | Target::Upstream) {
            check.spec.critical && self.database_critical.load(Ordering::SeqCst)
        } else {
            check.spec.critical
        }
    }

    /// Runs one check until `stop` fires.
    async fn run_check(self: Arc<Self>, index: usize, stop: CancellationToken) {
        let Some(check) = self.checks.get(index) else {
            return;
        };
        let mut first = true;
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                attempt = tokio::time::timeout(check.spec.timeout, check.runner.run()) => attempt,
            };
            let latency = started.elapsed();
            let outcome = match attempt {
                Ok(Ok(())) => Outcome::Passed,
                Ok(Err(message)) => Outcome::Failed(shorten(check.spec.redactor.scrub(&message))),
                Err(_) => Outcome::Failed(format!(
                    "no answer within {}",
                    humantime::format_duration(check.spec.timeout)
                )),
            };
            self.apply(check, outcome, latency);
            if first {
                first = false;
                if self.first_round_left.fetch_sub(1, Ordering::SeqCst) == 1 {
                    self.startup_finished.store(true, Ordering::SeqCst);
                    tracing::info!(checks = self.checks.len(), "first round of checks finished");
                    self.refresh();
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(check.spec.interval) => {}
            }
        }
    }

    /// Records one result, logs a change of state, and refreshes the
    /// probes.
    fn apply(&self, check: &Check, outcome: Outcome, latency: Duration) {
        let (before, after, error, failures) = {
            let mut record = check.record();
            let before = record.state;
            record.record(
                outcome,
                latency,
                check.spec.failures,
                Instant::now(),
                SystemTime::now(),
            );
            (
                before,
                record.state,
                record.last_error.clone(),
                record.consecutive_failures,
            )
        };
        let name = check.spec.name.clone();
        gauge!(CHECK_LATENCY, "check" => name.clone()).set(latency.as_secs_f64());
        gauge!(CHECK_FAILURES, "check" => name).set(f64::from(failures));
        if before != after
            && after == CheckState::Failing
            && matches!(check.spec.target, Target::Database | Target::Upstream)
        {
            self.freshness.doubt_listener();
        }
        if before != after {
            match after {
                CheckState::Passing => tracing::info!(
                    check = %check.spec.name,
                    latency_ms = latency.as_secs_f64() * 1000.0,
                    "check passing"
                ),
                CheckState::Warning => tracing::warn!(
                    check = %check.spec.name,
                    error = error.as_deref().unwrap_or(""),
                    "check failed; not yet counted as failing"
                ),
                CheckState::Failing => tracing::warn!(
                    check = %check.spec.name,
                    critical = self.is_critical(check),
                    error = error.as_deref().unwrap_or(""),
                    "check failing"
                ),
                CheckState::Pending => {}
            }
        }
        self.refresh();
    }

    /// Re-evaluates staleness now and then, so a check that stopped
    /// reporting turns failing even without a new result.
    async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.refresh(),
            }
        }
    }

    /// Brings the probe states and the summary in line with the records.
    fn refresh(&self) {
        let _serialised = self
            .refreshing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let checks = self.checks();
        for (check, view) in self.checks.iter().zip(&checks) {
            let serves = rules::serves(view.state);
            self.probes.set(&check.probe_name, serving(serves));
            gauge!(CHECK_UP, "check" => check.spec.name.clone()).set(if serves {
                1.0
            } else {
                0.0
            });
        }
        let startup_finished = self.startup_finished();
        if startup_finished {
            self.probes.set(STARTUP, ServingStatus::Serving);
        }
        let ready = rules::ready(
            startup_finished,
            self.probes.is_leaving(),
            checks.iter().map(|check| (check.state, check.critical)),
        );
        self.probes.set(READINESS, serving(ready));
        gauge!(SNAPSHOT_STALE).set(self.stale_for().map_or(0.0, |age| age.as_secs_f64()));
        let summary = Summary {
            startup_finished,
            overall: Some(self.overall_of(&checks)),
            checks: checks
                .iter()
                .map(|check| {
                    (
                        check.state,
                        check.critical,
                        check.record.consecutive_failures,
                        check.record.last_error.clone(),
                    )
                })
                .collect(),
        };
        let overall = summary.overall;
        self.summary.send_if_modified(|current| {
            if *current == summary {
                return false;
            }
            for status in [
                OverallStatus::Healthy,
                OverallStatus::Degraded,
                OverallStatus::Unhealthy,
            ] {
                gauge!(HEALTH_STATUS, "status" => status.as_str())
                    .set(if overall == Some(status) { 1.0 } else { 0.0 });
            }
            *current = summary;
            true
        });
    }
}

fn serving(serves: bool) -> ServingStatus {
    if serves {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// `message` cut to [`MAX_ERROR_LEN`] bytes on a character boundary.
fn shorten(mut message: String) -> String {
    if message.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}
