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
//! Flag model v2's rules (`rules/20_rules_100_constraints`): 20 rules of 5
//! constraints each, every rule failing only at its last constraint (so all
//! 100 are checked), one regex and one semver constraint among them, then a
//! weighted split as the default serve. Goal: < 1 µs.
//!
//! Run: `cargo bench --bench flag_eval -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use chrono::DateTime;
use criterion::{Criterion, criterion_group, criterion_main};
use readyd::flags::rules::{Rule, Serve, Split, Weight};
use readyd::flags::{
    CompiledFlag, Constraint, EvaluationContext, Flag, NamedVariant, NoFlags, Reason, Step,
    Targeting, ValueType, bucket, evaluate,
};
use readyd::telemetry::EvaluationCounters;
use serde_json::json;

fn flag() -> CompiledFlag {
    CompiledFlag::new(Flag {
        targeting: None,
        client_visible: false,
        permanent: false,
        created_at: chrono::DateTime::UNIX_EPOCH,
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
    .expect("a valid flag")
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
            black_box(evaluate(black_box(&flag), black_box("prod"), ctx, &NoFlags).variant)
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
            let evaluation = evaluate(black_box(&flag), black_box("prod"), ctx, &NoFlags);
            counters.record(evaluation.reason);
            black_box(evaluation.variant)
        })
    });

    // Flag usage: the same evaluation without counting, and the count
    // alone; the counted evaluation is `evaluate/rollout_non_targeted_user`.
    c.bench_function("usage/rollout_non_targeted_user_uncounted", |b| {
        b.iter(|| {
            let ctx = &users[next % users.len()];
            next = next.wrapping_add(1);
            black_box(
                black_box(&flag)
                    .evaluate_uncounted(black_box("prod"), ctx, &NoFlags)
                    .variant,
            )
        })
    });
    c.bench_function("usage/count_alone", |b| {
        b.iter(|| flag.usage().add(black_box(1), black_box(Reason::Split)))
    });
    // Two threads evaluating the same flag: this thread is measured while
    // another evaluates it (counted, or not) as fast as it can. The other
    // thread lives for the whole benchmark, as a server's worker threads
    // do (a thread started per sample would be handed a new counter
    // stripe each time, and now and then the measured thread's own).
    for counted in [false, true] {
        let name = if counted {
            "usage/two_threads_same_flag_counted"
        } else {
            "usage/two_threads_same_flag_uncounted"
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ctx = &users[i % users.len()];
                    i = i.wrapping_add(7);
                    let e = if counted {
                        flag.evaluate("prod", ctx, &NoFlags)
                    } else {
                        flag.evaluate_uncounted("prod", ctx, &NoFlags)
                    };
                    black_box(e.variant);
                }
            });
            // Stops the other thread even if the benchmark panics, so the
            // scope does not wait for it forever.
            let _stop = StopOnDrop(&stop);
            c.bench_function(name, |b| {
                b.iter(|| {
                    let ctx = &users[next % users.len()];
                    next = next.wrapping_add(1);
                    let e = if counted {
                        flag.evaluate(black_box("prod"), ctx, &NoFlags)
                    } else {
                        flag.evaluate_uncounted(black_box("prod"), ctx, &NoFlags)
                    };
                    black_box(e.variant)
                })
            });
        });
    }

    let vip = EvaluationContext::for_user("vip-57@example.com");
    c.bench_function("evaluate/targeted_user", |b| {
        b.iter(|| {
            black_box(
                evaluate(
                    black_box(&flag),
                    black_box("prod"),
                    black_box(&vip),
                    &NoFlags,
                )
                .variant,
            )
        })
    });

    let role = EvaluationContext::for_user("someone-else").with_roles(["viewer", "role-13"]);
    c.bench_function("evaluate/role_match", |b| {
        b.iter(|| {
            black_box(
                evaluate(
                    black_box(&flag),
                    black_box("prod"),
                    black_box(&role),
                    &NoFlags,
                )
                .variant,
            )
        })
    });

    rules_bench(c);

    c.bench_function("bucket/alone", |b| {
        b.iter(|| {
            bucket(
                black_box("checkout.new_payment_flow"),
                black_box("user-123456"),
            )
        })
    });
}

fn constraint(attribute: &str, operator: &str, value: &str) -> Constraint {
    Constraint {
        attribute: attribute.to_owned(),
        operator: operator.to_owned(),
        values: vec![value.to_owned()],
        ..Constraint::default()
    }
}

fn rules_bench(c: &mut Criterion) {
    let rules: Vec<Rule> = (0..20)
        .map(|i| {
            // Four constraints that hold, then one that fails; the first
            // rule's hold a regex and a semver comparison.
            let holding = if i == 0 {
                vec![
                    constraint("email", "regex", "^[a-z0-9.]+@example\\.com$"),
                    constraint("app_version", "semver_gte", "2.3.0"),
                    constraint("plan", "in", "pro"),
                    constraint("seats", "num_gte", "10"),
                ]
            } else {
                vec![
                    constraint("plan", "in", "pro"),
                    constraint("tenant", "str_starts_with", "acme"),
                    constraint("seats", "num_gte", "10"),
                    constraint("user_id", "str_starts_with", "user-"),
                ]
            };
            let mut constraints = holding;
            constraints.push(constraint("country", "in", &format!("X{i}")));
            Rule {
                name: format!("rule-{i}"),
                constraints,
                segments: Vec::new(),
                serve: Some(Serve::Variant("red".to_owned())),
            }
        })
        .collect();
    let default_serve = Serve::Split(Split {
        weights: ["red", "green", "blue"]
            .iter()
            .zip([500, 300, 200])
            .map(|(variant, weight)| Weight {
                variant: (*variant).to_owned(),
                weight,
            })
            .collect(),
        stickiness: String::new(),
    });
    let flag = CompiledFlag::new(Flag {
        key: "checkout.v2".to_owned(),
        value_type: ValueType::String,
        on_value: json!("on"),
        off_value: json!("off"),
        target_users: Vec::new(),
        target_roles: Vec::new(),
        targeting: Some(Box::new(Targeting {
            variants: ["red", "green", "blue"]
                .map(|name| NamedVariant {
                    name: name.to_owned(),
                    value: json!(name),
                })
                .to_vec(),
            rules,
            default_serve: Some(default_serve),
            ..Targeting::default()
        })),
        ..flag().into_flag()
    })
    .expect("a valid flag");
    let contexts: Vec<EvaluationContext> = (0..1024)
        .map(|i| {
            let mut ctx = EvaluationContext::for_user(format!("user-{}", i * 7919));
            for (key, value) in [
                ("email", json!(format!("user.{i}@example.com"))),
                ("app_version", json!("2.4.1")),
                ("plan", json!("pro")),
                ("seats", json!(25)),
                ("tenant", json!("acme-corp")),
                ("country", json!("DE")),
            ] {
                ctx.attributes.insert(key.to_owned(), value);
            }
            ctx
        })
        .collect();
    // What is measured: every rule fails at its fifth constraint, so all
    // 100 are checked, and the default split decides.
    for ctx in &contexts {
        let (evaluation, path) = flag.explain("prod", ctx, &NoFlags);
        assert_eq!(evaluation.reason, Reason::Split, "{path:?}");
        assert_eq!(path.len(), 21, "{path:?}");
        assert!(
            path[..20]
                .iter()
                .all(|step| matches!(step, Step::ConstraintFailed { constraint: 4, .. })),
            "{path:?}"
        );
    }
    let mut next = 0usize;
    c.bench_function("rules/20_rules_100_constraints", |b| {
        b.iter(|| {
            let ctx = &contexts[next % contexts.len()];
            next = next.wrapping_add(1);
            black_box(evaluate(black_box(&flag), black_box("prod"), ctx, &NoFlags).variant)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
