//! The scenarios: each starts what it needs (readyd as a child process, the
//! baseline, subscribers), drives it, and returns figures; printing is the
//! caller's. A run seeds one fresh database and drops it at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::baseline;
use crate::load::{self, Dice, LoadReport, LoadShape};
use crate::process::{Pinning, Server};
use crate::relay::{Relay, RelayPlan};
use crate::support::TestDb;

/// The flag of the unary scenario: 100 target users, 2 target roles, 50 %
/// rollout.
pub const ROLLOUT_FLAG: &str = "bench_rollout";
/// The flag the propagation scenario updates.
pub const WATCHED_FLAG: &str = "bench_watched";
/// Flags in an EvaluateFlags batch.
pub const BATCH: usize = 50;
/// Users drawn at random; every 100th is a target of the rollout flag.
const USERS: u64 = 10_000;
/// WatchFlags streams per HTTP/2 connection (below hyper's default limit
/// of 200 concurrent streams).
const STREAMS_PER_CONNECTION: usize = 100;

/// The scenarios, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// EvaluateFlag unary under load.
    Evaluate,
    /// EvaluateFlags, 50 flags per call, under load.
    Batch,
    /// grpc.health.v1 Check on `readiness` with a hung dependency.
    Probe,
    /// WatchFlags fan-out of updates made by plain SQL.
    Propagation,
    /// Resident memory idle and with open Watch streams.
    Memory,
    /// Start to SERVING.
    Start,
    /// Database statements during evaluations and probes.
    Queries,
    /// Relay mode: an upstream and a fleet of followers (connections,
    /// propagation to every follower, memory, restart to fresh data).
    Relay,
    /// OFREP single evaluation over HTTP/1.1 keep-alive, next to a bare
    /// axum server.
    Ofrep,
    /// OFREP bulk evaluation of 50 client-visible flags answered 304 by
    /// `If-None-Match`, next to the same bare axum server.
    OfrepBulk,
}

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Load of the throughput scenarios (and the length of the probe one).
    pub shape: LoadShape,
    /// WatchFlags subscribers.
    pub subscribers: usize,
    /// Flag updates whose propagation is timed.
    pub updates: usize,
    /// Evaluations (and probes) counted for database queries.
    pub evaluations: u64,
    /// Starts timed.
    pub starts: usize,
    /// Filler flags and config rows seeded.
    pub flags: usize,
    /// Filler config rows seeded.
    pub configs: usize,
    /// readyd's `--log` filter.
    pub readyd_log: String,
    /// The relay scenario's sizes.
    pub relay: RelayPlan,
    /// Rounds of the OFREP scenarios (each: the baseline, then readyd).
    pub ofrep_rounds: usize,
    /// How long each server is loaded in turn within an OFREP round.
    pub ofrep_slice: Duration,
}

impl Plan {
    /// Tiny counts: proves every scenario runs, measures nothing.
    pub fn smoke() -> Plan {
        Plan {
            shape: LoadShape {
                connections: 2,
                concurrency: 4,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(300),
            },
            subscribers: 20,
            updates: 10,
            evaluations: 1_000,
            starts: 2,
            flags: 100,
            configs: 100,
            readyd_log: "info".to_owned(),
            relay: RelayPlan {
                followers: 2,
                fleets: vec![4, 8],
                updates: 5,
                restarts: 2,
            },
            ofrep_rounds: 2,
            ofrep_slice: Duration::from_millis(100),
        }
    }
}

/// How the baseline server runs.
#[derive(Debug, Clone)]
pub enum BaselineMode {
    /// As a child process: this program with `--serve-baseline`.
    Child(PathBuf),
    /// As a task of this process (the smoke test: no CPU figures).
    InProcess,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Bench {
    /// The readyd binary.
    pub readyd: PathBuf,
    /// Where servers and client run.
    pub pinning: Pinning,
    /// How the baseline runs.
    pub baseline: BaselineMode,
    /// Sizes.
    pub plan: Plan,
}

/// A throughput run and the server CPU it took.
pub struct Throughput {
    /// The load run.
    pub load: LoadReport,
    /// Server CPU time during the measured run, when the server is a child.
    pub server_cpu: Option<Duration>,
}

impl Throughput {
    /// Nothing measured yet, to [`Self::add`] runs to.
    pub fn empty() -> Self {
        Throughput {
            load: LoadReport::empty(),
            server_cpu: Some(Duration::ZERO),
        }
    }

    /// Adds `run` (a later run of the same load on the same server).
    pub fn add(&mut self, run: Throughput) {
        self.load.add(run.load);
        self.server_cpu = self.server_cpu.zip(run.server_cpu).map(|(a, b)| a + b);
    }

    /// Requests per second of server CPU: throughput per server core.
    pub fn per_server_core(&self) -> Option<f64> {
        let cpu = self.server_cpu?.as_secs_f64();
        (cpu > 0.0).then(|| self.load.requests as f64 / cpu)
    }

    /// Share of one core the server used.
    pub fn server_busy(&self) -> Option<f64> {
        Some(self.server_cpu?.as_secs_f64() / self.load.elapsed.as_secs_f64().max(1e-9))
    }
}

/// The propagation scenario's figures.
pub struct Propagation {
    /// Subscribers.
    pub subscribers: usize,
    /// Updates made.
    pub updates: usize,
    /// Deliveries seen (subscribers x updates when none was missed).
    pub received: u64,
    /// Time from sending the UPDATE to a subscriber's receipt, in µs.
    pub latency_us: hdrhistogram::Histogram<u64>,
}

/// The memory scenario's figures.
pub struct Memory {
    /// RSS a second after start.
    pub idle_bytes: Option<u64>,
    /// RSS with the propagation scenario's streams open.
    pub watching_bytes: Option<u64>,
    /// The baseline server's RSS a second after start, when it ran as a
    /// child: what any tonic server on this machine starts with.
    pub baseline_bytes: Option<u64>,
    /// Streams open for the second figure.
    pub streams: usize,
}

/// The queries scenario's figures.
pub struct Queries {
    /// Evaluations made.
    pub evaluations: u64,
    /// Connections that started a statement while they ran.
    pub during_evaluations: i64,
    /// Probes made.
    pub probes: u64,
    /// Connections that started a statement while they ran.
    pub during_probes: i64,
}

/// Every figure of a run; a scenario not run leaves its field empty.
#[derive(Default)]
pub struct Results {
    /// The baseline under the plan's load, before the readyd runs.
    pub baseline: Option<Throughput>,
    /// The same, after them (drift of the machine during the run).
    pub baseline_after: Option<Throughput>,
    /// The baseline probed one request at a time.
    pub baseline_sequential: Option<LoadReport>,
    /// EvaluateFlag under load.
    pub evaluate: Option<Throughput>,
    /// EvaluateFlags (50 keys) under load.
    pub batch: Option<Throughput>,
    /// readiness probes one at a time with a hung dependency.
    pub probe: Option<LoadReport>,
    /// Update fan-out.
    pub propagation: Option<Propagation>,
    /// Resident memory.
    pub memory: Option<Memory>,
    /// Start to SERVING, one per start, with the database URL as given
    /// (TLS when the server offers it: sqlx's default `sslmode=prefer`).
    pub starts: Vec<Duration>,
    /// The same with `sslmode=disable`.
    pub starts_plain: Vec<Duration>,
    /// Database work per read.
    pub queries: Option<Queries>,
    /// Relay mode.
    pub relay: Option<Relay>,
    /// OFREP over HTTP/1.1, with its own baseline.
    pub ofrep: Option<crate::ofrep::Ofrep>,
}

/// The address in readyd's "readyd is serving" line (text logs).
pub(crate) fn readyd_address(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains("readyd is serving") {
        return None;
    }
    line.split("listen=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Loads the database: `plan.flags` filler flags (a target user, a target
/// role, 50 % rollout each), `plan.configs` config rows, the rollout flag
/// and the watched flag.
async fn seed(db: &TestDb, plan: &Plan) {
    let statements: [(&str, i64); 4] = [
        (
            "INSERT INTO feature_flags (key, description, enabled, target_users, target_roles, \
               rollout_percentage) \
             SELECT format('bench_flag_%s', lpad(i::text, 4, '0')), 'filler', true, \
               ARRAY[format('user-%s', i)], '{staff}', 50 FROM generate_series(0, $1 - 1) AS i",
            plan.flags as i64,
        ),
        (
            "INSERT INTO app_config (key, environment, value, description) \
             SELECT format('bench_config_%s', i), '*', to_jsonb(format('value %s', i)), 'filler' \
             FROM generate_series(0, $1 - 1) AS i",
            plan.configs as i64,
        ),
        (
            "INSERT INTO feature_flags (key, enabled, target_users, target_roles, \
               rollout_percentage) \
             SELECT 'bench_rollout', true, array_agg(format('user-%s', i * 100)), \
               '{admin,staff}', 50 FROM generate_series(0, $1 - 1) AS i",
            100,
        ),
        (
            "INSERT INTO feature_flags (key, description, enabled) \
             SELECT 'bench_watched', 'update-none', $1 = 1",
            1,
        ),
    ];
    for (sql, parameter) in statements {
        sqlx::query(sql)
            .bind(parameter)
            .execute(&db.pool)
            .await
            .expect("seed the bench database");
    }
}

/// A context with a random user who is not an admin or staff.
fn random_context(dice: &mut Dice) -> Option<pb::EvaluationContext> {
    Some(pb::EvaluationContext {
        user_id: format!("user-{}", dice.below(USERS)),
        roles: vec!["member".to_owned()],
        attributes: None,
    })
}

pub(crate) fn failed(status: tonic::Status) -> String {
    format!("{}: {}", status.code(), status.message())
}

/// One EvaluateFlag call on the rollout flag.
async fn evaluate_once(
    channel: Channel,
    context: Option<pb::EvaluationContext>,
) -> Result<(), String> {
    FlagServiceClient::new(channel)
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: ROLLOUT_FLAG.to_owned(),
            context,
        })
        .await
        .map(drop)
        .map_err(failed)
}

/// One Check on `service`, which must answer SERVING.
pub(crate) async fn check_once(channel: Channel, service: &'static str) -> Result<(), String> {
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(failed)?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("{service:?} answered {status:?}"))
    }
}

/// Warms up, then measures `call` under the plan's load on `server`.
async fn throughput<F, Fut>(server: &Server, shape: LoadShape, call: F) -> Throughput
where
    F: Fn(Channel, &mut Dice) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let channels = load::connect(server.addr, shape.connections).await;
    measure(server, &channels, shape, call).await
}

/// Warms up, then measures `call` from `shape.concurrency` callers over
/// `channels` to `server`, with the server's CPU time over the measured
/// run.
pub(crate) async fn measure<C, F, Fut>(
    server: &Server,
    channels: &[C],
    shape: LoadShape,
    call: F,
) -> Throughput
where
    C: Clone + Send + 'static,
    F: Fn(C, &mut Dice) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    load::run(
        channels,
        shape.concurrency,
        shape.warmup,
        None,
        call.clone(),
    )
    .await;
    measure_for(server, channels, shape.concurrency, shape.duration, call).await
}

/// Measures `call`'s load on `server` for `duration`, without a warm-up.
pub(crate) async fn measure_for<C, F, Fut>(
    server: &Server,
    channels: &[C],
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Throughput
where
    C: Clone + Send + 'static,
    F: Fn(C, &mut Dice) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let before = server.cpu_time();
    let load = load::run(channels, concurrency, duration, None, call).await;
    let server_cpu = before
        .zip(server.cpu_time())
        .map(|(b, a)| a.saturating_sub(b));
    Throughput { load, server_cpu }
}

/// Probes `readiness` one at a time for `duration` over one connection.
async fn probe_sequentially(
    server: &Server,
    duration: Duration,
    service: &'static str,
) -> LoadReport {
    let channels = load::connect(server.addr, 1).await;
    let call = move |channel: Channel, _: &mut Dice| check_once(channel, service);
    load::run(&channels, 1, duration / 4, None, call).await;
    load::run(&channels, 1, duration, None, call).await
}

/// Polls `readiness` until it answers SERVING.
pub(crate) async fn wait_until_ready(server: &Server) {
    let channel = load::connect(server.addr, 1).await.remove(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while check_once(channel.clone(), "readiness").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "readyd did not turn ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The database's clock, now.
async fn database_now(connection: &mut sqlx::PgConnection) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(connection)
        .await
        .expect("read the database clock")
}

/// Other connections to this database that started a statement at or
/// after `since`. `pg_stat_activity` is live, unlike the counters of
/// `pg_stat_database`, which an idle backend may flush 10 s late.
async fn busy_connections(
    connection: &mut sqlx::PgConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND query_start >= $1",
    )
    .bind(since)
    .fetch_one(connection)
    .await
    .expect("read pg_stat_activity")
}

impl Bench {
    /// `readyd serve` on `database_url` with its default (text) logs, pinned like the
    /// baseline, with periodic
    /// database work (the database check, history rows) pushed an hour out
    /// so a run sees only what requests cause; `extra` adds arguments.
    async fn start_readyd(
        &self,
        database_url: &str,
        data_dir: &std::path::Path,
        extra: &[String],
    ) -> (Server, Duration) {
        let mut command = self.pinning.server_command(&self.readyd);
        self.readyd_settings(&mut command, "loadgen", data_dir);
        command.arg("--database-url").arg(database_url).args(extra);
        let started = Instant::now();
        let (server, _) = Server::spawn(command, readyd_address).await;
        wait_until_ready(&server).await;
        (server, started.elapsed())
    }

    /// The settings every readyd of a run gets: `serve` on a loopback port
    /// in environment `bench`, text logs, the metrics endpoint on, the
    /// periodic check of its source (database or upstream) and history rows
    /// an hour out, and nothing inherited that would change what it does.
    pub(crate) fn readyd_settings(
        &self,
        command: &mut tokio::process::Command,
        instance: &str,
        data_dir: &std::path::Path,
    ) {
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--environment", "bench"])
            .arg("--instance")
            .arg(instance)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--database-check", "interval=1h&timeout=2s&failures=3"])
            .args(["--history-interval", "1h", "--log-format", "text", "--log"])
            .arg(&self.plan.readyd_log)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("DATABASE_URL")
            .env_remove("READYD_ADMIN_TOKEN")
            .env_remove("READYD_READ_TOKEN")
            .env_remove("READYD_REPLICATION_TOKEN")
            .env_remove("READYD_UPSTREAM")
            .env_remove("READYD_CHECKS")
            .env_remove("READYD_LOG")
            .env_remove("READYD_CLIENT_TOKEN")
            .env_remove("READYD_CLIENT_RATE_LIMIT")
            .env_remove("READYD_HTTP_LISTEN")
            .env_remove("READYD_CORS_ORIGIN")
            .env("NO_COLOR", "1");
    }

    /// The baseline server, as a pinned child or a task.
    async fn start_baseline(&self) -> Server {
        match &self.baseline {
            BaselineMode::Child(program) => {
                let mut command = self.pinning.server_command(program);
                command.arg("--serve-baseline");
                Server::spawn(command, baseline::address_in).await.0
            }
            BaselineMode::InProcess => {
                let stop = CancellationToken::new();
                let addr = baseline::start(stop.clone()).await;
                Server::in_process(addr, stop)
            }
        }
    }

    /// Runs `scenarios` and returns their figures.
    pub async fn run(&self, scenarios: &[Scenario]) -> Results {
        let wants = |scenario: Scenario| scenarios.contains(&scenario);
        let plan = &self.plan;
        let db = TestDb::new().await;
        seed(&db, plan).await;
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        let mut results = Results::default();

        if wants(Scenario::Start) {
            let separator = if db.url.contains('?') { '&' } else { '?' };
            let plain = format!("{}{separator}sslmode=disable", db.url);
            for _ in 0..plan.starts {
                for (url, starts) in [
                    (&db.url, &mut results.starts),
                    (&plain, &mut results.starts_plain),
                ] {
                    let (server, took) = self.start_readyd(url, data_dir.path(), &[]).await;
                    starts.push(took);
                    server.stop().await;
                }
            }
        }

        let on_one_readyd = scenarios.iter().any(|scenario| {
            !matches!(
                scenario,
                Scenario::Start | Scenario::Relay | Scenario::Ofrep | Scenario::OfrepBulk
            )
        });
        if on_one_readyd {
            self.run_on_one_readyd(&db, data_dir.path(), &wants, &mut results)
                .await;
        }
        // A readyd of their own, alone on the server core.
        if wants(Scenario::Ofrep) || wants(Scenario::OfrepBulk) {
            let (single, bulk) = (wants(Scenario::Ofrep), wants(Scenario::OfrepBulk));
            results.ofrep = Some(self.ofrep(&db, data_dir.path(), single, bulk).await);
        }
        // After the other scenarios' readyd has stopped: the database then
        // has the upstream's sessions only (and this program's).
        if wants(Scenario::Relay) {
            results.relay = Some(self.relay(&db).await);
        }
        results
    }

    /// The scenarios that share one readyd on `db`.
    async fn run_on_one_readyd(
        &self,
        db: &TestDb,
        data_dir: &std::path::Path,
        wants: &dyn Fn(Scenario) -> bool,
        results: &mut Results,
    ) {
        let plan = &self.plan;
        let (readyd, _) = self.start_readyd(&db.url, data_dir, &[]).await;
        let mut baseline_bytes = None;
        let idle_bytes = if wants(Scenario::Memory) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            readyd.rss_bytes()
        } else {
            None
        };

        if wants(Scenario::Evaluate) || wants(Scenario::Batch) || wants(Scenario::Probe) {
            let baseline = self.start_baseline().await;
            if wants(Scenario::Memory) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                baseline_bytes = baseline.rss_bytes();
            }
            let check = |channel: Channel, _: &mut Dice| check_once(channel, "");
            results.baseline = Some(throughput(&baseline, plan.shape, check).await);
            if wants(Scenario::Evaluate) {
                let call = |channel: Channel, dice: &mut Dice| {
                    evaluate_once(channel, random_context(dice))
                };
                results.evaluate = Some(throughput(&readyd, plan.shape, call).await);
            }
            if wants(Scenario::Batch) {
                let keys: Arc<Vec<String>> = Arc::new(
                    (0..BATCH.min(plan.flags))
                        .map(|i| format!("bench_flag_{i:04}"))
                        .collect(),
                );
                let call = move |channel: Channel, dice: &mut Dice| {
                    let request = pb::EvaluateFlagsRequest {
                        keys: keys.as_ref().clone(),
                        context: random_context(dice),
                        ..Default::default()
                    };
                    async move {
                        let response = FlagServiceClient::new(channel)
                            .evaluate_flags(request)
                            .await
                            .map_err(failed)?;
                        let evaluated = response.get_ref().results.len();
                        if evaluated == BATCH {
                            Ok(())
                        } else {
                            Err(format!("{evaluated} results for {BATCH} keys"))
                        }
                    }
                };
                results.batch = Some(throughput(&readyd, plan.shape, call).await);
            }
            results.baseline_after = Some(throughput(&baseline, plan.shape, check).await);
            if wants(Scenario::Probe) {
                results.baseline_sequential =
                    Some(probe_sequentially(&baseline, plan.shape.duration, "").await);
                results.probe = Some(self.probe_with_hung_dependency(db, data_dir).await);
            }
            baseline.stop().await;
        }

        if wants(Scenario::Queries) {
            results.queries = Some(self.queries(db, &readyd).await);
        }

        if wants(Scenario::Propagation) || wants(Scenario::Memory) {
            let (propagation, watching_bytes) = self.propagation(db, &readyd).await;
            if wants(Scenario::Propagation) {
                results.propagation = Some(propagation);
            }
            if wants(Scenario::Memory) {
                results.memory = Some(Memory {
                    idle_bytes,
                    watching_bytes,
                    baseline_bytes,
                    streams: plan.subscribers,
                });
            }
        }

        readyd.stop().await;
    }

    /// A second readyd with one check whose peer accepts connections and
    /// never answers, probed one request at a time.
    async fn probe_with_hung_dependency(
        &self,
        db: &TestDb,
        data_dir: &std::path::Path,
    ) -> LoadReport {
        let hung = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hung_addr = hung.local_addr().expect("addr");
        let holder = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((stream, _)) = hung.accept().await {
                held.push(stream);
            }
        });
        let check =
            format!("hung=http://{hung_addr}/healthz?timeout=2s&interval=100ms&critical=false");
        let (server, _) = self
            .start_readyd(&db.url, data_dir, &["--check".to_owned(), check])
            .await;
        // Let the check start its first (hung) attempt.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = probe_sequentially(&server, self.plan.shape.duration, "readiness").await;
        server.stop().await;
        holder.abort();
        report
    }

    /// Runs `plan.evaluations` evaluations, then as many probes, and
    /// counts the connections to the database (readyd's pool and listener)
    /// that started a statement meanwhile.
    async fn queries(&self, db: &TestDb, readyd: &Server) -> Queries {
        let mut stats = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        let count = self.plan.evaluations;
        let channels = load::connect(readyd.addr, self.plan.shape.connections).await;
        let concurrency = self.plan.shape.concurrency;
        let cap = Duration::from_secs(600);

        let since = database_now(&mut stats).await;
        let call = |channel: Channel, dice: &mut Dice| evaluate_once(channel, random_context(dice));
        let evaluations = load::run(&channels, concurrency, cap, Some(count), call).await;
        let during_evaluations = busy_connections(&mut stats, since).await;
        let since = database_now(&mut stats).await;
        let call = |channel: Channel, _: &mut Dice| check_once(channel, "readiness");
        let probes = load::run(&channels, concurrency, cap, Some(count), call).await;
        let during_probes = busy_connections(&mut stats, since).await;
        let _ = stats.close().await;
        Queries {
            evaluations: evaluations.requests,
            during_evaluations,
            probes: probes.requests,
            during_probes,
        }
    }

    /// Opens `plan.subscribers` WatchFlags streams, reads readyd's RSS, then
    /// updates the watched flag by plain SQL `plan.updates` times, one at a
    /// time, timing each delivery from the moment the UPDATE was sent.
    async fn propagation(&self, db: &TestDb, readyd: &Server) -> (Propagation, Option<u64>) {
        let subscribers = self.plan.subscribers;
        let connections = subscribers.div_ceil(STREAMS_PER_CONNECTION);
        let channels = load::connect(readyd.addr, connections).await;
        // (update, received at); update None means "snapshot received".
        let (tx, mut rx) = mpsc::unbounded_channel::<(Option<usize>, Instant)>();
        let mut tasks = Vec::with_capacity(subscribers);
        for subscriber in 0..subscribers {
            let channel = channels[subscriber % channels.len()].clone();
            tasks.push(tokio::spawn(subscribe(channel, tx.clone())));
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ready = 0;
        while ready < subscribers {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some((None, _))) => ready += 1,
                Ok(Some((Some(_), _))) => {}
                Ok(None) | Err(_) => {
                    panic!("{ready} of {subscribers} subscribers got their snapshot")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let watching_bytes = readyd.rss_bytes();

        let mut sent_at = Vec::with_capacity(self.plan.updates);
        let mut received = vec![0usize; self.plan.updates];
        let mut latency_us = load::histogram();
        for update in 0..self.plan.updates {
            sent_at.push(Instant::now());
            sqlx::query("UPDATE feature_flags SET description = $1 WHERE key = $2")
                .bind(format!("update-{update}"))
                .bind(WATCHED_FLAG)
                .execute(&db.pool)
                .await
                .expect("update the watched flag");
            let wait_until = Instant::now() + Duration::from_secs(10);
            while received[update] < subscribers {
                match tokio::time::timeout_at(wait_until.into(), rx.recv()).await {
                    Ok(Some((Some(seen), at))) if seen < sent_at.len() => {
                        received[seen] += 1;
                        load::record(&mut latency_us, at.duration_since(sent_at[seen]));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        for task in tasks {
            task.abort();
        }
        let propagation = Propagation {
            subscribers,
            updates: self.plan.updates,
            received: received.iter().map(|&n| n as u64).sum(),
            latency_us,
        };
        (propagation, watching_bytes)
    }
}

/// One WatchFlags subscriber: reports its snapshot, then each new
/// `update-N` description of the watched flag it sees (as a change, or in
/// a fresh snapshot after falling behind).
async fn subscribe(channel: Channel, events: mpsc::UnboundedSender<(Option<usize>, Instant)>) {
    use pb::flag_change::Change;
    use pb::watch_flags_response::Event;
    let Ok(response) = FlagServiceClient::new(channel)
        .watch_flags(pb::WatchFlagsRequest::default())
        .await
    else {
        return;
    };
    let mut stream = response.into_inner();
    let mut snapshot_seen = false;
    let mut last_update = None;
    let mut note = |flag: &pb::Flag, at: Instant| {
        let update = flag
            .description
            .strip_prefix("update-")
            .and_then(|n| n.parse::<usize>().ok());
        if flag.key == WATCHED_FLAG && update.is_some() && update > last_update {
            last_update = update;
            let _ = events.send((update, at));
        }
    };
    while let Ok(Some(message)) = stream.message().await {
        let at = Instant::now();
        match message.event {
            Some(Event::Snapshot(snapshot)) => {
                for flag in &snapshot.flags {
                    note(flag, at);
                }
                if snapshot.last && !snapshot_seen {
                    snapshot_seen = true;
                    let _ = events.send((None, at));
                }
            }
            Some(Event::Change(change)) => {
                if let Some(Change::Upserted(flag)) = &change.change {
                    note(flag, at);
                }
            }
            Some(Event::Freshness(_)) | None => {}
        }
    }
}
