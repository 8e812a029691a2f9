//! The load generator's smoke run: every scenario of `benches/loadgen` with
//! tiny counts against the debug binary, so the harness cannot rot. Figures
//! are not judged here, only that each scenario produced sane ones, and one
//! real property: reads never touch the database.

mod support;

#[allow(dead_code)]
#[path = "../benches/loadgen/baseline.rs"]
mod baseline;
#[allow(dead_code)]
#[path = "../benches/loadgen/http1.rs"]
mod http1;
#[allow(dead_code)]
#[path = "../benches/loadgen/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../benches/loadgen/ofrep.rs"]
mod ofrep;
#[allow(dead_code)]
#[path = "../benches/loadgen/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../benches/loadgen/relay.rs"]
mod relay;
#[allow(dead_code)]
#[path = "../benches/loadgen/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../benches/loadgen/scenarios.rs"]
mod scenarios;

use process::Pinning;
use scenarios::{BaselineMode, Bench, Plan, Scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_reads_never_touch_the_database() {
    let bench = Bench {
        readyd: support::daemon::binary(),
        // Pinning would move the whole test binary onto one core.
        pinning: Pinning::detect(false),
        baseline: BaselineMode::InProcess,
        plan: Plan::smoke(),
    };
    let all = <Scenario as clap::ValueEnum>::value_variants();
    let results = bench.run(all).await;
    report::machine(&bench);
    report::print(&bench, &results);

    for (name, run) in [
        ("baseline", &results.baseline),
        ("baseline after", &results.baseline_after),
        ("EvaluateFlag", &results.evaluate),
        ("EvaluateFlags", &results.batch),
    ] {
        let run = &run.as_ref().expect(name).load;
        assert!(run.requests > 0, "{name}: no request answered");
        assert_eq!(run.errors, 0, "{name}: {:?}", run.first_error);
    }
    for (name, run) in [
        ("baseline probes", &results.baseline_sequential),
        ("readiness probes", &results.probe),
    ] {
        let run = run.as_ref().expect(name);
        assert!(run.requests > 0, "{name}: no probe answered");
        assert_eq!(run.errors, 0, "{name}: {:?}", run.first_error);
    }

    let propagation = results.propagation.expect("propagation");
    assert_eq!(
        propagation.received,
        (propagation.subscribers * propagation.updates) as u64,
        "every subscriber receives every update"
    );

    let memory = results.memory.expect("memory");
    assert!(memory.idle_bytes.is_some_and(|b| b > 0), "idle RSS read");
    assert!(
        memory.watching_bytes.is_some_and(|b| b > 0),
        "RSS with streams read"
    );

    assert_eq!(results.starts.len(), bench.plan.starts, "every start timed");
    assert_eq!(
        results.starts_plain.len(),
        bench.plan.starts,
        "every start timed"
    );

    let relay = results.relay.expect("relay");
    let plan = &bench.plan.relay;
    assert_eq!(
        relay.followers, plan.followers,
        "every real follower started"
    );
    assert_eq!(relay.follower_idle_bytes.len(), plan.followers);
    // No follower, the real followers, then each fleet size.
    assert_eq!(relay.sessions.len(), 2 + plan.fleets.len());
    for sessions in &relay.sessions {
        assert!(
            (1..=relay::UPSTREAM_POOL + 1).contains(&sessions.readyd),
            "only the upstream's pool and listener, with {} followers: {} sessions",
            sessions.followers,
            sessions.readyd
        );
    }
    assert_eq!(relay.fleets.len(), plan.fleets.len());
    for fleet in &relay.fleets {
        assert!(fleet.rss_after.is_some(), "the upstream's RSS read");
        for (name, deliveries) in [
            ("upstream subscribers", &fleet.direct),
            ("follower subscribers", &fleet.subscribers),
            ("lightweight followers", &fleet.lightweight_deliveries),
        ] {
            assert!(deliveries.streams > 0, "{name}: no stream");
            assert_eq!(
                deliveries.received,
                deliveries.expected(fleet.updates),
                "{name} of a fleet of {}: every update reaches every stream",
                fleet.streams
            );
        }
    }
    assert_eq!(
        relay.restart_fresh.len(),
        plan.restarts,
        "every restart timed"
    );

    let ofrep = results.ofrep.expect("OFREP");
    assert_eq!(
        ofrep.rounds.len(),
        bench.plan.ofrep_rounds,
        "every OFREP round run"
    );
    let mut runs = Vec::new();
    for round in &ofrep.rounds {
        runs.extend([
            ("HTTP baseline", Some(&round.baseline)),
            ("OFREP single", round.single.as_ref()),
            ("OFREP bulk", round.bulk.as_ref()),
        ]);
    }
    for (name, run) in runs {
        let run = run.expect(name);
        // readyd is a child here (the baseline a task): its CPU is read.
        assert!(
            name == "HTTP baseline" || run.server_cpu.is_some_and(|cpu| !cpu.is_zero()),
            "{name}: readyd's CPU time was read"
        );
        let run = &run.load;
        assert!(run.requests > 0, "{name}: no request answered");
        assert_eq!(run.errors, 0, "{name}: {:?}", run.first_error);
    }
    assert_eq!(
        ofrep.bulk_flags,
        scenarios::BATCH,
        "a client token sees exactly the client-visible flags"
    );

    let queries = results.queries.expect("queries");
    assert_eq!(queries.evaluations, bench.plan.evaluations);
    assert_eq!(queries.probes, bench.plan.evaluations);
    assert_eq!(
        (queries.during_evaluations, queries.during_probes),
        (0, 0),
        "evaluations and probes answer from memory, without a transaction"
    );
}
