//! The OFREP scenarios: readyd's HTTP surface over HTTP/1.1 keep-alive, next
//! to the HTTP baseline (a bare axum server answering a constant body,
//! `baseline::start_http`) measured in the same run. In each round
//! (`--ofrep-rounds`) the baseline and readyd's runs take turns every
//! `--ofrep-slice` (250 ms) until each has had `--duration`, and readyd's
//! figures are compared with the baseline's of the same round: a virtual
//! machine's speed moves by a third within seconds, and turns this short
//! move both alike.
//!
//! - `ofrep`: `POST /ofrep/v1/evaluate/flags/bench_rollout` with a random
//!   user, no token (the run sets no read token, as for the gRPC scenarios).
//! - `ofrep-bulk`: `POST /ofrep/v1/evaluate/flags` with a client token,
//!   which sees exactly the 50 flags marked `client_visible`, and the
//!   `If-None-Match` of the answer's `ETag`: readyd evaluates the 50 flags,
//!   finds the answer unchanged and says `304` without a body, which is
//!   what a browser page polling its flags costs.
//!
//! readyd runs on its own for these (a second readyd, after the scenarios
//! sharing one have stopped), with `--http-listen`, one client token and
//! `--client-rate-limit 0`: the default limit (1,000 requests per second
//! per token) would answer most of the load `429`.
//!
//! HTTP/1.1 has one request in flight per connection, so every caller has
//! a connection of its own: `--concurrency` connections (32 by default),
//! with TCP_NODELAY on the client's side.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::baseline;
use crate::http1::{self, Connection, exchange};
use crate::load;
use crate::load::Dice;
use crate::process::Server;
use crate::scenarios::{BATCH, BaselineMode, Bench, ROLLOUT_FLAG, Throughput, measure_for};
use crate::support::TestDb;

/// The client token of the bulk scenario.
const CLIENT_TOKEN: &str = "loadgen-client-token";
/// Users drawn at random by the single scenario (as the gRPC one).
const USERS: u64 = 10_000;
/// The path of the single scenario: the gRPC EvaluateFlag scenario's flag.
const SINGLE_PATH: &str = "/ofrep/v1/evaluate/flags/bench_rollout";
/// The path of a bulk evaluation.
const BULK_PATH: &str = "/ofrep/v1/evaluate/flags";
/// The bulk scenario's context: one page's user, a target of no flag.
const BULK_BODY: &str = r#"{"context":{"targetingKey":"visitor-1"}}"#;
/// The JSON content type.
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A single evaluation's body: a random user who is not an admin or staff
/// (the gRPC scenario's context).
fn single_body(dice: &mut Dice) -> String {
    format!(
        r#"{{"context":{{"targetingKey":"user-{}","roles":["member"]}}}}"#,
        dice.below(USERS)
    )
}

/// One single evaluation with `body`, which must answer 200 with a value.
async fn evaluate_once(connection: Connection, body: String) -> Result<(), String> {
    let answer = exchange(&connection, "POST", SINGLE_PATH, &[JSON], body.as_bytes()).await?;
    if answer.status != 200 || !contains(&answer.body, b"\"value\"") {
        return Err(format!("{}: {}", answer.status, answer.text()));
    }
    Ok(())
}

/// One request to the HTTP baseline, as [`evaluate_once`] to readyd.
async fn baseline_once(connection: Connection, body: String) -> Result<(), String> {
    let answer = exchange(&connection, "POST", SINGLE_PATH, &[JSON], body.as_bytes()).await?;
    if answer.status == 200 && answer.body == baseline::HTTP_BODY.as_bytes() {
        Ok(())
    } else {
        Err(format!("the baseline answered {}", answer.status))
    }
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// What the bulk callers share: the `Authorization` value, the ETag to
/// send, and how often the answer was a 200 instead (the ETag changed:
/// readyd's ticket window, 10 min, rolled over during the run).
#[derive(Clone)]
struct BulkState {
    authorization: Arc<str>,
    etag: Arc<RwLock<Arc<str>>>,
    refetches: Arc<AtomicU64>,
}

/// A bulk evaluation with `authorization`, and `If-None-Match: etag` when
/// given.
async fn bulk(
    connection: &Connection,
    authorization: &str,
    etag: Option<&str>,
) -> Result<http1::Answer, String> {
    let mut headers = vec![JSON, ("Authorization", authorization)];
    if let Some(etag) = etag {
        headers.push(("If-None-Match", etag));
    }
    exchange(
        connection,
        "POST",
        BULK_PATH,
        &headers,
        BULK_BODY.as_bytes(),
    )
    .await
}

/// One bulk evaluation with the shared ETag: 304 expected; a 200 with a
/// new ETag is taken (and counted), anything else is an error.
async fn bulk_once(connection: Connection, state: BulkState) -> Result<(), String> {
    let etag = Arc::clone(
        &state
            .etag
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let answer = bulk(&connection, &state.authorization, Some(&etag)).await?;
    match answer.status {
        304 if answer.body.is_empty() => Ok(()),
        200 => {
            let etag = answer.header("etag").ok_or("a 200 without an ETag")?;
            *state
                .etag
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = etag.into();
            state.refetches.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        status => Err(format!("{status}: {}", answer.text())),
    }
}

/// One round of the OFREP scenarios: the HTTP baseline and readyd's runs,
/// loaded in turn, a slice each.
pub struct OfrepRound {
    /// The HTTP baseline, its slices of this round added up.
    pub baseline: Throughput,
    /// Single evaluations, when run.
    pub single: Option<Throughput>,
    /// Bulk evaluations answered 304, when run.
    pub bulk: Option<Throughput>,
}

/// The OFREP scenarios' figures.
pub struct Ofrep {
    /// The rounds, in the order run.
    pub rounds: Vec<OfrepRound>,
    /// How long each server was loaded in its turn.
    pub slice: Duration,
    /// Flags in the bulk answer (read once, with a 200).
    pub bulk_flags: usize,
    /// Bulk requests answered 200 instead of 304 during the runs (a new
    /// ETag: readyd's ticket window rolled over).
    pub bulk_refetches: u64,
    /// HTTP/1.1 connections (one request in flight on each).
    pub connections: usize,
}

/// The address in readyd's "readyd is serving" line's `http=` field.
fn readyd_http_address(line: &str) -> Option<SocketAddr> {
    if !line.contains("readyd is serving") {
        return None;
    }
    line.split(" http=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Polls `GET /readyz` on `addr` until it answers 200.
async fn wait_until_ready(addr: SocketAddr) {
    let connection = http1::connect(addr, 1).await.remove(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match exchange(&connection, "GET", "/readyz", &[], &[]).await {
            Ok(answer) if answer.status == 200 => return,
            Ok(_) => {}
            Err(error) => panic!("readyd's /readyz: {error}"),
        }
        assert!(
            Instant::now() < deadline,
            "readyd did not turn ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Bench {
    /// The HTTP baseline, as a pinned child or a task.
    async fn start_http_baseline(&self) -> Server {
        match &self.baseline {
            BaselineMode::Child(program) => {
                let mut command = self.pinning.server_command(program);
                command.arg("--serve-http-baseline");
                Server::spawn(command, baseline::http_address_in).await.0
            }
            BaselineMode::InProcess => {
                let stop = CancellationToken::new();
                let addr = baseline::start_http(stop.clone()).await;
                Server::in_process(addr, stop)
            }
        }
    }

    /// readyd with its HTTP surface, the client token and no rate limit,
    /// pinned like every server; its `addr` is the HTTP one.
    async fn start_http_readyd(&self, db: &TestDb, data_dir: &Path) -> Server {
        let mut command = self.pinning.server_command(&self.readyd);
        self.readyd_settings(&mut command, "loadgen-http", data_dir);
        command
            .arg("--database-url")
            .arg(&db.url)
            .args(["--http-listen", "127.0.0.1:0", "--client-rate-limit", "0"])
            .env("READYD_CLIENT_TOKEN", CLIENT_TOKEN);
        let (server, _) = Server::spawn(command, readyd_http_address).await;
        wait_until_ready(server.addr).await;
        server
    }

    /// Runs the OFREP scenarios wanted (`single`, `bulk`) on `db`.
    pub async fn ofrep(&self, db: &TestDb, data_dir: &Path, single: bool, bulk: bool) -> Ofrep {
        assert!(
            SINGLE_PATH.ends_with(ROLLOUT_FLAG),
            "the gRPC scenario's flag"
        );
        // Exactly the bulk's flags are client-visible (before readyd starts,
        // so its first snapshot has them).
        sqlx::query(
            "UPDATE feature_flags SET client_visible = (key IN \
               (SELECT format('bench_flag_%s', lpad(i::text, 4, '0')) \
                FROM generate_series(0, $1 - 1) AS i))",
        )
        .bind(BATCH as i64)
        .execute(&db.pool)
        .await
        .expect("mark the client-visible flags");

        let shape = self.plan.shape;
        let connections = shape.concurrency.max(1);
        let readyd = self.start_http_readyd(db, data_dir).await;
        let baseline = self.start_http_baseline().await;

        let base_connections = http1::connect(baseline.addr, connections).await;
        let base_call =
            |connection: Connection, dice: &mut Dice| baseline_once(connection, single_body(dice));
        let readyd_connections = http1::connect(readyd.addr, connections).await;

        let (mut bulk_flags, mut bulk_state) = (0, None);
        if bulk {
            let authorization: Arc<str> = format!("Bearer {CLIENT_TOKEN}").into();
            let first = self::bulk(&readyd_connections[0], &authorization, None)
                .await
                .expect("a first bulk evaluation");
            assert_eq!(first.status, 200, "{}", first.text());
            let answer: serde_json::Value =
                serde_json::from_slice(&first.body).expect("a JSON bulk answer");
            bulk_flags = answer["flags"].as_array().map_or(0, Vec::len);
            let etag = first.header("etag").expect("the bulk answer has an ETag");
            bulk_state = Some(BulkState {
                authorization,
                etag: Arc::new(RwLock::new(etag.into())),
                refetches: Arc::new(AtomicU64::new(0)),
            });
        }

        // Each server in turn for a slice, so that the machine's speed,
        // which on a virtual machine moves by a third within seconds, is
        // the same for the baseline and readyd in every round.
        let slice = self.plan.ofrep_slice;
        let slices = (shape.duration.as_secs_f64() / slice.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
        let concurrency = shape.concurrency;
        let evaluate =
            |connection: Connection, dice: &mut Dice| evaluate_once(connection, single_body(dice));
        let bulk_call = bulk_state.clone().map(|state| {
            move |connection: Connection, _: &mut Dice| bulk_once(connection, state.clone())
        });
        let mut rounds = Vec::with_capacity(self.plan.ofrep_rounds);
        for _ in 0..self.plan.ofrep_rounds {
            // Warm, unmeasured: connections, caches and the allocator.
            let warmup = shape.warmup;
            load::run(&base_connections, concurrency, warmup, None, base_call).await;
            if single {
                load::run(&readyd_connections, concurrency, warmup, None, evaluate).await;
            }
            if let Some(call) = &bulk_call {
                load::run(&readyd_connections, concurrency, warmup, None, call.clone()).await;
            }
            let mut round = OfrepRound {
                baseline: Throughput::empty(),
                single: single.then(Throughput::empty),
                bulk: bulk_call.as_ref().map(|_| Throughput::empty()),
            };
            for _ in 0..slices {
                round.baseline.add(
                    measure_for(&baseline, &base_connections, concurrency, slice, base_call).await,
                );
                if let Some(total) = &mut round.single {
                    total.add(
                        measure_for(&readyd, &readyd_connections, concurrency, slice, evaluate)
                            .await,
                    );
                }
                if let (Some(total), Some(call)) = (&mut round.bulk, &bulk_call) {
                    total.add(
                        measure_for(
                            &readyd,
                            &readyd_connections,
                            concurrency,
                            slice,
                            call.clone(),
                        )
                        .await,
                    );
                }
            }
            rounds.push(round);
        }
        drop((base_connections, readyd_connections));
        baseline.stop().await;
        readyd.stop().await;
        Ofrep {
            rounds,
            slice,
            bulk_flags,
            bulk_refetches: bulk_state.map_or(0, |state| state.refetches.load(Ordering::Relaxed)),
            connections,
        }
    }
}
