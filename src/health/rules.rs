//! The pure rules of health: how one check's results become its state
//! (hysteresis and staleness), how the states become the overall status,
//! and which probe names serve. No I/O, no clock: callers pass the time.

use std::time::{Duration, Instant, SystemTime};

/// The state of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    /// No result yet.
    Pending,
    /// The last result passed.
    Passing,
    /// Failing, but not yet for enough consecutive results to count as
    /// failed.
    Warning,
    /// Failed: enough consecutive failures, a failing first result, or a
    /// result too old to trust.
    Failing,
}

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverallStatus {
    /// Every check passes and the data is fresh.
    Healthy,
    /// A non-critical check fails or warns, a check has no result yet, or
    /// the data is stale.
    Degraded,
    /// A critical check fails.
    Unhealthy,
}

impl OverallStatus {
    /// The lower-case name used in history rows and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// The outcome of one run of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered as expected.
    Passed,
    /// It did not; the message says why (already free of secrets).
    Failed(String),
}

/// Everything known about one check: its results so far, kept by the
/// monitor and read by reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    /// State after the last result (before staleness is applied).
    pub state: CheckState,
    /// Failures in a row (0 after a pass).
    pub consecutive_failures: u32,
    /// Duration of the last attempt.
    pub latency: Option<Duration>,
    /// Error of the last failed attempt; kept after a pass so people can
    /// see what went wrong last.
    pub last_error: Option<String>,
    /// Wall time of the last pass.
    pub last_success: Option<SystemTime>,
    /// Wall time of the last attempt.
    pub last_checked: Option<SystemTime>,
    /// Monotonic time of the last attempt (or of the start, before one).
    pub last_result_at: Instant,
}

impl CheckRecord {
    /// A check that has not run yet, created at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            state: CheckState::Pending,
            consecutive_failures: 0,
            latency: None,
            last_error: None,
            last_success: None,
            last_checked: None,
            last_result_at: now,
        }
    }

    /// Applies one result. Hysteresis: a pass counts at once; a failure
    /// counts as failed only after `threshold` in a row, except the first
    /// result after start (nothing better is known) and while already
    /// failed (it stays failed).
    pub fn record(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        threshold: u32,
        at: Instant,
        wall: SystemTime,
    ) {
        self.latency = Some(latency);
        self.last_checked = Some(wall);
        self.last_result_at = at;
        match outcome {
            Outcome::Passed => {
                self.state = CheckState::Passing;
                self.consecutive_failures = 0;
                self.last_success = Some(wall);
            }
            Outcome::Failed(message) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(message);
                self.state = match self.state {
                    CheckState::Pending | CheckState::Failing => CheckState::Failing,
                    _ if self.consecutive_failures >= threshold => CheckState::Failing,
                    _ => CheckState::Warning,
                };
            }
        }
    }

    /// The state at `now`: a result (or, before the first, the start) older
    /// than `stale_after` counts as failing, since the check has stopped
    /// reporting.
    pub fn state_at(&self, now: Instant, stale_after: Duration) -> CheckState {
        if now.saturating_duration_since(self.last_result_at) > stale_after {
            CheckState::Failing
        } else {
            self.state
        }
    }
}

/// Whether a check in `state` lets its probe name (`dep.<name>`) serve:
/// passing, or failing too briefly to count.
pub fn serves(state: CheckState) -> bool {
    matches!(state, CheckState::Passing | CheckState::Warning)
}

/// The overall status of `checks` (state, critical): any critical check
/// failing → UNHEALTHY; otherwise any check failing, warning or pending, or
/// stale data → DEGRADED; otherwise HEALTHY.
pub fn overall(checks: impl IntoIterator<Item = (CheckState, bool)>, stale: bool) -> OverallStatus {
    let mut status = if stale {
        OverallStatus::Degraded
    } else {
        OverallStatus::Healthy
    };
    for (state, critical) in checks {
        match state {
            CheckState::Failing if critical => return OverallStatus::Unhealthy,
            CheckState::Passing => {}
            CheckState::Failing | CheckState::Warning | CheckState::Pending => {
                status = OverallStatus::Degraded;
            }
        }
    }
    status
}

/// Whether `readiness` serves: start-up has finished, readyd is not
/// shutting down, and every critical check serves.
pub fn ready(
    startup_finished: bool,
    shutting_down: bool,
    checks: impl IntoIterator<Item = (CheckState, bool)>,
) -> bool {
    startup_finished
        && !shutting_down
        && checks
            .into_iter()
            .all(|(state, critical)| !critical || serves(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = CheckState> {
        prop_oneof![
            Just(CheckState::Pending),
            Just(CheckState::Passing),
            Just(CheckState::Warning),
            Just(CheckState::Failing),
        ]
    }

    /// The aggregation rule, written as DESIGN.md states it.
    fn by_the_book(checks: &[(CheckState, bool)], stale: bool) -> OverallStatus {
        if checks
            .iter()
            .any(|&(state, critical)| critical && state == CheckState::Failing)
        {
            OverallStatus::Unhealthy
        } else if stale
            || checks
                .iter()
                .any(|&(state, _)| state != CheckState::Passing)
        {
            OverallStatus::Degraded
        } else {
            OverallStatus::Healthy
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        // Seed property 1: the overall status follows the rule for any set
        // of results and criticality, in any order.
        #[test]
        fn overall_follows_the_rule(
            checks in prop::collection::vec((any_state(), any::<bool>()), 0..12),
            stale in any::<bool>(),
        ) {
            let status = overall(checks.iter().copied(), stale);
            prop_assert_eq!(status, by_the_book(&checks, stale));
            let mut reversed = checks.clone();
            reversed.reverse();
            prop_assert_eq!(overall(reversed, stale), status);
        }

        // Adding a passing check never changes the status; adding a failing
        // critical one always makes it UNHEALTHY.
        #[test]
        fn passing_checks_are_neutral_and_critical_failures_dominate(
            checks in prop::collection::vec((any_state(), any::<bool>()), 0..12),
            critical in any::<bool>(),
            stale in any::<bool>(),
        ) {
            let status = overall(checks.iter().copied(), stale);
            let with_pass = checks.iter().copied().chain([(CheckState::Passing, critical)]);
            prop_assert_eq!(overall(with_pass, stale), status);
            let with_failure = checks.iter().copied().chain([(CheckState::Failing, true)]);
            prop_assert_eq!(overall(with_failure, stale), OverallStatus::Unhealthy);
        }

        // Readiness: started, not shutting down, and no critical check failing
        // or pending; non-critical checks never matter.
        #[test]
        fn readiness_depends_only_on_critical_checks(
            checks in prop::collection::vec((any_state(), any::<bool>()), 0..12),
            started in any::<bool>(),
            shutting_down in any::<bool>(),
        ) {
            let expected = started
                && !shutting_down
                && checks.iter().all(|&(state, critical)| {
                    !critical || matches!(state, CheckState::Passing | CheckState::Warning)
                });
            prop_assert_eq!(ready(started, shutting_down, checks.iter().copied()), expected);
            let only_critical = checks.iter().copied().filter(|&(_, critical)| critical);
            prop_assert_eq!(ready(started, shutting_down, only_critical), expected);
        }

        // Hysteresis: after any sequence of results the state is what the
        // run of trailing failures says.
        #[test]
        fn hysteresis_counts_trailing_failures(
            results in prop::collection::vec(any::<bool>(), 1..40),
            threshold in 1u32..6,
        ) {
            let start = Instant::now();
            let mut record = CheckRecord::new(start);
            for (i, &passed) in results.iter().enumerate() {
                let outcome = if passed { Outcome::Passed } else { Outcome::Failed(format!("failure {i}")) };
                record.record(outcome, Duration::from_millis(1), threshold, start, SystemTime::now());
            }
            let trailing = results.iter().rev().take_while(|&&passed| !passed).count();
            prop_assert_eq!(record.consecutive_failures as usize, trailing);
            let all_failed = trailing == results.len();
            let expected = if trailing == 0 {
                CheckState::Passing
            } else if all_failed || trailing >= threshold as usize {
                // The first result counts at once, and a failed check stays
                // failed until it passes.
                CheckState::Failing
            } else {
                CheckState::Warning
            };
            prop_assert_eq!(record.state, expected);
            if trailing > 0 {
                let expected_error = format!("failure {}", results.len() - 1);
                prop_assert_eq!(record.last_error.as_deref(), Some(expected_error.as_str()));
            }
            prop_assert_eq!(record.last_success.is_some(), results.contains(&true));
        }

        // A result older than the staleness limit counts as failing, a
        // fresher one as itself.
        #[test]
        fn old_results_count_as_failing(
            passed in any::<bool>(),
            age_ms in 0u64..10_000,
            limit_ms in 1u64..5_000,
        ) {
            let start = Instant::now();
            let mut record = CheckRecord::new(start);
            let outcome = if passed { Outcome::Passed } else { Outcome::Failed("x".into()) };
            record.record(outcome, Duration::ZERO, 3, start, SystemTime::now());
            let now = start + Duration::from_millis(age_ms);
            let state = record.state_at(now, Duration::from_millis(limit_ms));
            if age_ms > limit_ms {
                prop_assert_eq!(state, CheckState::Failing);
            } else {
                prop_assert_eq!(state, record.state);
            }
        }
    }

    #[test]
    fn a_check_without_results_is_pending_until_it_is_stale() {
        let start = Instant::now();
        let record = CheckRecord::new(start);
        let limit = Duration::from_secs(1);
        assert_eq!(record.state_at(start, limit), CheckState::Pending);
        assert_eq!(
            record.state_at(start + Duration::from_secs(2), limit),
            CheckState::Failing
        );
    }
}
