//! The load generator's output: the machine, then one Markdown table per
//! scenario with absolute figures, ratios to the in-run baseline, and the
//! goal of the scenario.

use std::time::Duration;

use crate::ofrep::Ofrep;
use crate::relay::{Deliveries, Fleet, Relay, UPSTREAM_POOL};
use crate::scenarios::{BATCH, Bench, Results, Throughput};

/// Prints what the figures were measured on.
pub fn machine(bench: &Bench) {
    // From /proc/cpuinfo: this process may already be pinned to one core.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim());
    println!("Machine: {cores} cores, {model:?}; {}", bench.pinning.note);
    println!(
        "readyd: {} --log {}",
        bench.readyd.display(),
        bench.plan.readyd_log
    );
    let shape = bench.plan.shape;
    println!(
        "Load: {} connections, {} in flight, {:?} measured after {:?} of warm-up",
        shape.connections, shape.concurrency, shape.duration, shape.warmup
    );
    println!();
}

fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

fn ratio(value: f64, baseline: f64) -> String {
    if baseline > 0.0 {
        format!("{:.2}", value / baseline)
    } else {
        "-".to_owned()
    }
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_owned(), |b| {
        format!("{:.1}", b as f64 / 1024.0 / 1024.0)
    })
}

/// The baseline's throughput: the mean of the runs before and after.
fn baseline_rates(results: &Results) -> (f64, Option<f64>) {
    mean_rates(&[results.baseline.as_ref(), results.baseline_after.as_ref()])
}

/// The mean throughput of `runs` (those there), per second of wall time
/// and per server CPU-second.
fn mean_rates(runs: &[Option<&Throughput>]) -> (f64, Option<f64>) {
    let runs: Vec<&Throughput> = runs.iter().copied().flatten().collect();
    if runs.is_empty() {
        return (0.0, None);
    }
    let n = runs.len() as f64;
    let rate = runs.iter().map(|t| t.load.per_second()).sum::<f64>() / n;
    let per_core: Option<Vec<f64>> = runs.iter().map(|t| t.per_server_core()).collect();
    (rate, per_core.map(|v| v.iter().sum::<f64>() / n))
}

fn throughput_row(name: &str, run: &Throughput, unit: f64, base: (f64, Option<f64>)) {
    let (base_rate, base_core) = base;
    let rate = run.load.per_second() * unit;
    let per_core = run.per_server_core().map(|r| r * unit);
    println!(
        "| {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
        rate,
        ratio(run.load.per_second(), base_rate),
        per_core.map_or("-".to_owned(), |r| format!("{r:.0}")),
        match (run.per_server_core(), base_core) {
            (Some(r), Some(b)) => ratio(r, b),
            _ => "-".to_owned(),
        },
        run.server_busy()
            .map_or("-".to_owned(), |b| format!("{:.0} %", b * 100.0)),
        ms(run.load.latency_us.value_at_quantile(0.50)),
        ms(run.load.latency_us.value_at_quantile(0.99)),
        run.load.errors,
    );
}

/// Prints every scenario that ran.
pub fn print(bench: &Bench, results: &Results) {
    let base = baseline_rates(results);
    if results.baseline.is_some() {
        println!("## Throughput (ratios to the baseline's mean of its runs before and after)");
        println!();
        println!(
            "| Run | per s | ratio | per server CPU-second | ratio | server core busy | p50 ms | p99 ms | errors |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, run) in [
            ("baseline (empty Check), before", &results.baseline),
            ("baseline (empty Check), after", &results.baseline_after),
        ] {
            if let Some(run) = run {
                throughput_row(name, run, 1.0, base);
            }
        }
        if let Some(run) = &results.evaluate {
            throughput_row("EvaluateFlag (100 targets, 50 % rollout)", run, 1.0, base);
        }
        if let Some(run) = &results.batch {
            throughput_row("EvaluateFlags, 50 flags: calls", run, 1.0, base);
            throughput_row(
                "EvaluateFlags, 50 flags: evaluations",
                run,
                BATCH as f64,
                base,
            );
        }
        println!();
        if let (Some(run), Some(base_core)) = (&results.evaluate, base.1) {
            let share = run.per_server_core().unwrap_or(0.0) / base_core;
            println!(
                "Goal EvaluateFlag >= 85 % of the baseline per server core: {:.0} %, {}",
                share * 100.0,
                goal(share >= 0.85)
            );
            println!();
        }
    }
    if let (Some(probe), Some(base)) = (&results.probe, &results.baseline_sequential) {
        println!("## Probe: grpc.health.v1 Check on readiness, one at a time, a dependency hung");
        println!();
        println!("| Run | probes | p50 ms | p99 ms | max ms | p50 ratio | p99 ratio | errors |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, run) in [
            ("baseline (empty Check)", base),
            ("readyd readiness, hung check", probe),
        ] {
            let h = &run.latency_us;
            println!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} |",
                run.requests,
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                ratio(
                    h.value_at_quantile(0.5) as f64,
                    base.latency_us.value_at_quantile(0.5) as f64
                ),
                ratio(
                    h.value_at_quantile(0.99) as f64,
                    base.latency_us.value_at_quantile(0.99) as f64
                ),
                run.errors,
            );
        }
        println!();
        let p99 = Duration::from_micros(probe.latency_us.value_at_quantile(0.99));
        println!(
            "Goal p99 < 5 ms: {p99:?}, {}",
            goal(p99 < Duration::from_millis(5))
        );
        println!();
    }
    if let Some(p) = &results.propagation {
        let h = &p.latency_us;
        let expected = (p.subscribers * p.updates) as u64;
        println!("## Propagation: a flag updated by plain SQL, to every WatchFlags subscriber");
        println!();
        println!("| Subscribers | updates | deliveries | p50 ms | p99 ms | max ms |");
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} of {expected} | {} | {} | {} |",
            p.subscribers,
            p.updates,
            p.received,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        );
        println!();
        let p99 = Duration::from_micros(h.value_at_quantile(0.99));
        println!(
            "Goal p99 < 50 ms: {p99:?}, {}",
            goal(p99 < Duration::from_millis(50) && p.received == expected)
        );
        println!();
    }
    if let Some(m) = &results.memory {
        println!("## Memory: readyd's resident set");
        println!();
        println!("| State | RSS MiB |");
        println!("|---|---:|");
        // The scenarios' two flags and the migrations' defaults come on top.
        println!(
            "| idle, 1 s after start, {} flags and {} config rows | {} |",
            bench.plan.flags + 7,
            bench.plan.configs + 7,
            mib(m.idle_bytes)
        );
        println!(
            "| {} WatchFlags streams open | {} |",
            m.streams,
            mib(m.watching_bytes)
        );
        println!(
            "| the baseline server, 1 s after start | {} |",
            mib(m.baseline_bytes)
        );
        println!();
        if let Some(idle) = m.idle_bytes {
            println!("Goal idle < 15 MiB: {}", goal(idle < 15 * 1024 * 1024));
            println!();
        }
    }
    if !results.starts.is_empty() {
        println!("## Start to SERVING (readiness), external PostgreSQL, migrations applied");
        println!();
        println!("| Database URL | starts | median ms | min ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
        let mut medians = Vec::new();
        for (name, starts, goal_ms) in [
            ("as given (TLS if offered)", &results.starts, 300),
            ("`sslmode=disable`", &results.starts_plain, 50),
        ] {
            let mut starts = starts.clone();
            starts.sort();
            let Some(&max) = starts.last() else { continue };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let median = starts[starts.len() / 2];
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} |",
                starts.len(),
                ms(median),
                ms(starts[0]),
                ms(max),
            );
            medians.push((name, median, goal_ms));
        }
        println!();
        for (name, median, goal_ms) in medians {
            println!(
                "Goal {name}: median < {goal_ms} ms: {:.1} ms, {}",
                median.as_secs_f64() * 1000.0,
                goal(median < Duration::from_millis(goal_ms))
            );
        }
        println!();
    }
    if let Some(relay) = &results.relay {
        print_relay(bench, relay);
    }
    if let Some(ofrep) = &results.ofrep {
        print_ofrep(ofrep);
    }
    if let Some(q) = &results.queries {
        println!("## Database statements during reads (pg_stat_activity of the bench database)");
        println!();
        println!("| Reads | count | readyd connections that ran a statement meanwhile |");
        println!("|---|---:|---:|");
        println!(
            "| EvaluateFlag | {} | {} |",
            q.evaluations, q.during_evaluations
        );
        println!("| Check readiness | {} | {} |", q.probes, q.during_probes);
        println!();
        println!(
            "Goal 0: {}",
            goal(q.during_evaluations == 0 && q.during_probes == 0)
        );
        println!();
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0)
}

/// The middle value of `values`, and the largest.
fn median_max<T: Copy + Ord>(values: &[T]) -> Option<(T, T)> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    Some((*sorted.get(sorted.len() / 2)?, *sorted.last()?))
}

fn delivery_row(name: &str, d: &Deliveries, updates: usize, base: &Deliveries) {
    let h = &d.latency_us;
    let b = &base.latency_us;
    println!(
        "| {name} | {} | {} of {} | {} | {} | {} | {} | {} |",
        d.streams,
        d.received,
        d.expected(updates),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        ratio(
            h.value_at_quantile(0.5) as f64,
            b.value_at_quantile(0.5) as f64
        ),
        ratio(
            h.value_at_quantile(0.99) as f64,
            b.value_at_quantile(0.99) as f64
        ),
    );
}

/// The relay scenario: sessions, propagation per fleet size, memory and
/// restarts, with their goals.
fn print_relay(bench: &Bench, relay: &Relay) {
    println!("## Relay: one upstream on the database, a fleet of followers");
    println!();
    let placement = match (bench.pinning.server, bench.pinning.client) {
        (Some(server), Some(client)) => format!(
            "upstream on core {server}; the real followers, their subscribers' client and every \
             lightweight stream (this program) share core {client}; PostgreSQL is not pinned"
        ),
        _ => format!("nothing pinned ({})", bench.pinning.note),
    };
    println!(
        "{} real follower processes. Placement: {placement}. {}.",
        relay.followers, relay.open_files
    );
    if let Some(note) = &relay.followers_note {
        println!("{note}.");
    }
    println!();
    println!(
        "| Follower streams on the upstream | pg_stat_activity rows | of them application_name 'readyd' |"
    );
    println!("|---:|---:|---:|");
    for s in &relay.sessions {
        println!("| {} | {} | {} |", s.followers, s.all, s.readyd);
    }
    println!();
    let readyd: Vec<i64> = relay.sessions.iter().map(|s| s.readyd).collect();
    let bound = UPSTREAM_POOL + 1;
    let unchanged = readyd.windows(2).all(|pair| pair[0] == pair[1]);
    println!(
        "Goal: the upstream's own sessions (at most its pool of {UPSTREAM_POOL} and the listener), \
         whatever the followers: readyd sessions {readyd:?}, {}{}",
        goal(readyd.iter().all(|&n| n <= bound)),
        if unchanged {
            ", unchanged"
        } else {
            ", varying within the pool"
        }
    );
    println!();

    println!(
        "| Follower streams (real + lightweight over connections) | path | streams | deliveries | p50 ms | p99 ms | max ms | p50 ratio | p99 ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for fleet in &relay.fleets {
        let name = format!(
            "{} ({} + {} over {})",
            fleet.streams,
            fleet.streams - fleet.lightweight,
            fleet.lightweight,
            fleet.connections
        );
        let u = fleet.updates;
        let base = &fleet.direct;
        delivery_row(
            &format!("{name} | baseline: WatchFlags on the upstream"),
            base,
            u,
            base,
        );
        delivery_row(
            &format!("{name} | WatchFlags on each real follower"),
            &fleet.subscribers,
            u,
            base,
        );
        delivery_row(
            &format!("{name} | each lightweight Follow stream"),
            &fleet.lightweight_deliveries,
            u,
            base,
        );
        delivery_row(
            &format!("{name} | every follower"),
            &fleet.every_follower,
            u,
            base,
        );
        let commit = &fleet.commit_us;
        println!(
            "| {name} | for comparison: the UPDATE's own round trip (sent to commit acknowledged) | | {} updates | {} | {} | {} | | |",
            commit.len(),
            ms(commit.value_at_quantile(0.5)),
            ms(commit.value_at_quantile(0.99)),
            ms(commit.max()),
        );
        let after_commit = &fleet.every_follower_after_commit_us;
        println!(
            "| {name} | every follower, timed from the commit acknowledged (a delivery before it counts 0) | {} | {} | {} | {} | {} | | |",
            fleet.every_follower.streams,
            after_commit.len(),
            ms(after_commit.value_at_quantile(0.5)),
            ms(after_commit.value_at_quantile(0.99)),
            ms(after_commit.max()),
        );
        let whole = &fleet.whole_fleet_us;
        println!(
            "| {name} | the whole fleet (last delivery of each update) | | {} updates | {} | {} | {} | | |",
            whole.len(),
            ms(whole.value_at_quantile(0.5)),
            ms(whole.value_at_quantile(0.99)),
            ms(whole.max()),
        );
    }
    println!();
    for fleet in &relay.fleets {
        let every = &fleet.every_follower;
        let p99 = Duration::from_micros(every.latency_us.value_at_quantile(0.99));
        let limit = if fleet.streams <= 1_000 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        };
        let after_commit =
            Duration::from_micros(fleet.every_follower_after_commit_us.value_at_quantile(0.99));
        let all_received = every.received == every.expected(fleet.updates);
        println!(
            "Goal p99 < {limit:?} with {} followers: from the UPDATE sent (an upper bound, the commit inside) {p99:?}, {}; from the commit acknowledged {after_commit:?}, {}",
            fleet.streams,
            goal(p99 < limit && all_received),
            goal(after_commit < limit && all_received)
        );
    }
    println!();

    println!("| Memory (resident set) | MiB | per stream KiB |");
    println!("|---|---:|---:|");
    println!(
        "| upstream, no follower, 1 s after start | {} | |",
        mib(relay.upstream_idle_bytes)
    );
    for fleet in &relay.fleets {
        println!(
            "| upstream with {} follower streams ({} added since {} MiB) | {} | {} |",
            fleet.streams,
            fleet.added,
            mib(fleet.rss_before),
            mib(fleet.rss_after),
            fleet.bytes_per_stream().map_or("-".to_owned(), kib),
        );
    }
    if let Some((median, max)) = median_max(&relay.follower_idle_bytes) {
        println!(
            "| a follower, idle, {} flags and {} config rows: median of {} (max) | {} ({}) | |",
            bench.plan.flags + 7,
            bench.plan.configs + 7,
            relay.follower_idle_bytes.len(),
            mib(Some(median)),
            mib(Some(max)),
        );
    }
    let anon: Vec<u64> = relay.follower_idle_kinds.iter().map(|k| k.0).collect();
    let file: Vec<u64> = relay.follower_idle_kinds.iter().map(|k| k.1).collect();
    if let (Some((anon, _)), Some((file, _))) = (median_max(&anon), median_max(&file)) {
        println!(
            "| the same, by kind (medians): anonymous (heap, stacks) / file-backed (the binary's pages) | {} / {} | |",
            mib(Some(anon)),
            mib(Some(file)),
        );
    }
    println!();
    let worst_per_stream = relay
        .fleets
        .iter()
        .filter_map(Fleet::bytes_per_stream)
        .fold(0.0, f64::max);
    println!(
        "Goal upstream < 50 KiB per follower stream: {} KiB at most, {}",
        kib(worst_per_stream),
        goal(worst_per_stream < 50.0 * 1024.0)
    );
    if let Some((median, _)) = median_max(&relay.follower_idle_bytes) {
        println!(
            "Goal follower idle < 12 MiB: {} MiB, {}",
            mib(Some(median)),
            goal(median < 12 * 1024 * 1024)
        );
    }
    println!();

    if let Some((median, max)) = median_max(&relay.restart_fresh) {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        println!(
            "| A follower restarted (SIGTERM, then exec with the same data dir) | restarts | median ms | min ms | max ms |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, times) in [
            ("exec to its serving line", &relay.restart_serving),
            (
                "exec to serving the upstream's version, not STALE (ListFlags, EvaluateFlag)",
                &relay.restart_fresh,
            ),
        ] {
            let min = times.iter().min().copied().unwrap_or_default();
            let (median, max) = median_max(times).unwrap_or_default();
            println!(
                "| {name} | {} | {} | {} | {} |",
                times.len(),
                ms(median),
                ms(min),
                ms(max)
            );
        }
        println!();
        println!(
            "Goal fresh data < 100 ms after start: median {}, {} (max {})",
            ms(median),
            goal(median < Duration::from_millis(100)),
            ms(max)
        );
        println!();
    }
}

/// The OFREP scenarios, each of readyd's runs with its ratio to the HTTP
/// baseline of the same round (loaded in turn with it), and the goals
/// judged on the median of the rounds' ratios.
fn print_ofrep(ofrep: &Ofrep) {
    println!(
        "## OFREP over HTTP/1.1 keep-alive ({} connections, one request in flight each; \
         {} rounds, in each the HTTP baseline and readyd's runs loaded in turn for {} ms at a time)",
        ofrep.connections,
        ofrep.rounds.len(),
        ofrep.slice.as_millis()
    );
    println!();
    println!(
        "| Run | per s | ratio | per server CPU-second | ratio | server core busy | p50 ms | p99 ms | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut singles, mut bulks) = (Vec::new(), Vec::new());
    for (index, round) in ofrep.rounds.iter().enumerate() {
        let base = mean_rates(&[Some(&round.baseline)]);
        let round_name = index + 1;
        throughput_row(
            &format!("round {round_name}: baseline (axum, constant JSON body)"),
            &round.baseline,
            1.0,
            base,
        );
        let share = |run: &Throughput| base.1.and_then(|b| Some(run.per_server_core()? / b));
        if let Some(run) = &round.single {
            throughput_row(
                &format!(
                    "round {round_name}: OFREP single (bench_rollout: 100 targets, 50 % rollout, random users)"
                ),
                run,
                1.0,
                base,
            );
            singles.extend(share(run));
        }
        if let Some(run) = &round.bulk {
            let flags = ofrep.bulk_flags;
            throughput_row(
                &format!(
                    "round {round_name}: OFREP bulk, {flags} client-visible flags, If-None-Match: 304s"
                ),
                run,
                1.0,
                base,
            );
            throughput_row(
                &format!("round {round_name}: OFREP bulk, {flags} flags: evaluations"),
                run,
                flags as f64,
                base,
            );
            bulks.extend(share(run));
        }
    }
    println!();
    let listed = |shares: &[f64]| {
        shares
            .iter()
            .map(|share| format!("{share:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(median) = median_f64(&singles) {
        println!(
            "Goal OFREP single >= 0.70 of the baseline per server core: median {median:.2} (rounds: {}), {}",
            listed(&singles),
            goal(median >= 0.70)
        );
    }
    if let Some(median) = median_f64(&bulks) {
        println!(
            "Goal OFREP bulk of 50 with a matching If-None-Match >= 0.90 of the baseline per server core: median {median:.2} (rounds: {}), {}",
            listed(&bulks),
            goal(median >= 0.90 && ofrep.bulk_flags == BATCH)
        );
        println!(
            "Bulk answers 200 instead of 304 (a new ETag: readyd's ticket window rolled over): {}",
            ofrep.bulk_refetches
        );
    }
    println!();
}

/// The median of `values` (the mean of the middle two for an even count).
fn median_f64(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}
