//! Health end to end: declared checks running in the background, the
//! report (GetHealth, WatchHealth), probe names (`dep.<name>`, `readiness`,
//! `startup`) seen through grpc.health.v1, the history (ListHealthHistory,
//! seed property 2), and GetHealth always answering (seed property 3) with
//! hung checks, with the database cut and with no checks declared.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use readyd::api::pb::grpc_health_v1::HealthCheckRequest;
use readyd::api::pb::grpc_health_v1::health_check_response::ServingStatus;
use readyd::api::pb::grpc_health_v1::health_client::HealthClient;
use readyd::api::pb::readyd::v1 as pb;
use readyd::api::pb::readyd::v1::flag_service_client::FlagServiceClient;
use readyd::api::pb::readyd::v1::health_service_client::HealthServiceClient;
use readyd::store::Store;
use serde_json::{Value, json};
use support::proxy::{Target, TcpProxy};
use support::{TestDb, TestServer, next, serve_args, wait_for_probe};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

/// A peer that accepts connections and never answers: the worst kind of
/// dependency, since only a timeout ends a call to it.
struct HungPeer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HungPeer {
    async fn start() -> HungPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        HungPeer { addr, task }
    }
}

impl Drop for HungPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP port that can be opened and closed under a check. The port stays
/// reserved while closed (a bound socket that never listens, sharing it
/// through SO_REUSEPORT), so reopening cannot find it taken by another
/// process.
struct Gate {
    addr: SocketAddr,
    /// Holds the port; it never listens, so while nothing else does,
    /// connections are refused.
    _reserved: tokio::net::TcpSocket,
    task: Option<JoinHandle<()>>,
}

impl Gate {
    async fn open() -> Gate {
        let reserved = reusable_socket();
        reserved
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = reserved.local_addr().expect("addr");
        let mut gate = Gate {
            addr,
            _reserved: reserved,
            task: None,
        };
        gate.reopen().await;
        gate
    }

    fn serve(&mut self, listener: TcpListener) {
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }));
    }

    /// Stops listening: connections are refused.
    async fn close(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn reopen(&mut self) {
        let socket = reusable_socket();
        socket.bind(self.addr).expect("bind the reserved port");
        self.serve(socket.listen(64).expect("listen"));
    }
}

/// A TCP socket that may share its port with the gate's other sockets.
fn reusable_socket() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn probe(channel: &Channel, name: &str) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: name.to_owned(),
    });
    // The kubelet's default probe timeout.
    request.set_timeout(Duration::from_secs(1));
    Ok(HealthClient::new(channel.clone())
        .check(request)
        .await?
        .into_inner()
        .status())
}

async fn report(channel: &Channel) -> pb::HealthReport {
    HealthServiceClient::new(channel.clone())
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("GetHealth never fails")
        .into_inner()
}

fn check<'a>(report: &'a pb::HealthReport, name: &str) -> &'a pb::CheckResult {
    report
        .checks
        .iter()
        .find(|check| check.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:?}"))
}

/// Polls GetHealth until `done` holds, failing after 20 s.
async fn report_until(
    channel: &Channel,
    what: &str,
    done: impl Fn(&pb::HealthReport) -> bool,
) -> pb::HealthReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let current = report(channel).await;
        if done(&current) {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached; last report {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every field a report must carry, whatever the checks do.
#[track_caller]
fn assert_complete(report: &pb::HealthReport) {
    assert_ne!(report.status(), pb::HealthStatus::Unspecified, "{report:?}");
    assert_eq!(report.readyd_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(report.environment, "test");
    assert_eq!(report.instance, "test-instance");
    assert!(report.timestamp.is_some(), "{report:?}");
    assert!(report.uptime.is_some(), "{report:?}");
    assert_eq!(report.checks[0].name, "database", "{report:?}");
    for check in &report.checks {
        assert!(!check.name.is_empty());
        assert!(!check.target.is_empty(), "{check:?}");
        assert_ne!(check.state(), pb::CheckState::Unspecified, "{check:?}");
    }
}

#[tokio::test]
async fn with_no_checks_declared_the_report_has_every_field() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO app_config (key, environment, value) VALUES \
           ('app_version', '*', '\"2.4.1\"'), ('maintenance_mode', 'test', 'true'), \
           ('maintenance_message', '*', '\"back at noon\"') \
         ON CONFLICT (key, environment) DO UPDATE SET value = EXCLUDED.value",
    )
    .execute(&db.pool)
    .await
    .expect("config");
    let server = TestServer::start(serve_args(&db.url)).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    let report = report(&channel).await;
    assert_complete(&report);
    assert_eq!(report.status(), pb::HealthStatus::Healthy, "{report:?}");
    assert_eq!(report.app_version, "2.4.1");
    assert!(report.maintenance_mode);
    assert_eq!(report.maintenance_message, "back at noon");
    assert!(report.stale_for.is_none());
    assert_eq!(report.checks.len(), 1);
    let database = check(&report, "database");
    assert_eq!(database.state(), pb::CheckState::Passing);
    // The snapshot is loaded: the database no longer gates readiness.
    assert!(!database.critical);
    assert!(database.latency.is_some() && database.last_success.is_some());
    assert!(database.last_checked.is_some());
    assert_eq!(database.consecutive_failures, 0);
    assert!(database.target.starts_with("postgres"), "{database:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_hung_dependency_never_slows_probes_or_reports() {
    let db = TestDb::new().await;
    let hung = HungPeer::start().await;
    let gate = Gate::open().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![
        format!(
            "slow=http://{}/healthz?timeout=600ms&interval=100ms&failures=1&critical=false",
            hung.addr
        ),
        format!("gate=tcp://{}?interval=200ms", gate.addr),
    ];
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    // Every probe answers within the kubelet's 1 s while `slow` hangs on
    // every attempt.
    for _ in 0..200 {
        assert_eq!(
            probe(&channel, "readiness").await.expect("probe"),
            ServingStatus::Serving
        );
        assert_eq!(
            probe(&channel, "liveness").await.expect("probe"),
            ServingStatus::Serving
        );
    }
    assert_eq!(
        probe(&channel, "dep.slow").await.expect("probe"),
        ServingStatus::NotServing
    );
    assert_eq!(
        probe(&channel, "dep.gate").await.expect("probe"),
        ServingStatus::Serving
    );
    let report = report(&channel).await;
    assert_complete(&report);
    // A non-critical failure degrades; it does not make readyd unready.
    assert_eq!(report.status(), pb::HealthStatus::Degraded, "{report:?}");
    let slow = check(&report, "slow");
    assert_eq!(slow.state(), pb::CheckState::Failing);
    assert!(!slow.critical);
    assert!(
        slow.last_error.starts_with("no answer within 600ms"),
        "{slow:?}"
    );
    assert!(slow.last_success.is_none());
    assert_eq!(check(&report, "gate").state(), pb::CheckState::Passing);
    server.stop().await;
}

#[tokio::test]
async fn startup_waits_for_the_first_round_of_checks() {
    let db = TestDb::new().await;
    let hung = HungPeer::start().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![format!("slow=http://{}/?timeout=1500ms", hung.addr)];
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    // The first attempt of `slow` takes 1.5 s: until then readyd has not
    // started and is not ready, though it answers.
    assert_eq!(
        probe(&channel, "startup").await.expect("probe"),
        ServingStatus::NotServing
    );
    assert_eq!(
        probe(&channel, "readiness").await.expect("probe"),
        ServingStatus::NotServing
    );
    assert_eq!(
        probe(&channel, "liveness").await.expect("probe"),
        ServingStatus::Serving
    );
    let pending = report(&channel).await;
    assert_complete(&pending);
    assert_eq!(check(&pending, "slow").state(), pb::CheckState::Pending);
    assert_eq!(pending.status(), pb::HealthStatus::Degraded);
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    // The first result counts at once: a critical failure, so not ready.
    let report = report(&channel).await;
    assert_eq!(check(&report, "slow").state(), pb::CheckState::Failing);
    assert_eq!(report.status(), pb::HealthStatus::Unhealthy);
    assert_eq!(
        probe(&channel, "readiness").await.expect("probe"),
        ServingStatus::NotServing
    );
    assert_eq!(
        probe(&channel, "liveness").await.expect("probe"),
        ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn a_check_fails_only_after_consecutive_failures_and_recovers_at_once() {
    let db = TestDb::new().await;
    let mut gate = Gate::open().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![format!(
        "gate=tcp://{}?interval=400ms&timeout=300ms&failures=3",
        gate.addr
    )];
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "readiness", ServingStatus::Serving).await;
    let mut readiness = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut dep = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "dep.gate".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next(&mut readiness).await.expect("current").status(),
        ServingStatus::Serving
    );
    assert_eq!(
        next(&mut dep).await.expect("current").status(),
        ServingStatus::Serving
    );

    gate.close().await;
    // One failure is a warning: the report degrades, probes still serve.
    let warned = report_until(&channel, "warning", |report| {
        check(report, "gate").state() == pb::CheckState::Warning
    })
    .await;
    let gate_check = check(&warned, "gate");
    assert_eq!(gate_check.consecutive_failures, 1, "{gate_check:?}");
    assert!(!gate_check.last_error.is_empty());
    assert_eq!(warned.status(), pb::HealthStatus::Degraded);
    assert_eq!(
        probe(&channel, "readiness").await.expect("probe"),
        ServingStatus::Serving
    );
    // The third failure in a row fails it: critical, so not ready.
    let failed = report_until(&channel, "failing", |report| {
        check(report, "gate").state() == pb::CheckState::Failing
    })
    .await;
    assert_eq!(check(&failed, "gate").consecutive_failures, 3);
    assert_eq!(failed.status(), pb::HealthStatus::Unhealthy);
    assert_eq!(
        next(&mut readiness).await.expect("change").status(),
        ServingStatus::NotServing
    );
    assert_eq!(
        next(&mut dep).await.expect("change").status(),
        ServingStatus::NotServing
    );

    gate.reopen().await;
    // One pass is enough to recover.
    assert_eq!(
        next(&mut readiness).await.expect("change").status(),
        ServingStatus::Serving
    );
    assert_eq!(
        next(&mut dep).await.expect("change").status(),
        ServingStatus::Serving
    );
    let healed = report(&channel).await;
    let gate_check = check(&healed, "gate");
    assert_eq!(gate_check.state(), pb::CheckState::Passing);
    assert_eq!(gate_check.consecutive_failures, 0);
    // The last error stays visible after recovery.
    assert!(!gate_check.last_error.is_empty());
    assert_eq!(healed.status(), pb::HealthStatus::Healthy);
    server.stop().await;
}

#[tokio::test]
async fn a_database_cut_degrades_readyd_but_it_keeps_serving_flags() {
    let db = TestDb::new().await;
    sqlx::query("INSERT INTO feature_flags (key, enabled) VALUES ('checkout', true)")
        .execute(&db.pool)
        .await
        .expect("flag");
    let proxy = TcpProxy::start(Target::of_url(&db.url)).await;
    let mut args = serve_args(&db.proxied_url(&proxy));
    args.database_check = "interval=200ms&timeout=500ms&failures=1".into();
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "dep.database", ServingStatus::Serving).await;
    assert_eq!(report(&channel).await.status(), pb::HealthStatus::Healthy);

    proxy.cut();
    wait_for_probe(channel.clone(), "dep.database", ServingStatus::NotServing).await;
    let cut = report(&channel).await;
    assert_complete(&cut);
    assert_eq!(cut.status(), pb::HealthStatus::Degraded, "{cut:?}");
    let database = check(&cut, "database");
    assert_eq!(database.state(), pb::CheckState::Failing);
    assert!(!database.critical);
    assert!(!database.last_error.is_empty());
    assert_eq!(
        probe(&channel, "readiness").await.expect("probe"),
        ServingStatus::Serving
    );
    // Flags are still evaluated from memory.
    let answer = FlagServiceClient::new(channel.clone())
        .evaluate_flag(pb::EvaluateFlagRequest {
            explain: false,
            key: "checkout".into(),
            context: None,
        })
        .await
        .expect("evaluate with the database cut")
        .into_inner();
    assert_eq!(answer.variant, "on");
    // The history cannot be read, and says so.
    let err = HealthServiceClient::new(channel.clone())
        .list_health_history(pb::ListHealthHistoryRequest::default())
        .await
        .expect_err("database cut");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    proxy.heal();
    wait_for_probe(channel.clone(), "dep.database", ServingStatus::Serving).await;
    let healed = report_until(&channel, "healthy again", |report| {
        report.status() == pb::HealthStatus::Healthy
    })
    .await;
    assert_eq!(check(&healed, "database").state(), pb::CheckState::Passing);
    server.stop().await;
}

#[tokio::test]
async fn watch_health_sends_the_report_on_every_change() {
    let db = TestDb::new().await;
    let mut gate = Gate::open().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![format!(
        "gate=tcp://{}?interval=100ms&failures=1&critical=false",
        gate.addr
    )];
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;
    let mut stream = HealthServiceClient::new(channel.clone())
        .watch_health(pb::WatchHealthRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await.expect("current report");
    assert_complete(&first);
    assert_eq!(first.status(), pb::HealthStatus::Healthy);
    assert_eq!(first.app_version, "0.0.0");

    sqlx::query("INSERT INTO app_config (key, environment, value) VALUES ('app_version', 'test', '\"9.9.9\"')")
        .execute(&db.pool)
        .await
        .expect("config");
    let versioned = next(&mut stream).await.expect("app version change");
    assert_eq!(versioned.app_version, "9.9.9");
    assert_eq!(versioned.status(), pb::HealthStatus::Healthy);

    gate.close().await;
    let degraded = next(&mut stream).await.expect("check change");
    assert_eq!(degraded.status(), pb::HealthStatus::Degraded);
    assert_eq!(check(&degraded, "gate").state(), pb::CheckState::Failing);
    // Unchanged results (the check keeps failing every 100 ms) send nothing.
    let quiet = tokio::time::timeout(Duration::from_millis(600), next(&mut stream)).await;
    assert!(quiet.is_err(), "unexpected report {quiet:?}");
    gate.reopen().await;
    let healed = next(&mut stream).await.expect("recovery");
    assert_eq!(healed.status(), pb::HealthStatus::Healthy);
    server.stop().await;
}

#[tokio::test]
async fn the_recorder_writes_history_on_changes_and_prunes_old_rows() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO system_health (recorded_at, instance, status, database_size_bytes, \
           active_connections, max_connections, error_count, response_time_ms) \
         VALUES (now() - interval '2 hours', 'old', 'healthy', 1, 1, 100, 0, 1)",
    )
    .execute(&db.pool)
    .await
    .expect("old row");
    let mut gate = Gate::open().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![format!(
        "gate=tcp://{}?interval=100ms&failures=1",
        gate.addr
    )];
    args.history_interval = "1s".into();
    args.history_retention = "1h".into();
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    let history = HealthServiceClient::new(channel.clone());
    let rows = |limit: u32| {
        let mut history = history.clone();
        async move {
            history
                .list_health_history(pb::ListHealthHistoryRequest {
                    since: None,
                    until: None,
                    limit,
                })
                .await
                .expect("history")
                .into_inner()
                .records
        }
    };
    let overall = |record: &pb::HealthRecord| -> Option<String> {
        let checks = record.checks.as_ref()?;
        match checks.fields.get("overall")?.kind.as_ref()? {
            prost_types::value::Kind::StringValue(status) => Some(status.clone()),
            _ => None,
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = rows(100).await;
        let healthy = records
            .iter()
            .any(|record| overall(record).as_deref() == Some("healthy"));
        if healthy && records.iter().all(|record| record.instance != "old") {
            assert!(
                records
                    .iter()
                    .all(|record| record.instance == "test-instance")
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no healthy row, or the old row is still there: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A change of the overall status is recorded at once, not at the next
    // interval.
    gate.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = rows(5).await;
        if let Some(record) = records.first()
            && overall(record).as_deref() == Some("unhealthy")
        {
            let checks = record.checks.clone().expect("checks");
            let gate_row = checks.fields.get("checks").expect("checks.checks");
            assert!(format!("{gate_row:?}").contains("failing"), "{gate_row:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no unhealthy row: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Newest first, and `limit` is honoured.
    let records = rows(3).await;
    assert!(records.len() <= 3);
    assert!(records.windows(2).all(
        |pair| pair[0].recorded_at.as_ref().map(|t| (t.seconds, t.nanos))
            >= pair[1].recorded_at.as_ref().map(|t| (t.seconds, t.nanos))
    ));
    drop(history);
    server.stop().await;
}

#[tokio::test]
async fn bad_history_requests_are_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    let mut client = HealthServiceClient::new(server.channel().await);
    let at = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
    let cases = [
        (
            pb::ListHealthHistoryRequest {
                limit: 1001,
                ..Default::default()
            },
            "limit",
        ),
        (
            pb::ListHealthHistoryRequest {
                since: at(2_000, 0),
                until: at(1_000, 0),
                limit: 0,
            },
            "until",
        ),
        (
            pb::ListHealthHistoryRequest {
                since: at(0, -1),
                until: None,
                limit: 0,
            },
            "since",
        ),
        (
            pb::ListHealthHistoryRequest {
                since: None,
                until: at(i64::MAX, 0),
                limit: 0,
            },
            "until",
        ),
    ];
    for (request, field) in cases {
        let err = client
            .list_health_history(request)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}: {err:?}");
        assert!(err.message().contains(field), "{request:?}: {err:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_bad_check_is_a_startup_error_naming_it() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    args.checks = vec![
        "cache=redis://user:Hunter2Secret@127.0.0.1:6379?interval=soon".into(),
        "disk=ftp://files.example".into(),
        "ok=tcp://127.0.0.1:1".into(),
    ];
    args.database_check = "interval=0s".into();
    let report = match readyd::startup::prepare(&args).await {
        Ok(_) => panic!("started with bad checks"),
        Err(report) => report.to_string(),
    };
    assert!(report.contains("check \"cache\""), "{report}");
    assert!(report.contains("check \"disk\""), "{report}");
    assert!(report.contains("--database-check"), "{report}");
    assert!(!report.contains("\"ok\""), "{report}");
    assert!(!report.contains("Hunter2Secret"), "{report}");
}

/// A JSON value with every number as f64: how a protobuf Struct carries it.
fn as_struct_json(value: &Value) -> Value {
    match value {
        Value::Number(number) => json!(number.as_f64().unwrap_or(f64::NAN)),
        Value::Array(items) => Value::Array(items.iter().map(as_struct_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), as_struct_json(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn from_pb(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match value.kind.as_ref() {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(flag)) => Value::Bool(*flag),
        Some(Kind::NumberValue(number)) => json!(number),
        Some(Kind::StringValue(text)) => Value::String(text.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(from_pb).collect()),
        Some(Kind::StructValue(object)) => Value::Object(
            object
                .fields
                .iter()
                .map(|(key, value)| (key.clone(), from_pb(value)))
                .collect(),
        ),
    }
}

fn check_json() -> impl Strategy<Value = Value> {
    let state = prop::sample::select(vec!["pending", "passing", "warning", "failing"]);
    let one = (
        state,
        any::<bool>(),
        prop::option::of(0.0f64..10_000.0),
        0u32..1000,
        prop::option::of("[ -~]{0,40}"),
    )
        .prop_map(|(state, critical, latency, failures, error)| {
            json!({
                "state": state,
                "critical": critical,
                "latency_ms": latency,
                "consecutive_failures": failures,
                "last_error": error,
            })
        });
    (
        prop::sample::select(vec!["healthy", "degraded", "unhealthy"]),
        prop::collection::btree_map("[a-z][a-z0-9_.-]{0,12}", one, 0..6),
    )
        .prop_map(|(overall, checks)| {
            json!({ "overall": overall, "checks": checks.into_iter().collect::<BTreeMap<_, _>>() })
        })
}

// Seed property 2: rows recorded through check_system_health() read back
// through ListHealthHistory exactly as recorded, newest first, and the
// time window selects exactly the rows inside it.
#[test]
fn history_reads_back_exactly_what_was_recorded() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (db, server, store) = runtime.block_on(async {
        let db = TestDb::new().await;
        let server = TestServer::start(serve_args(&db.url)).await;
        let options: sqlx::postgres::PgConnectOptions = db.url.parse().expect("url");
        let store = Store::connect(
            options,
            2,
            Duration::from_secs(5),
            readyd::store::DbTimeouts::default(),
        )
        .await
        .expect("store");
        // Only this test's rows: the server's recorder writes its first row
        // after its first round of checks, then every 60 s; wait for that
        // row, then each case clears the table.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let rows: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM system_health WHERE instance = 'test-instance'",
            )
            .fetch_one(&db.pool)
            .await
            .expect("count history rows");
            if rows > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server recorded no first history row"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (db, server, store)
    });
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let result = runner.run(
        &(
            prop::collection::vec(("[a-z0-9-]{1,12}", check_json()), 1..6),
            "[a-z]{1,8}",
        ),
        |(rows, environment)| {
            runtime.block_on(async {
                sqlx::query("DELETE FROM system_health")
                    .execute(&db.pool)
                    .await
                    .map_err(|err| TestCaseError::fail(err.to_string()))?;
                let mut recorded = Vec::new();
                for (instance, checks) in &rows {
                    let row = store
                        .check_system_health(instance, checks, &environment)
                        .await
                        .map_err(|err| TestCaseError::fail(err.to_string()))?;
                    recorded.push((row.clone(), instance.clone(), checks.clone()));
                }
                let mut client = HealthServiceClient::new(server.channel().await);
                let listed = client
                    .list_health_history(pb::ListHealthHistoryRequest::default())
                    .await
                    .map_err(|err| TestCaseError::fail(err.to_string()))?
                    .into_inner()
                    .records;
                prop_assert_eq!(listed.len(), recorded.len());
                for (record, (row, instance, checks)) in listed.iter().zip(recorded.iter().rev()) {
                    prop_assert_eq!(record.id, row.id);
                    prop_assert_eq!(&record.instance, instance);
                    let status = match row.status.as_str() {
                        "healthy" => pb::HealthStatus::Healthy,
                        "degraded" => pb::HealthStatus::Degraded,
                        _ => pb::HealthStatus::Unhealthy,
                    };
                    prop_assert_eq!(record.status(), status);
                    prop_assert_eq!(record.database_size_bytes, row.database_size_bytes);
                    prop_assert_eq!(record.active_connections, row.active_connections);
                    prop_assert_eq!(record.max_connections, row.max_connections);
                    prop_assert_eq!(record.error_count, row.error_count);
                    prop_assert_eq!(record.response_time_ms, row.response_time_ms);
                    let read_back = record
                        .checks
                        .as_ref()
                        .map(|checks| {
                            from_pb(&prost_types::Value {
                                kind: Some(prost_types::value::Kind::StructValue(checks.clone())),
                            })
                        })
                        .unwrap_or(Value::Null);
                    prop_assert_eq!(read_back, as_struct_json(checks));
                    let at = record.recorded_at.expect("recorded_at");
                    let expected = row.checked_at;
                    prop_assert_eq!(
                        (at.seconds, at.nanos),
                        (
                            expected.timestamp(),
                            expected.timestamp_subsec_nanos() as i32
                        )
                    );
                }
                // A window [since, until) around the middle row holds it
                // and only rows inside.
                let middle = &recorded[recorded.len() / 2].0;
                let since = middle.checked_at;
                let until = since + chrono::Duration::microseconds(1);
                let window = client
                    .list_health_history(pb::ListHealthHistoryRequest {
                        since: Some(prost_types::Timestamp {
                            seconds: since.timestamp(),
                            nanos: since.timestamp_subsec_nanos() as i32,
                        }),
                        until: Some(prost_types::Timestamp {
                            seconds: until.timestamp(),
                            nanos: until.timestamp_subsec_nanos() as i32,
                        }),
                        limit: 0,
                    })
                    .await
                    .map_err(|err| TestCaseError::fail(err.to_string()))?
                    .into_inner()
                    .records;
                let expected: Vec<i64> = recorded
                    .iter()
                    .rev()
                    .filter(|(row, _, _)| row.checked_at == since)
                    .map(|(row, _, _)| row.id)
                    .collect();
                let ids: Vec<i64> = window.iter().map(|record| record.id).collect();
                prop_assert_eq!(ids, expected);
                Ok(())
            })
        },
    );
    runtime.block_on(async {
        store.close().await;
        server.stop().await;
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// Secrets of the check URLs below: upper case and digits, which nothing
/// else in a report has.
const CHECK_SECRETS: [&str; 8] = [
    "NATST0KEN9",
    "GHT0KEN7X",
    "REDISPW4Q",
    "REDISUS3R",
    "APIK3Y8Z",
    "SSLK3Y5W",
    "GRPCT0K3N",
    "FRAGT0K3N",
];

#[track_caller]
fn assert_no_check_secret(what: &str, text: &str) {
    for secret in CHECK_SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

#[tokio::test]
async fn check_targets_never_show_a_credential_in_reports_or_history() {
    let db = TestDb::new().await;
    let mut args = serve_args(&db.url);
    // Nothing listens on port 1: every check fails at once, so errors (which
    // drivers may fill with the URL) are in the report too.
    let fast = "critical=false&interval=200ms&timeout=500ms&failures=1";
    args.checks = vec![
        format!("bus=nats://NATST0KEN9@127.0.0.1:1?{fast}"),
        format!("web=https://GHT0KEN7X@127.0.0.1:1/healthz?{fast}"),
        format!("cache=redis://:REDISPW4Q@127.0.0.1:1?{fast}"),
        format!("cache2=redis://REDISUS3R@127.0.0.1:1/0?{fast}"),
        format!("api=http://127.0.0.1:1/x?api_key=APIK3Y8Z&verbose=yes&{fast}#FRAGT0K3N"),
        format!("orders=postgres://app@127.0.0.1:1/orders?sslkey=SSLK3Y5W&sslmode=disable&{fast}"),
        format!("grpc=grpc://GRPCT0K3N@127.0.0.1:1/readiness?{fast}"),
    ];
    args.history_interval = "1s".into();
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    wait_for_probe(channel.clone(), "startup", ServingStatus::Serving).await;

    let report = report_until(&channel, "every check has run", |report| {
        report.checks.len() == 8
            && report
                .checks
                .iter()
                .all(|check| check.last_checked.is_some())
    })
    .await;
    assert_no_check_secret("GetHealth", &format!("{report:?}"));
    // What is not a secret is still shown.
    let targets: BTreeMap<&str, &str> = report
        .checks
        .iter()
        .map(|check| (check.name.as_str(), check.target.as_str()))
        .collect();
    assert_eq!(targets["bus"], "nats://***@127.0.0.1:1");
    assert_eq!(targets["web"], "https://***@127.0.0.1:1/healthz");
    assert_eq!(targets["cache"], "redis://:***@127.0.0.1:1");
    assert_eq!(targets["cache2"], "redis://***@127.0.0.1:1/0");
    assert_eq!(
        targets["api"],
        "http://127.0.0.1:1/x?api_key=***&verbose=yes#***"
    );
    assert_eq!(
        targets["orders"],
        "postgres://app@127.0.0.1:1/orders?sslkey=***&sslmode=disable"
    );
    assert_eq!(targets["grpc"], "grpc://***@127.0.0.1:1/readiness");

    let mut watch = HealthServiceClient::new(channel.clone())
        .watch_health(pb::WatchHealthRequest {})
        .await
        .expect("WatchHealth")
        .into_inner();
    let first = next(&mut watch).await.expect("a report");
    assert_no_check_secret("WatchHealth", &format!("{first:?}"));

    // The recorded history: through the API and in the table itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT checks::text FROM system_health WHERE checks ? 'checks' ORDER BY id",
        )
        .fetch_all(&db.pool)
        .await
        .expect("history rows");
        if let Some(last) = rows.last()
            && last.contains("\"bus\"")
        {
            for row in &rows {
                assert_no_check_secret("system_health.checks", row);
            }
            assert!(last.contains("nats://***@127.0.0.1:1"), "{last}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no history row with the checks: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = HealthServiceClient::new(channel.clone())
        .list_health_history(pb::ListHealthHistoryRequest {
            since: None,
            until: None,
            limit: 10,
        })
        .await
        .expect("history")
        .into_inner();
    assert!(!history.records.is_empty());
    assert_no_check_secret("ListHealthHistory", &format!("{history:?}"));
    server.stop().await;
}

#[tokio::test]
async fn check_database_callers_share_one_run() {
    let db = TestDb::new().await;
    let server = TestServer::start(serve_args(&db.url)).await;
    let channel = server.channel().await;
    let rows_before = db.count("system_health").await;
    let started = tokio::time::Instant::now();
    // Many readers at once, then one after another.
    let calls = (0..32).map(|_| {
        let mut client = HealthServiceClient::new(channel.clone());
        async move {
            client
                .check_database(pb::CheckDatabaseRequest {})
                .await
                .expect("CheckDatabase")
                .into_inner()
        }
    });
    let mut answers = futures_util::future::join_all(calls).await;
    for _ in 0..16 {
        answers.push(
            HealthServiceClient::new(channel.clone())
                .check_database(pb::CheckDatabaseRequest {})
                .await
                .expect("CheckDatabase")
                .into_inner(),
        );
    }
    let elapsed = started.elapsed();
    let runs: std::collections::BTreeSet<i64> =
        answers.iter().map(|answer| answer.record_id).collect();
    // One run per interval at most (5 s; more only on a very slow machine).
    let allowed = 1 + (elapsed.as_secs() / 5) as usize;
    assert!(runs.len() <= allowed, "{} runs in {elapsed:?}", runs.len());
    assert_eq!(
        answers.iter().filter(|answer| !answer.cached).count(),
        runs.len(),
        "every other answer says it is shared"
    );
    for answer in &answers {
        assert_eq!(answer.status(), pb::HealthStatus::Healthy);
        assert!(answer.database_size_bytes > 0);
    }
    // Only those runs wrote rows (the recorder adds at most its own few).
    let written = db.count("system_health").await - rows_before;
    assert!(written <= runs.len() as i64 + 2, "{written} rows written");
    server.stop().await;
}
