//! Cost of one flag evaluation on the hot path.
//!
//! The flag has 100 target users, 20 target roles and a 50 % rollout, a
//! realistic worst-ish case: a non-targeted user pays for the user look-up,
//! a role look-up per role and the murmur3 bucket. Goal: < 200 ns each.
//!
//! The baseline, measured in the same run, is what every flag request pays
//! before any rule: finding the flag by key in a snapshot of 1,000 flags.
//! BENCHMARKS.md reports each evaluation as a ratio to it.
//!
//! Run: `cargo bench --bench flag_eval -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use chrono::DateTime;
use criterion::{Criterion, criterion_group, criterion_main};
use readyd::flags::{CompiledFlag, EvaluationContext, Flag, ValueType, bucket, evaluate};
use readyd::telemetry::EvaluationCounters;
use serde_json::json;

fn flag() -> CompiledFlag {
    CompiledFlag::new(Flag {
        key: "checkout.new_payment_flow".to_owned(),
        description: "benchmark flag".to_owned(),
        enabled: true,
        value_type: ValueType::Bool,
        on_value: json!(true),
        off_value: json!(false),
        environments: vec!["staging".to_owned(), "prod".to_owned()],
        target_users: (0..100).map(|i| format!("vip-{i}@example.com")).collect(),
        target_roles: (0..20).map(|i| format!("role-{i}")).collect(),
        rollout_percentage: 50,
        version: 42,
        updated_at: DateTime::UNIX_EPOCH,
        updated_by: "bench".to_owned(),
    })
}

fn bench(c: &mut Criterion) {
    let flag = flag();

    let snapshot = readyd::state::Snapshot::from_rows(
        42,
        (0..1000)
            .map(|i| {
                let mut flag = flag.flag().clone();
                flag.key = format!("flag.number_{i}");
                flag
            })
            .collect(),
        Vec::new(),
    );
    c.bench_function("baseline/snapshot_lookup", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .flag(black_box("flag.number_517"))
                    .map(|f| f.version()),
            )
        })
    });

    // Pre-generated, so the loop measures evaluation, not id formatting.
    // Each non-targeted user carries two roles that are not targeted, so the
    // role step does real look-ups before the rollout decides.
    let users: Vec<EvaluationContext> = (0..1024)
        .map(|i| {
            EvaluationContext::for_user(format!("user-{}", i * 7919))
                .with_roles(["viewer", "editor"])
        })
        .collect();
    let mut next = 0usize;
    c.bench_function("evaluate/rollout_non_targeted_user", |b| {
        b.iter(|| {
            let ctx = &users[next % users.len()];
            next = next.wrapping_add(1);
            black_box(evaluate(black_box(&flag), black_box("prod"), ctx).variant)
        })
    });

    // The same evaluation counted by reason into a real Prometheus
    // recorder, as the API does: the cost of the metric is the difference.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let _ = metrics::set_global_recorder(recorder);
    let counters = EvaluationCounters::new();
    c.bench_function("evaluate/rollout_non_targeted_user_with_metric", |b| {
        b.iter(|| {
            let ctx = &users[next % users.len()];
            next = next.wrapping_add(1);
            let evaluation = evaluate(black_box(&flag), black_box("prod"), ctx);
            counters.record(evaluation.reason);
            black_box(evaluation.variant)
        })
    });

    let vip = EvaluationContext::for_user("vip-57@example.com");
    c.bench_function("evaluate/targeted_user", |b| {
        b.iter(|| black_box(evaluate(black_box(&flag), black_box("prod"), black_box(&vip)).variant))
    });

    let role = EvaluationContext::for_user("someone-else").with_roles(["viewer", "role-13"]);
    c.bench_function("evaluate/role_match", |b| {
        b.iter(|| {
            black_box(evaluate(black_box(&flag), black_box("prod"), black_box(&role)).variant)
        })
    });

    c.bench_function("bucket/alone", |b| {
        b.iter(|| {
            bucket(
                black_box("checkout.new_payment_flow"),
                black_box("user-123456"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
