//! `/livez`, `/readyz` and `/startupz`: the gRPC probes' states as plain
//! HTTP, for whatever cannot speak gRPC (Docker `HEALTHCHECK`, load
//! balancers, ECS, Nomad, Consul). The answer has the form of the
//! Kubernetes API server's: `200 ok`, or `503` with one `[-]` line per
//! failing check and a last line saying the probe failed; `?verbose`
//! lists every line. No token: like the gRPC probes they carry no data,
//! and a failing check's error is withheld (it is in `/api/health`, which
//! the read token guards).

use crate::health::monitor::CheckView;
use crate::health::probes::{LIVENESS, READINESS, STARTUP};
use crate::health::rules::{self, CheckState};

/// One of the three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/livez`: the process answers.
    Live,
    /// `/readyz`: the pod may receive traffic.
    Ready,
    /// `/startupz`: every check has a first result.
    Started,
}

impl Probe {
    /// Its path without the slash, as its last line names it.
    pub fn path(self) -> &'static str {
        match self {
            Probe::Live => "livez",
            Probe::Ready => "readyz",
            Probe::Started => "startupz",
        }
    }

    /// The grpc.health.v1 name whose state it answers with.
    pub fn service(self) -> &'static str {
        match self {
            Probe::Live => LIVENESS,
            Probe::Ready => READINESS,
            Probe::Started => STARTUP,
        }
    }
}

/// One line of an answer: `[+]name detail` or `[-]name detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What it is about (a check's name, `startup`, `shutdown`).
    pub name: String,
    /// Whether it lets the probe pass.
    pub passes: bool,
    /// What it found.
    pub detail: &'static str,
}

/// What the answer of `probe` lists, from the checks as they are now.
/// The lines explain the state; the state itself is the gRPC probe's
/// (see [`answer`]), so the two can never disagree.
pub fn lines(
    probe: Probe,
    checks: &[CheckView],
    startup_finished: bool,
    leaving: bool,
) -> Vec<Line> {
    let line = |name: &str, passes: bool, detail: &'static str| Line {
        name: name.to_owned(),
        passes,
        detail,
    };
    match probe {
        Probe::Live => vec![line("ping", true, "ok")],
        Probe::Started => checks
            .iter()
            .map(|check| match check.state {
                CheckState::Pending => line(&check.name, false, "no result yet"),
                _ => line(&check.name, true, "ok"),
            })
            .collect(),
        Probe::Ready => {
            let mut lines = vec![
                line(
                    "startup",
                    startup_finished,
                    if startup_finished {
                        "ok"
                    } else {
                        "not finished"
                    },
                ),
                line(
                    "shutdown",
                    !leaving,
                    if leaving { "shutting down" } else { "ok" },
                ),
            ];
            lines.extend(checks.iter().map(|check| {
                let passes = !check.critical || rules::serves(check.state);
                let detail = match (check.state, check.critical) {
                    (CheckState::Passing, _) => "ok",
                    (CheckState::Warning, _) => "ok (warning)",
                    (CheckState::Pending, true) => "no result yet",
                    (CheckState::Pending, false) => "no result yet (not critical)",
                    (CheckState::Failing, true) => "failed: reason withheld",
                    (CheckState::Failing, false) => "failing (not critical)",
                };
                line(&check.name, passes, detail)
            }));
            lines
        }
    }
}

/// The status code and body of `probe`'s answer: `serving` is the gRPC
/// probe's state, `lines` what [`lines`] found.
pub fn answer(probe: Probe, serving: bool, lines: &[Line], verbose: bool) -> (u16, String) {
    if serving && !verbose {
        return (200, "ok\n".to_owned());
    }
    let mut body = String::new();
    for line in lines.iter().filter(|line| verbose || !line.passes) {
        let mark = if line.passes { '+' } else { '-' };
        body.push_str(&format!("[{mark}]{} {}\n", line.name, line.detail));
    }
    if serving {
        body.push_str(&format!("{} check passed\n", probe.path()));
        (200, body)
    } else {
        if lines.iter().all(|line| line.passes) {
            // Shutting down forces every probe off before any line says so.
            body.push_str("[-]shutdown shutting down\n");
        }
        body.push_str(&format!("{} check failed\n", probe.path()));
        (503, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::rules::CheckRecord;
    use proptest::prelude::*;

    fn check(name: &str, state: CheckState, critical: bool) -> CheckView {
        CheckView {
            name: name.to_owned(),
            target: "tcp://db.internal:5432".to_owned(),
            critical,
            state,
            record: CheckRecord::new(std::time::Instant::now()),
        }
    }

    #[test]
    fn a_failing_critical_check_is_named_and_its_error_withheld() {
        let checks = [
            check("database", CheckState::Passing, true),
            check("payments", CheckState::Failing, true),
            check("search", CheckState::Failing, false),
        ];
        let lines = lines(Probe::Ready, &checks, true, false);
        let (code, body) = answer(Probe::Ready, false, &lines, false);
        assert_eq!(code, 503);
        assert_eq!(
            body,
            "[-]payments failed: reason withheld\nreadyz check failed\n"
        );
        let (_, verbose) = answer(Probe::Ready, false, &lines, true);
        assert_eq!(
            verbose,
            "[+]startup ok\n[+]shutdown ok\n[+]database ok\n[-]payments failed: reason withheld\n\
             [+]search failing (not critical)\nreadyz check failed\n"
        );
        assert!(!verbose.contains("db.internal"));
    }

    #[test]
    fn serving_says_ok_and_verbose_lists_everything() {
        let checks = [check("database", CheckState::Passing, true)];
        let lines = lines(Probe::Ready, &checks, true, false);
        assert_eq!(
            answer(Probe::Ready, true, &lines, false),
            (200, "ok\n".to_owned())
        );
        assert_eq!(
            answer(Probe::Ready, true, &lines, true),
            (
                200,
                "[+]startup ok\n[+]shutdown ok\n[+]database ok\nreadyz check passed\n".to_owned()
            )
        );
        let live = super::lines(Probe::Live, &checks, false, false);
        assert_eq!(
            answer(Probe::Live, true, &live, true).1,
            "[+]ping ok\nlivez check passed\n"
        );
    }

    #[test]
    fn a_probe_forced_off_by_shutdown_says_so() {
        let live = lines(Probe::Live, &[], true, true);
        assert_eq!(
            answer(Probe::Live, false, &live, false),
            (
                503,
                "[-]shutdown shutting down\nlivez check failed\n".to_owned()
            )
        );
    }

    fn any_state() -> impl Strategy<Value = CheckState> {
        prop_oneof![
            Just(CheckState::Pending),
            Just(CheckState::Passing),
            Just(CheckState::Warning),
            Just(CheckState::Failing),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The code is the probe's state; a serving terse answer is `ok`;
        /// a terse failure lists exactly the failing lines; verbose lists
        /// every line once; for `/readyz` computed from the same checks,
        /// the lines fail exactly when readiness does.
        #[test]
        fn answers_follow_the_probe_state_and_the_lines(
            states in prop::collection::vec((any_state(), any::<bool>()), 0..8),
            startup_finished in any::<bool>(),
            leaving in any::<bool>(),
            probe in prop_oneof![Just(Probe::Live), Just(Probe::Ready), Just(Probe::Started)],
            serving in any::<bool>(),
        ) {
            let checks: Vec<CheckView> = states
                .iter()
                .enumerate()
                .map(|(i, (state, critical))| check(&format!("check{i}"), *state, *critical))
                .collect();
            let lines = lines(probe, &checks, startup_finished, leaving);
            let (code, terse) = answer(probe, serving, &lines, false);
            let (verbose_code, verbose) = answer(probe, serving, &lines, true);
            prop_assert_eq!(code, if serving { 200 } else { 503 });
            prop_assert_eq!(verbose_code, code);
            if serving {
                prop_assert_eq!(terse.as_str(), "ok\n");
            } else {
                let minus = terse.lines().filter(|l| l.starts_with("[-]")).count();
                let failing = lines.iter().filter(|l| !l.passes).count();
                prop_assert_eq!(minus, failing.max(1));
                prop_assert!(!terse.contains("[+]"));
            }
            for line in &lines {
                let mark = if line.passes { "[+]" } else { "[-]" };
                let shown = format!("{mark}{} {}", line.name, line.detail);
                prop_assert_eq!(verbose.lines().filter(|l| *l == shown).count(), 1);
            }
            if probe == Probe::Ready {
                let ready = rules::ready(
                    startup_finished,
                    leaving,
                    checks.iter().map(|c| (c.state, c.critical)),
                );
                prop_assert_eq!(lines.iter().all(|l| l.passes), ready);
            }
        }
    }
}
