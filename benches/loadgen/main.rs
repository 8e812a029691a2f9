//! The load generator: readyd's scenarios against the release binary, each
//! next to a baseline measured in the same run (a bare tonic server with an
//! empty unary RPC, or for the HTTP scenarios a bare axum server answering
//! a constant body, started the same way on the same core).
//!
//! Run: `cargo bench --bench loadgen -- [--scenario NAME ...] [--connections
//! N] [--concurrency N] [--duration 10s] ...` (`--help` lists them;
//! DATABASE_URL as for the tests, else a private PostgreSQL is started).
//! Servers run pinned to core 0 and this client to core 1 when `taskset` and
//! two cores are there; the output says which.

#[path = "../../tests/support/mod.rs"]
mod support;

#[allow(dead_code)]
mod baseline;
mod http1;
mod load;
mod ofrep;
#[allow(dead_code)]
mod process;
mod relay;
mod report;
#[allow(dead_code)]
mod scenarios;

use std::time::Duration;

use clap::Parser;

use load::LoadShape;
use process::Pinning;
use relay::RelayPlan;
use scenarios::{BaselineMode, Bench, Plan, Scenario};

/// readyd's load generator and benchmark scenarios.
#[derive(Parser, Debug)]
#[command(name = "loadgen")]
struct Args {
    /// Scenarios to run (repeatable); all when none is named.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// HTTP/2 connections of the gRPC throughput scenarios.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once in the throughput scenarios (the OFREP
    /// ones open as many HTTP/1.1 connections: one request in flight each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Length of each measured run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured run before each measured one.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// WatchFlags subscribers of the propagation and memory scenarios.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Flag updates timed by the propagation scenario.
    #[arg(long, default_value_t = 200)]
    updates: usize,
    /// Evaluations (and probes) of the queries scenario.
    #[arg(long, default_value_t = 100_000)]
    evaluations: u64,
    /// Starts timed by the start scenario.
    #[arg(long, default_value_t = 10)]
    starts: usize,
    /// Filler flags seeded (besides the scenarios' own two).
    #[arg(long, default_value_t = 1_000)]
    flags: usize,
    /// Config rows seeded.
    #[arg(long, default_value_t = 1_000)]
    configs: usize,
    /// Real follower processes of the relay scenario (fewer when memory is
    /// short).
    #[arg(long, default_value_t = 100)]
    followers: usize,
    /// Follower streams in all per fleet size of the relay scenario: the
    /// real followers, and lightweight Follow streams opened by this
    /// program for the rest.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    follow_streams: Vec<usize>,
    /// Updates timed per fleet size by the relay scenario.
    #[arg(long, default_value_t = 100)]
    relay_updates: usize,
    /// Follower restarts timed by the relay scenario.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// Rounds of the OFREP scenarios, each judged on its own: within a
    /// round the HTTP baseline and readyd's runs take turns every
    /// `--ofrep-slice` for `--duration` each, so a machine whose speed
    /// drifts, even within seconds, moves both alike.
    #[arg(long, default_value_t = 3)]
    ofrep_rounds: usize,
    /// How long each server is loaded in its turn within an OFREP round.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    ofrep_slice: Duration,
    /// readyd's `--log` filter; readyd must still log "readyd is serving".
    #[arg(long, default_value = "info")]
    readyd_log: String,
    /// Tiny counts for every scenario: checks the harness, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Run servers and client on any core.
    #[arg(long)]
    no_pin: bool,
    /// Serve the baseline (how the load generator starts it).
    #[arg(long, hide = true)]
    serve_baseline: bool,
    /// Serve the HTTP baseline (how the load generator starts it).
    #[arg(long, hide = true)]
    serve_http_baseline: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn plan(&self) -> Plan {
        if self.smoke {
            return Plan::smoke();
        }
        Plan {
            shape: LoadShape {
                connections: self.connections,
                concurrency: self.concurrency,
                warmup: self.warmup,
                duration: self.duration,
            },
            subscribers: self.subscribers,
            updates: self.updates,
            evaluations: self.evaluations,
            starts: self.starts,
            flags: self.flags,
            configs: self.configs,
            readyd_log: self.readyd_log.clone(),
            relay: RelayPlan {
                followers: self.followers,
                fleets: {
                    let mut fleets = self.follow_streams.clone();
                    fleets.sort_unstable();
                    fleets
                },
                updates: self.relay_updates,
                restarts: self.restarts,
            },
            ofrep_rounds: self.ofrep_rounds.max(1),
            ofrep_slice: self.ofrep_slice.max(Duration::from_millis(10)),
        }
    }
}

fn main() {
    let args = Args::parse();
    if args.serve_baseline {
        baseline::serve_forever();
        return;
    }
    if args.serve_http_baseline {
        baseline::serve_http_forever();
        return;
    }
    let pinning = Pinning::detect(!args.no_pin);
    // Before the runtime starts, so every thread it makes inherits the core.
    let pinning = match pinning.pin_client() {
        Ok(()) => pinning,
        Err(why) => Pinning {
            server: None,
            client: None,
            note: format!("unpinned: {why}"),
        },
    };
    let scenarios = if args.scenarios.is_empty() {
        <Scenario as clap::ValueEnum>::value_variants().to_vec()
    } else {
        args.scenarios.clone()
    };
    let bench = Bench {
        readyd: env!("CARGO_BIN_EXE_readyd").into(),
        pinning,
        baseline: BaselineMode::Child(std::env::current_exe().expect("the path of this program")),
        plan: args.plan(),
    };
    report::machine(&bench);
    // One thread: the client has one core, and a single-threaded runtime
    // wastes none of it on work stealing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime.block_on(bench.run(&scenarios));
    report::print(&bench, &results);
}
