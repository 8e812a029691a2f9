//! readyd.v1.ConfigService end to end, over real gRPC on loopback and a real
//! PostgreSQL: JSON values round-trip (property 4), reads follow the
//! resolution rule for rows written by plain SQL (property 5), secrets never
//! reach a non-admin caller, the audit trail or the log (property 6), the
//! audit trail matches the changes one to one (property 7), maintenance mode
//! across two servers, resolution and redaction on reads and WatchConfigs,
//! ListConfigAudit paging, and bad input that changes nothing.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use readyd::api::convert::{from_pb_value, to_pb_value};
use readyd::api::pb::readyd::v1 as pb;
use serde_json::{Value, json};
use support::{TestDb, TestServer, admin, admin_serve_args, next};
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

use pb::config_change::Change;
use pb::config_service_client::ConfigServiceClient;
use pb::watch_configs_response::Event as WatchEvent;

type Client = ConfigServiceClient<Channel>;

/// The file the property tests keep their failing seeds in.
const REGRESSIONS: &str = "tests/config_api.proptest-regressions";

// ---------------------------------------------------------------------------
// Log capture: every line any test of this process logs, at every level.

/// Appends to the shared buffer.
#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the capturing subscriber once per process; returns its buffer.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Capture(Arc::clone(&buffer)))
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buffer
    })
}

/// Whether any captured log line contains `needle`.
fn logs_contain(needle: &str) -> bool {
    let buffer = logs().lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buffer).contains(needle)
}

fn captured_bytes() -> usize {
    logs().lock().unwrap_or_else(|e| e.into_inner()).len()
}

// ---------------------------------------------------------------------------
// Helpers.

/// A fresh database and a server with the admin token on it.
async fn start() -> (TestDb, TestServer, Client) {
    logs();
    let db = TestDb::new().await;
    let server = TestServer::start(admin_serve_args(&db.url)).await;
    let client = ConfigServiceClient::new(server.channel().await);
    (db, server, client)
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..Config::default()
    })
}

fn pb_json(value: &Value) -> Option<prost_types::Value> {
    Some(to_pb_value(value))
}

fn json_of(value: &Option<prost_types::Value>) -> Value {
    from_pb_value(value.clone().expect("a value")).expect("a JSON value")
}

fn set_request(key: &str, environment: &str, value: Value) -> pb::SetConfigRequest {
    pb::SetConfigRequest {
        key: key.into(),
        value: pb_json(&value),
        environment: environment.into(),
        ..Default::default()
    }
}

async fn set(client: &mut Client, request: pb::SetConfigRequest) -> pb::ConfigEntry {
    let what = format!("{}@{:?}", request.key, request.environment);
    client
        .set_config(admin(request))
        .await
        .unwrap_or_else(|status| panic!("set {what}: {status:?}"))
        .into_inner()
        .entry
        .expect("an entry")
}

async fn set_value(client: &mut Client, key: &str, environment: &str, value: Value) -> i64 {
    set(client, set_request(key, environment, value))
        .await
        .version
}

async fn delete(client: &mut Client, key: &str, environment: &str) -> Result<i64, Status> {
    Ok(client
        .delete_config(admin(pb::DeleteConfigRequest {
            key: key.into(),
            environment: environment.into(),
            expected_version: None,
        }))
        .await?
        .into_inner()
        .version)
}

async fn get(client: &mut Client, key: &str) -> Result<pb::ConfigEntry, Status> {
    Ok(client
        .get_config(pb::GetConfigRequest { key: key.into() })
        .await?
        .into_inner()
        .entry
        .expect("an entry"))
}

async fn get_admin(client: &mut Client, key: &str) -> Result<pb::ConfigEntry, Status> {
    Ok(client
        .get_config(admin(pb::GetConfigRequest { key: key.into() }))
        .await?
        .into_inner()
        .entry
        .expect("an entry"))
}

async fn list(
    client: &mut Client,
    request: Request<pb::ListConfigsRequest>,
) -> pb::ListConfigsResponse {
    client
        .list_configs(request)
        .await
        .expect("list")
        .into_inner()
}

fn with_actor<T>(mut request: Request<T>, actor: &str) -> Request<T> {
    request
        .metadata_mut()
        .insert("x-readyd-actor", actor.parse().expect("an ASCII actor"));
    request
}

/// Asserts an error's code and that its message names `field`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = result.expect_err("an error");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "the message names {field:?}: {status:?}"
    );
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) {
    let status = result.expect_err("an error");
    assert_eq!(status.code(), code, "{status:?}");
}

async fn last_version(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("sequence")
}

async fn session_user(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&db.pool)
        .await
        .expect("session_user")
}

/// The audit form of a value: itself, or its fingerprint when sensitive
/// ("hmac-sha256:" + the first 16 hex digits of HMAC-SHA256 of the jsonb
/// text, keyed with the database's audit key; tests/change_feed.rs checks
/// the function against ring).
async fn audit_form(db: &TestDb, value: &Value, sensitive: bool) -> Value {
    if !sensitive {
        return value.clone();
    }
    let fingerprint: String = sqlx::query_scalar("SELECT readyd_fingerprint($1::jsonb)")
        .bind(sqlx::types::Json(value))
        .fetch_one(&db.pool)
        .await
        .expect("fingerprint");
    assert_eq!(fingerprint.len(), "hmac-sha256:".len() + 16);
    Value::String(fingerprint)
}

/// An `app_config` row: key, environment, value, description, is_sensitive,
/// version, updated_by.
type ConfigLine = (String, String, String, String, bool, i64, String);

/// A `config_audit` row: id, key, environment, action, old, new, actor,
/// version.
type AuditRowLine = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
);

/// Everything a write could change: both tables and the version sequence.
#[derive(Debug, PartialEq)]
struct Dump {
    configs: Vec<ConfigLine>,
    audit: Vec<AuditRowLine>,
    sequence: (i64, bool),
}

async fn dump(db: &TestDb) -> Dump {
    Dump {
        configs: sqlx::query_as(
            "SELECT key, environment, value::text, description, is_sensitive, version, updated_by \
             FROM app_config ORDER BY key, environment",
        )
        .fetch_all(&db.pool)
        .await
        .expect("configs"),
        audit: sqlx::query_as(
            "SELECT id, key, environment, action, old_value::text, new_value::text, actor, version \
             FROM config_audit ORDER BY id",
        )
        .fetch_all(&db.pool)
        .await
        .expect("audit"),
        sequence: sqlx::query_as("SELECT last_value, is_called FROM readyd_change_version")
            .fetch_one(&db.pool)
            .await
            .expect("sequence"),
    }
}

/// What a WatchConfigs subscriber knows, built only from its stream.
#[derive(Debug, Default)]
struct Watched {
    entries: BTreeMap<String, pb::ConfigEntry>,
    versions: Vec<i64>,
    pending: Option<BTreeMap<String, pb::ConfigEntry>>,
    snapshots: usize,
    /// Every message, as `{:?}`.
    seen: Vec<String>,
}

impl Watched {
    fn apply(&mut self, message: pb::WatchConfigsResponse) {
        self.seen.push(format!("{message:?}"));
        match message.event.expect("every message has an event") {
            WatchEvent::Snapshot(part) => {
                if part.first {
                    self.pending = Some(BTreeMap::new());
                }
                let pending = self.pending.as_mut().expect("a part after a first part");
                pending.extend(part.entries.into_iter().map(|e| (e.key.clone(), e)));
                if part.last {
                    self.entries = self.pending.take().unwrap_or_default();
                    self.versions.push(part.version);
                    self.snapshots += 1;
                }
            }
            WatchEvent::Freshness(freshness) => {
                panic!("freshness {freshness:?} though not asked for")
            }
            WatchEvent::Change(change) => {
                assert!(
                    change.version > self.version(),
                    "versions grow: {} after {:?}",
                    change.version,
                    self.versions
                );
                self.versions.push(change.version);
                match change.change.expect("a change") {
                    Change::Upserted(entry) => {
                        self.entries.insert(entry.key.clone(), entry);
                    }
                    Change::DeletedKey(key) => {
                        self.entries.remove(&key);
                    }
                }
            }
        }
    }

    fn version(&self) -> i64 {
        self.versions.last().copied().unwrap_or(0)
    }

    /// Reads messages until the subscriber is at `version` or later.
    async fn catch_up(&mut self, stream: &mut Streaming<pb::WatchConfigsResponse>, version: i64) {
        while self.version() < version || self.pending.is_some() {
            let message = next(stream).await.expect("stream open");
            self.apply(message);
        }
    }
}

async fn watch(
    client: &mut Client,
    request: Request<pb::WatchConfigsRequest>,
) -> (Streaming<pb::WatchConfigsResponse>, Watched) {
    let mut stream = client
        .watch_configs(request)
        .await
        .expect("watch")
        .into_inner();
    let mut watched = Watched::default();
    loop {
        watched.apply(next(&mut stream).await.expect("snapshot"));
        if watched.snapshots == 1 {
            break;
        }
    }
    (stream, watched)
}

/// The next stream message, which must be a change.
async fn next_change(stream: &mut Streaming<pb::WatchConfigsResponse>) -> pb::ConfigChange {
    match next(stream).await.expect("stream open").event {
        Some(WatchEvent::Change(change)) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// Waits until the server's snapshot is at `version` or later (ListConfigs
/// reports the version it read from).
async fn wait_for_version(client: &mut Client, version: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = list(client, Request::new(pb::ListConfigsRequest::default()))
            .await
            .version;
        if seen >= version {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server stayed at version {seen}, below {version}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes one row by plain SQL (UPDATE, else INSERT); returns its version.
async fn sql_set(db: &TestDb, key: &str, environment: &str, value: &Value, sensitive: bool) -> i64 {
    let mut tx = db.pool.begin().await.expect("begin");
    let updated: Option<i64> = sqlx::query_scalar(
        "UPDATE app_config SET value = $3, is_sensitive = $4 \
         WHERE key = $1 AND environment = $2 RETURNING version",
    )
    .bind(key)
    .bind(environment)
    .bind(sqlx::types::Json(value))
    .bind(sensitive)
    .fetch_optional(&mut *tx)
    .await
    .expect("update");
    let version = match updated {
        Some(version) => version,
        None => sqlx::query_scalar(
            "INSERT INTO app_config (key, environment, value, is_sensitive) \
             VALUES ($1, $2, $3, $4) RETURNING version",
        )
        .bind(key)
        .bind(environment)
        .bind(sqlx::types::Json(value))
        .bind(sensitive)
        .fetch_one(&mut *tx)
        .await
        .expect("insert"),
    };
    tx.commit().await.expect("commit");
    version
}

/// Deletes one row by plain SQL; the version of the deletion, if a row went.
async fn sql_delete(db: &TestDb, key: &str, environment: &str) -> Option<i64> {
    let mut tx = db.pool.begin().await.expect("begin");
    let gone = sqlx::query("DELETE FROM app_config WHERE key = $1 AND environment = $2")
        .bind(key)
        .bind(environment)
        .execute(&mut *tx)
        .await
        .expect("delete")
        .rows_affected();
    let version = if gone == 1 {
        Some(
            sqlx::query_scalar("SELECT currval('readyd_change_version')")
                .fetch_one(&mut *tx)
                .await
                .expect("currval"),
        )
    } else {
        None
    };
    tx.commit().await.expect("commit");
    version
}

// ---------------------------------------------------------------------------
// Property 4: values round-trip.

const TWO_53: i64 = 1 << 53;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(TWO_53),
            Just(-TWO_53),
            Just(TWO_53 - 1),
            Just(0i64),
            Just(-1i64),
            -TWO_53..=TWO_53,
            -1000i64..1000,
        ]
        .prop_map(Value::from),
        // Small fractions a double holds exactly.
        (-1_000_000i64..1_000_000, 1u32..=16).prop_filter_map("not whole", |(n, k)| {
            let f = n as f64 / f64::from(1u32 << k);
            (f.fract() != 0.0).then(|| json!(f))
        }),
        (-100_000i64..100_000).prop_filter_map("not whole", |n| {
            let f = n as f64 / 1000.0;
            (f.fract() != 0.0).then(|| json!(f))
        }),
        "\\PC{0,16}".prop_map(Value::String),
        Just(json!("héllo wörld ✓ 日本語 🎉 \"quoted\" \\ back/slash")),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn property_4_any_json_value_set_is_read_back_equal() {
    let runtime = multi_thread_runtime();
    let (db, server, client) = runtime.block_on(start());
    let mut runner = runner(28);
    let counter = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&json_value(), |value| {
        let case = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut client = client.clone();
        runtime.block_on(async move {
            let key = format!("p4.value{}", case % 4);
            let stored = set(&mut client, set_request(&key, "", value.clone())).await;
            prop_assert_eq!(json_of(&stored.value), value.clone(), "SetConfig's answer");
            // Read-your-writes: the very next read sees it.
            let read = get_admin(&mut client, &key).await.expect("get");
            prop_assert_eq!(read.version, stored.version);
            prop_assert_eq!(read.environment.as_str(), "*");
            prop_assert_eq!(json_of(&read.value), value, "GetConfig's answer");
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[tokio::test]
async fn a_value_just_under_64_kib_is_kept_and_one_over_is_refused() {
    let (db, server, mut client) = start().await;
    // A JSON string of n characters encodes to n + 2 bytes.
    let largest = json!("x".repeat(64 * 1024 - 2));
    let version = set_value(&mut client, "big.value", "", largest.clone()).await;
    let read = get_admin(&mut client, "big.value").await.expect("get");
    assert_eq!((read.version, json_of(&read.value)), (version, largest));

    let before = dump(&db).await;
    let too_big = json!("x".repeat(64 * 1024 - 1));
    assert_invalid(
        client
            .set_config(admin(set_request("big.value", "", too_big.clone())))
            .await,
        "value",
    );
    assert_invalid(
        client
            .set_config(admin(set_request(
                "big.other",
                "test",
                json!({ "a": too_big }),
            )))
            .await,
        "value",
    );
    assert_eq!(dump(&db).await, before, "a refused write changes nothing");
    server.stop().await;
}

#[tokio::test]
async fn a_nul_character_gets_invalid_argument_and_changes_nothing() {
    // jsonb and text cannot hold U+0000: DESIGN.md's "bad input gets a clear
    // gRPC status" asks for INVALID_ARGUMENT naming the field, not INTERNAL.
    let (db, server, mut client) = start().await;
    let before = dump(&db).await;
    let mut description = set_request("nul.description", "", json!(1));
    description.description = Some("a\u{0}b".into());
    let cases = [
        ("value", set_request("nul.value", "", json!("a\u{0}b"))),
        ("value", set_request("nul.key", "", json!({ "a\u{0}b": 1 }))),
        ("description", description),
    ];
    let mut failures = Vec::new();
    for (field, request) in cases {
        match client.set_config(admin(request)).await {
            Err(status)
                if status.code() == Code::InvalidArgument && status.message().contains(field) => {}
            other => failures.push(format!("{field}: {other:?}")),
        }
    }
    match client
        .set_maintenance_mode(admin(pb::SetMaintenanceModeRequest {
            enabled: true,
            message: "a\u{0}b".into(),
        }))
        .await
    {
        Err(status)
            if status.code() == Code::InvalidArgument && status.message().contains("message") => {}
        other => failures.push(format!("message: {other:?}")),
    }
    let after = dump(&db).await;
    if after != before {
        failures.push(format!("changed: {before:?}\n  -> {after:?}"));
    }
    assert!(failures.is_empty(), "{failures:#?}");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Property 5: reads follow the resolution rule, for rows written by plain SQL.

const P5_KEYS: [&str; 4] = ["p5.a", "p5.b", "p5.c", "p5.d"];
const ENVIRONMENTS: [&str; 3] = ["*", "test", "prod"];

#[test]
fn property_5_reads_resolve_own_environment_else_every_environment() {
    let runtime = multi_thread_runtime();
    let (db, server, client) = runtime.block_on(start());
    let mut runner = runner(16);
    let ops = prop::collection::vec(
        (
            0..P5_KEYS.len(),
            0..ENVIRONMENTS.len(),
            proptest::option::weighted(0.75, -50i32..50),
        ),
        1..14,
    );
    let result = runner.run(&ops, |ops| {
        let mut client = client.clone();
        let db = &db;
        runtime.block_on(async move {
            sqlx::query("DELETE FROM app_config WHERE key LIKE 'p5.%'")
                .execute(&db.pool)
                .await
                .expect("clean up");
            let mut model: BTreeMap<(String, String), Value> = BTreeMap::new();
            for (k, e, value) in ops {
                let (key, environment) = (P5_KEYS[k], ENVIRONMENTS[e]);
                match value {
                    Some(v) => {
                        sql_set(db, key, environment, &json!(v), false).await;
                        model.insert((key.into(), environment.into()), json!(v));
                    }
                    None => {
                        sql_delete(db, key, environment).await;
                        model.remove(&(key.to_owned(), environment.to_owned()));
                    }
                }
            }
            wait_for_version(&mut client, last_version(db).await).await;

            let resolved = |key: &str| {
                model
                    .get(&(key.to_owned(), "test".to_owned()))
                    .map(|v| ("test", v.clone()))
                    .or_else(|| {
                        model
                            .get(&(key.to_owned(), "*".to_owned()))
                            .map(|v| ("*", v.clone()))
                    })
            };
            let mut expected_list = Vec::new();
            for key in P5_KEYS {
                let expected = resolved(key);
                match get(&mut client, key).await {
                    Ok(entry) => {
                        prop_assert_ne!(entry.environment.as_str(), "prod");
                        prop_assert_eq!(
                            Some((entry.environment.as_str(), json_of(&entry.value))),
                            expected.clone(),
                            "GetConfig {}",
                            key
                        );
                    }
                    Err(status) => {
                        prop_assert_eq!(status.code(), Code::NotFound, "{:?}", status);
                        prop_assert_eq!(expected.clone(), None, "GetConfig {} said NOT_FOUND", key);
                    }
                }
                if let Some((environment, value)) = expected {
                    expected_list.push((key.to_owned(), environment.to_owned(), value));
                }
            }
            let listed: Vec<(String, String, Value)> = list(
                &mut client,
                Request::new(pb::ListConfigsRequest {
                    prefix: "p5.".into(),
                    ..Default::default()
                }),
            )
            .await
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.environment.clone(), json_of(&e.value)))
            .collect();
            prop_assert_eq!(listed, expected_list, "ListConfigs");

            // Every row, prod's included, is there for an admin.
            let all: BTreeMap<(String, String), Value> = list(
                &mut client,
                admin(pb::ListConfigsRequest {
                    prefix: "p5.".into(),
                    all_environments: true,
                    ..Default::default()
                }),
            )
            .await
            .entries
            .iter()
            .map(|e| ((e.key.clone(), e.environment.clone()), json_of(&e.value)))
            .collect();
            prop_assert_eq!(all, model);
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}

// ---------------------------------------------------------------------------
// Property 6: secrets reach admins only.

#[test]
fn property_6_sensitive_values_never_reach_non_admins_the_audit_or_the_log() {
    let runtime = multi_thread_runtime();
    let (db, server, client) = runtime.block_on(start());
    let streams = runtime.block_on(async {
        let mut client = client.clone();
        let (a, b) = watch(
            &mut client,
            Request::new(pb::WatchConfigsRequest::default()),
        )
        .await;
        let (c, d) = watch(&mut client, admin(pb::WatchConfigsRequest::default())).await;
        tokio::sync::Mutex::new((a, b, c, d))
    });
    let mut runner = runner(8);
    let entries = prop::collection::vec(
        (
            0..3usize,
            0..ENVIRONMENTS.len(),
            "[A-Za-z0-9]{16,24}",
            any::<bool>(),
            any::<bool>(),
        ),
        1..5,
    );
    let all_secrets: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let result = runner.run(&entries, |entries| {
        let mut client = client.clone();
        let db = &db;
        let streams = &streams;
        let all_secrets = &all_secrets;
        runtime.block_on(async move {
            let mut guard = streams.lock().await;
            let (plain_stream, plain_watched, admin_stream, admin_watched) = &mut *guard;
            sqlx::query("DELETE FROM app_config WHERE key LIKE 'p6.secret%'")
                .execute(&db.pool)
                .await
                .expect("clean up");
            // (key, environment) → value of the last write of each row.
            let mut written: BTreeMap<(String, String), Value> = BTreeMap::new();
            let mut secrets = Vec::new();
            for (k, e, secret, nested, by_sql) in entries {
                let key = format!("p6.secret{k}");
                let environment = ENVIRONMENTS[e];
                let value = if nested {
                    json!({ "user": "app", "password": secret, "port": 5432 })
                } else {
                    json!(secret)
                };
                if by_sql {
                    // Bound, so the statement text holds no secret.
                    sql_set(db, &key, environment, &value, true).await;
                } else {
                    set(
                        &mut client,
                        pb::SetConfigRequest {
                            key: key.clone(),
                            value: pb_json(&value),
                            environment: environment.into(),
                            description: Some("a secret".into()),
                            is_sensitive: Some(true),
                            expected_version: None,
                            make_public: false,
                        },
                    )
                    .await;
                }
                secrets.push(secret);
                written.insert((key, environment.to_owned()), value);
            }
            all_secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(secrets.iter().cloned());
            // A later, non-secret change: once a stream has it, it has had
            // everything before it.
            let marker = set_value(&mut client, "p6.marker", "", json!(secrets.len())).await;
            plain_watched.catch_up(plain_stream, marker).await;
            admin_watched.catch_up(admin_stream, marker).await;

            let mut plain = Vec::new();
            for k in 0..3 {
                let key = format!("p6.secret{k}");
                let resolved = written
                    .get(&(key.clone(), "test".into()))
                    .or_else(|| written.get(&(key.clone(), "*".into())));
                match get(&mut client, &key).await {
                    Ok(entry) => {
                        prop_assert!(entry.redacted && entry.value.is_none(), "{:?}", entry);
                        prop_assert!(entry.is_sensitive);
                        plain.push(format!("{entry:?}"));
                        let seen = get_admin(&mut client, &key).await.expect("admin get");
                        prop_assert!(!seen.redacted);
                        if let Some(value) = resolved {
                            prop_assert_eq!(&json_of(&seen.value), value, "admin sees the value");
                        }
                    }
                    Err(status) => {
                        prop_assert_eq!(status.code(), Code::NotFound);
                        prop_assert!(resolved.is_none(), "{} resolves to {:?}", key, resolved);
                    }
                }
            }
            let listed = list(&mut client, Request::new(pb::ListConfigsRequest::default())).await;
            for entry in listed.entries.iter().filter(|e| e.key.starts_with("p6.secret")) {
                prop_assert!(entry.redacted && entry.value.is_none(), "{:?}", entry);
            }
            plain.push(format!("{listed:?}"));
            plain.extend(plain_watched.seen.iter().cloned());
            for entry in plain_watched.entries.values().filter(|e| e.is_sensitive) {
                prop_assert!(entry.redacted && entry.value.is_none(), "{:?}", entry);
            }

            let every_row = list(
                &mut client,
                admin(pb::ListConfigsRequest {
                    prefix: "p6.secret".into(),
                    all_environments: true,
                    ..Default::default()
                }),
            )
            .await;
            let admin_text = format!("{every_row:?}");
            for ((key, environment), value) in &written {
                let row = every_row
                    .entries
                    .iter()
                    .find(|e| &e.key == key && &e.environment == environment)
                    .expect("every row is listed for an admin");
                prop_assert!(!row.redacted);
                prop_assert_eq!(&json_of(&row.value), value);
            }
            for entry in admin_watched.entries.values().filter(|e| e.is_sensitive) {
                prop_assert!(!entry.redacted && entry.value.is_some(), "{:?}", entry);
            }

            // The secrets still stored (a later write may have replaced one).
            for value in written.values() {
                let text = value.to_string();
                prop_assert!(
                    secrets.iter().any(|s| text.contains(s.as_str())
                        && admin_text.contains(s.as_str())),
                    "admins see the stored secret of {}",
                    text
                );
            }
            for secret in &secrets {
                for text in &plain {
                    prop_assert!(!text.contains(secret.as_str()), "a non-admin saw {}: {}", secret, text);
                }
                let in_audit: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM config_audit \
                     WHERE strpos(coalesce(old_value::text, '') || coalesce(new_value::text, ''), $1) > 0",
                )
                .bind(secret)
                .fetch_one(&db.pool)
                .await
                .expect("audit search");
                prop_assert_eq!(in_audit, 0, "the audit trail holds {}", secret);
            }
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(async {
        // The audit rows of the secrets are fingerprints.
        let fingerprints: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM config_audit WHERE key LIKE 'p6.secret%' \
             AND (new_value IS NULL OR new_value::text ~ '^\"hmac-sha256:[0-9a-f]{16}\"$') \
             AND (old_value IS NULL OR old_value::text ~ '^\"hmac-sha256:[0-9a-f]{16}\"$')",
        )
        .fetch_one(&db.pool)
        .await
        .expect("fingerprints");
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM config_audit WHERE key LIKE 'p6.secret%'")
                .fetch_one(&db.pool)
                .await
                .expect("audit rows");
        assert!(rows > 0);
        assert_eq!(
            fingerprints, rows,
            "every sensitive audit value is a fingerprint"
        );
    });
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
    assert!(
        captured_bytes() > 0 && logs_contain("readyd::"),
        "the capture holds readyd's own log lines"
    );
    let all_secrets = all_secrets.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(!all_secrets.is_empty());
    for secret in &all_secrets {
        assert!(!logs_contain(secret), "the log holds the secret {secret}");
    }
}

// ---------------------------------------------------------------------------
// Property 7: the audit trail matches the changes one to one.

#[derive(Debug, Clone)]
enum Via {
    /// Through the API, with this x-readyd-actor header (or none).
    Api(Option<String>),
    /// Plain SQL.
    Sql,
}

#[derive(Debug, Clone)]
enum Op {
    Set(Value, bool),
    Delete,
}

fn p7_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1000i64..1000).prop_map(Value::from),
        "[a-z ]{0,8}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5, "[a-z]{0,4}").prop_map(|(n, s)| json!({ "n": n, "s": s, "list": [n, s] })),
    ]
}

fn p7_op() -> impl Strategy<Value = (Via, Op, usize, usize)> {
    let via = prop_oneof![
        Just(Via::Api(None)),
        "[a-z][a-z0-9._@-]{0,20}".prop_map(|a| Via::Api(Some(a))),
        Just(Via::Sql),
    ];
    let op = prop_oneof![
        3 => (p7_value(), any::<bool>()).prop_map(|(v, s)| Op::Set(v, s)),
        1 => Just(Op::Delete),
    ];
    (via, op, 0..3usize, 0..ENVIRONMENTS.len())
}

/// One expected audit row: key, environment, action, old, new, actor, version.
type AuditLine = (
    String,
    String,
    pb::ConfigAuditAction,
    Option<Value>,
    Option<Value>,
    String,
    i64,
);

#[test]
fn property_7_the_audit_trail_matches_the_changes_one_to_one() {
    let runtime = multi_thread_runtime();
    let (db, server, client) = runtime.block_on(start());
    let db_user = runtime.block_on(session_user(&db));
    let mut runner = runner(16);
    let ops = prop::collection::vec(p7_op(), 1..10);
    let result = runner.run(&ops, |ops| {
        let mut client = client.clone();
        let db = &db;
        let db_user = db_user.as_str();
        runtime.block_on(async move {
            sqlx::query("DELETE FROM app_config WHERE key LIKE 'p7.%'")
                .execute(&db.pool)
                .await
                .expect("clean up");
            let start_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM config_audit")
                .fetch_one(&db.pool)
                .await
                .expect("start");
            // (key, environment) → (value, sensitive)
            let mut rows: BTreeMap<(String, String), (Value, bool)> = BTreeMap::new();
            let mut expected: Vec<AuditLine> = Vec::new();
            for (i, (via, op, k, e)) in ops.into_iter().enumerate() {
                let key = format!("p7.k{k}");
                let environment = ENVIRONMENTS[e].to_owned();
                // "" and "*" both name every environment.
                let api_environment = if environment == "*" && i % 2 == 0 {
                    String::new()
                } else {
                    environment.clone()
                };
                let old = rows.get(&(key.clone(), environment.clone())).cloned();
                let old_form = match &old {
                    Some((v, s)) => Some(audit_form(db, v, *s).await),
                    None => None,
                };
                let actor = match &via {
                    Via::Api(Some(a)) => a.clone(),
                    Via::Api(None) => "admin".to_owned(),
                    Via::Sql => db_user.to_owned(),
                };
                match op {
                    Op::Set(value, sensitive) => {
                        let version = match &via {
                            Via::Sql => sql_set(db, &key, &environment, &value, sensitive).await,
                            Via::Api(header) => {
                                let mut request = admin(pb::SetConfigRequest {
                                    key: key.clone(),
                                    value: pb_json(&value),
                                    environment: api_environment,
                                    description: Some(String::new()),
                                    is_sensitive: Some(sensitive),
                                    expected_version: None,
                                    // A secret made public says so.
                                    make_public: !sensitive,
                                });
                                if let Some(a) = header {
                                    request = with_actor(request, a);
                                }
                                let entry = client
                                    .set_config(request)
                                    .await
                                    .expect("set")
                                    .into_inner()
                                    .entry
                                    .expect("entry");
                                prop_assert_eq!(&entry.updated_by, &actor);
                                prop_assert_eq!(entry.is_sensitive, sensitive);
                                entry.version
                            }
                        };
                        let action = if old.is_some() {
                            pb::ConfigAuditAction::Update
                        } else {
                            pb::ConfigAuditAction::Insert
                        };
                        expected.push((
                            key.clone(),
                            environment.clone(),
                            action,
                            old_form,
                            Some(audit_form(db, &value, sensitive).await),
                            actor,
                            version,
                        ));
                        rows.insert((key, environment), (value, sensitive));
                    }
                    Op::Delete => {
                        let version = match &via {
                            Via::Sql => sql_delete(db, &key, &environment).await,
                            Via::Api(header) => {
                                let mut request = admin(pb::DeleteConfigRequest {
                                    key: key.clone(),
                                    environment: api_environment,
                                    expected_version: None,
                                });
                                if let Some(a) = header {
                                    request = with_actor(request, a);
                                }
                                match client.delete_config(request).await {
                                    Ok(response) => Some(response.into_inner().version),
                                    Err(status) => {
                                        prop_assert_eq!(
                                            status.code(),
                                            Code::NotFound,
                                            "{:?}",
                                            status
                                        );
                                        None
                                    }
                                }
                            }
                        };
                        prop_assert_eq!(
                            version.is_some(),
                            old.is_some(),
                            "a delete deletes iff the row exists"
                        );
                        if let Some(version) = version {
                            expected.push((
                                key.clone(),
                                environment.clone(),
                                pb::ConfigAuditAction::Delete,
                                old_form,
                                None,
                                actor,
                                version,
                            ));
                        }
                        rows.remove(&(key, environment));
                    }
                }
            }

            let page = client
                .list_config_audit(admin(pb::ListConfigAuditRequest {
                    page_size: 1000,
                    ..Default::default()
                }))
                .await
                .expect("audit")
                .into_inner();
            let mut audit: Vec<pb::ConfigAuditEntry> = page
                .entries
                .into_iter()
                .filter(|e| e.id > start_id)
                .collect();
            audit.reverse();
            for pair in audit.windows(2) {
                prop_assert!(
                    pair[0].id < pair[1].id && pair[0].version < pair[1].version,
                    "{:?}",
                    pair
                );
            }
            let got: Vec<AuditLine> = audit
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.environment.clone(),
                        e.action(),
                        e.old_value.clone().map(|v| from_pb_value(v).expect("json")),
                        e.new_value.clone().map(|v| from_pb_value(v).expect("json")),
                        e.actor.clone(),
                        e.version,
                    )
                })
                .collect();
            prop_assert_eq!(got, expected);
            Ok::<(), TestCaseError>(())
        })
    });
    runtime.block_on(server.stop());
    drop(db);
    if let Err(err) = result {
        panic!("{err}");
    }
}

// ---------------------------------------------------------------------------
// Maintenance mode.

async fn audit_xmin(db: &TestDb, versions: &[i64]) -> Vec<(i64, String, String, String)> {
    sqlx::query_as(
        "SELECT version, key, action, xmin::text FROM config_audit \
         WHERE version = ANY($1) ORDER BY version",
    )
    .bind(versions)
    .fetch_all(&db.pool)
    .await
    .expect("audit rows")
}

#[tokio::test]
async fn maintenance_mode_round_trip_across_two_servers() {
    let (db, a, mut client_a) = start().await;
    let b = TestServer::start(admin_serve_args(&db.url)).await;
    let mut client_b = ConfigServiceClient::new(b.channel().await);
    let (mut stream, watched) = watch(
        &mut client_b,
        Request::new(pb::WatchConfigsRequest {
            keys: vec!["maintenance_mode".into(), "maintenance_message".into()],
            since_version: None,
            with_freshness: false,
        }),
    )
    .await;
    assert_eq!(
        watched.entries.keys().collect::<Vec<_>>(),
        ["maintenance_message", "maintenance_mode"]
    );
    assert_eq!(
        json_of(&watched.entries["maintenance_mode"].value),
        json!(false)
    );

    let initial = client_a
        .get_maintenance_mode(pb::GetMaintenanceModeRequest {})
        .await
        .expect("get")
        .into_inner();
    assert!(!initial.enabled);
    assert_eq!(initial.message, "");

    assert_code(
        client_a
            .set_maintenance_mode(pb::SetMaintenanceModeRequest {
                enabled: true,
                message: "x".into(),
            })
            .await,
        Code::Unauthenticated,
    );

    let mut previous = initial.version;
    for (enabled, message, action) in [
        (true, "Back at 17:00 ✓", "insert"),
        (false, "", "update"),
        (true, "again", "update"),
    ] {
        let set = client_a
            .set_maintenance_mode(with_actor(
                admin(pb::SetMaintenanceModeRequest {
                    enabled,
                    message: message.into(),
                }),
                "ops@example",
            ))
            .await
            .expect("set maintenance")
            .into_inner();
        assert_eq!((set.enabled, set.message.as_str()), (enabled, message));
        assert!(set.version > previous);
        previous = set.version;
        // Read-your-writes on the same server.
        let got = client_a
            .get_maintenance_mode(pb::GetMaintenanceModeRequest {})
            .await
            .expect("get")
            .into_inner();
        assert_eq!(got, set);

        // The subscriber on B gets both keys, in the transaction's order.
        let first = next_change(&mut stream).await;
        let second = next_change(&mut stream).await;
        let mut by_key = BTreeMap::new();
        for change in [&first, &second] {
            match change.change.clone().expect("change") {
                Change::Upserted(entry) => {
                    assert_eq!(entry.environment, "test", "{entry:?}");
                    assert_eq!(entry.updated_by, "ops@example");
                    assert_eq!(entry.version, change.version);
                    by_key.insert(entry.key.clone(), json_of(&entry.value));
                }
                other => panic!("expected an upsert, got {other:?}"),
            }
        }
        assert_eq!(
            by_key,
            BTreeMap::from([
                ("maintenance_message".to_owned(), json!(message)),
                ("maintenance_mode".to_owned(), json!(enabled)),
            ])
        );
        assert_eq!(second.version, first.version + 1, "consecutive versions");
        assert_eq!(second.version, set.version);
        let on_b = client_b
            .get_maintenance_mode(pb::GetMaintenanceModeRequest {})
            .await
            .expect("get on B")
            .into_inner();
        assert_eq!(on_b, set);

        // One transaction wrote both rows and both audit rows.
        let audit = audit_xmin(&db, &[first.version, second.version]).await;
        assert_eq!(audit.len(), 2, "{audit:?}");
        assert_eq!(audit[0].3, audit[1].3, "one transaction: {audit:?}");
        assert!(audit.iter().all(|r| r.2 == action), "{audit:?}");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT key, xmin::text FROM app_config \
             WHERE key IN ('maintenance_mode', 'maintenance_message') AND environment = 'test'",
        )
        .fetch_all(&db.pool)
        .await
        .expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1, rows[1].1, "one transaction: {rows:?}");
    }
    // The '*' rows are untouched.
    let any: Vec<(String, String)> = sqlx::query_as(
        "SELECT key, value::text FROM app_config \
         WHERE key IN ('maintenance_mode', 'maintenance_message') AND environment = '*' ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    assert_eq!(
        any,
        [
            ("maintenance_message".to_owned(), "\"\"".to_owned()),
            ("maintenance_mode".to_owned(), "false".to_owned())
        ]
    );
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------
// Resolution and redaction.

#[tokio::test]
async fn reads_and_streams_resolve_and_redact() {
    let (db, server, mut client) = start().await;
    set_value(&mut client, "r.a", "*", json!(1)).await;
    set_value(&mut client, "r.a", "test", json!(2)).await;
    set_value(&mut client, "r.a", "prod", json!(3)).await;
    set_value(&mut client, "r.b", "", json!("every")).await;
    set_value(&mut client, "r.c", "prod", json!("prod only")).await;
    set_value(&mut client, "r.d", "test", json!("test only")).await;
    set(
        &mut client,
        pb::SetConfigRequest {
            key: "r.s".into(),
            value: pb_json(&json!("s3cr3t-value-0001")),
            environment: "test".into(),
            description: Some("a secret".into()),
            is_sensitive: Some(true),
            expected_version: None,
            make_public: false,
        },
    )
    .await;

    // Table: key → what a non-admin GetConfig answers (environment, value).
    let table: [(&str, Option<(&str, Value)>); 4] = [
        ("r.a", Some(("test", json!(2)))),
        ("r.b", Some(("*", json!("every")))),
        ("r.c", None),
        ("r.d", Some(("test", json!("test only")))),
    ];
    for (key, expected) in &table {
        match get(&mut client, key).await {
            Ok(entry) => assert_eq!(
                Some((entry.environment.as_str(), json_of(&entry.value))),
                expected.clone(),
                "{key}"
            ),
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound, "{key}: {status:?}");
                assert!(expected.is_none(), "{key} is NOT_FOUND");
            }
        }
    }
    let secret = get(&mut client, "r.s").await.expect("r.s");
    assert!(secret.redacted && secret.value.is_none() && secret.is_sensitive);
    assert_eq!(secret.description, "a secret");
    let secret = get_admin(&mut client, "r.s").await.expect("r.s");
    assert!(!secret.redacted);
    assert_eq!(json_of(&secret.value), json!("s3cr3t-value-0001"));

    let resolved = list(
        &mut client,
        Request::new(pb::ListConfigsRequest {
            prefix: "r.".into(),
            ..Default::default()
        }),
    )
    .await;
    let summary: Vec<(String, String, Option<Value>, bool)> = resolved
        .entries
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                e.environment.clone(),
                e.value.clone().map(|v| from_pb_value(v).expect("json")),
                e.redacted,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("r.a".into(), "test".into(), Some(json!(2)), false),
            ("r.b".into(), "*".into(), Some(json!("every")), false),
            ("r.d".into(), "test".into(), Some(json!("test only")), false),
            ("r.s".into(), "test".into(), None, true),
        ]
    );
    // An admin may look at prod's resolved view, or every row.
    let prod = list(
        &mut client,
        admin(pb::ListConfigsRequest {
            prefix: "r.".into(),
            environment: "prod".into(),
            all_environments: false,
            ..Default::default()
        }),
    )
    .await;
    let prod: Vec<(String, String)> = prod
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.environment.clone()))
        .collect();
    assert_eq!(
        prod,
        [
            ("r.a".to_owned(), "prod".to_owned()),
            ("r.b".to_owned(), "*".to_owned()),
            ("r.c".to_owned(), "prod".to_owned()),
        ]
    );
    let every = list(
        &mut client,
        admin(pb::ListConfigsRequest {
            prefix: "r.".into(),
            environment: String::new(),
            all_environments: true,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(every.entries.len(), 7);
    for request in [
        pb::ListConfigsRequest {
            environment: "prod".into(),
            ..Default::default()
        },
        pb::ListConfigsRequest {
            all_environments: true,
            ..Default::default()
        },
    ] {
        assert_code(client.list_configs(request).await, Code::PermissionDenied);
    }

    // A non-admin subscriber.
    let (mut stream, watched) = watch(
        &mut client,
        Request::new(pb::WatchConfigsRequest::default()),
    )
    .await;
    assert_eq!(watched.entries["r.a"].environment, "test");
    assert_eq!(json_of(&watched.entries["r.a"].value), json!(2));
    assert!(!watched.entries.contains_key("r.c"));
    assert!(watched.entries["r.s"].redacted && watched.entries["r.s"].value.is_none());
    assert!(!format!("{:?}", watched.seen).contains("s3cr3t-value-0001"));

    // Deleting the test row falls back to '*'.
    let version = delete(&mut client, "r.a", "test").await.expect("delete");
    let entry = get(&mut client, "r.a").await.expect("r.a");
    assert_eq!(
        (entry.environment.as_str(), json_of(&entry.value)),
        ("*", json!(1))
    );
    let change = next_change(&mut stream).await;
    assert_eq!(change.version, version);
    match change.change.expect("change") {
        Change::Upserted(entry) => {
            assert_eq!(
                (entry.key.as_str(), entry.environment.as_str()),
                ("r.a", "*")
            );
            assert_eq!(json_of(&entry.value), json!(1));
        }
        other => panic!("expected r.a from '*', got {other:?}"),
    }

    // Changes the subscriber must not hear of: prod's row, and a '*' row
    // hidden by the test row.
    set_value(&mut client, "r.a", "prod", json!(30)).await;
    set_value(&mut client, "r.c", "prod", json!("still prod")).await;
    set_value(&mut client, "r.d", "*", json!("hidden")).await;
    delete(&mut client, "r.c", "prod")
        .await
        .expect("delete r.c");
    // Deleting the last row of a key.
    let version = delete(&mut client, "r.b", "").await.expect("delete r.b");
    assert_code(get(&mut client, "r.b").await, Code::NotFound);
    let change = next_change(&mut stream).await;
    assert_eq!(
        (change.version, change.change),
        (version, Some(Change::DeletedKey("r.b".into()))),
        "the next message is the next relevant change"
    );
    // The hidden '*' row shows once the test row goes.
    let version = delete(&mut client, "r.d", "test")
        .await
        .expect("delete r.d");
    let change = next_change(&mut stream).await;
    assert_eq!(change.version, version);
    match change.change.expect("change") {
        Change::Upserted(entry) => {
            assert_eq!(
                (entry.key.as_str(), entry.environment.as_str()),
                ("r.d", "*")
            );
            assert_eq!(json_of(&entry.value), json!("hidden"));
        }
        other => panic!("expected r.d from '*', got {other:?}"),
    }
    // A sensitive change reaches the non-admin redacted.
    let mut request = set_request("r.s", "test", json!("s3cr3t-value-0002"));
    request.is_sensitive = Some(true);
    let version = set(&mut client, request).await.version;
    let change = next_change(&mut stream).await;
    assert_eq!(change.version, version);
    assert!(!format!("{change:?}").contains("s3cr3t-value-0002"));
    match change.change.expect("change") {
        Change::Upserted(entry) => {
            assert_eq!(entry.key, "r.s");
            assert!(entry.redacted && entry.value.is_none());
        }
        other => panic!("expected r.s, got {other:?}"),
    }
    // A plain SQL change of prod's row sends nothing either.
    sql_set(&db, "r.a", "prod", &json!(300), false).await;
    let version = sql_set(&db, "r.a", "*", &json!(100), false).await;
    let change = next_change(&mut stream).await;
    assert_eq!(change.version, version);
    match change.change.expect("change") {
        Change::Upserted(entry) => assert_eq!(json_of(&entry.value), json!(100)),
        other => panic!("expected r.a, got {other:?}"),
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------
// ListConfigAudit.

async fn audit_page(
    client: &mut Client,
    request: pb::ListConfigAuditRequest,
) -> pb::ListConfigAuditResponse {
    client
        .list_config_audit(admin(request))
        .await
        .expect("audit")
        .into_inner()
}

#[tokio::test]
async fn list_config_audit_pages_newest_first_and_filters() {
    let (db, server, mut client) = start().await;
    let mut versions = Vec::new();
    for i in 0..25 {
        versions.push(set_value(&mut client, "audit.k", "", json!(i)).await);
        // Another key in between, for the key filter.
        if i % 5 == 0 {
            set_value(&mut client, "audit.other", "", json!(i)).await;
        }
    }

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit_page(
            &mut client,
            pb::ListConfigAuditRequest {
                key: "audit.k".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        token = page.next_page_token.clone();
        pages.push(page.entries);
        if token.is_empty() {
            break;
        }
        assert!(pages.len() < 5, "paging ends");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let all: Vec<&pb::ConfigAuditEntry> = pages.iter().flatten().collect();
    let got: Vec<(String, i64, Value)> = all
        .iter()
        .map(|e| (e.key.clone(), e.version, json_of(&e.new_value)))
        .collect();
    let expected: Vec<(String, i64, Value)> = versions
        .iter()
        .enumerate()
        .rev()
        .map(|(i, v)| ("audit.k".to_owned(), *v, json!(i)))
        .collect();
    assert_eq!(got, expected, "newest first, no overlap, nothing missing");
    for pair in all.windows(2) {
        assert!(pair[0].id > pair[1].id);
    }
    assert_eq!(all[24].action(), pb::ConfigAuditAction::Insert);
    assert!(
        all[..24]
            .iter()
            .all(|e| e.action() == pb::ConfigAuditAction::Update)
    );
    assert_eq!(json_of(&all[0].old_value), json!(23));
    assert!(all[24].old_value.is_none());
    assert!(
        all.iter()
            .all(|e| e.actor == "admin" && e.environment == "*")
    );

    // Without a key: every row, the migration's seed included.
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page = audit_page(
            &mut client,
            pb::ListConfigAuditRequest {
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await;
        count += page.entries.len();
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(count as i64, db.count("config_audit").await);
    assert_eq!(
        audit_page(&mut client, pb::ListConfigAuditRequest::default())
            .await
            .entries
            .len(),
        (count).min(100)
    );

    // since / until around the 13th change (oldest first).
    let oldest_first: Vec<&pb::ConfigAuditEntry> = all.iter().rev().copied().collect();
    let pivot = oldest_first[12].changed_at;
    let since = audit_page(
        &mut client,
        pb::ListConfigAuditRequest {
            key: "audit.k".into(),
            since: pivot,
            ..Default::default()
        },
    )
    .await;
    let until = audit_page(
        &mut client,
        pb::ListConfigAuditRequest {
            key: "audit.k".into(),
            until: pivot,
            ..Default::default()
        },
    )
    .await;
    let ids = |entries: &[pb::ConfigAuditEntry]| entries.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&since.entries),
        oldest_first[12..]
            .iter()
            .rev()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&until.entries),
        oldest_first[..12]
            .iter()
            .rev()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    );
    let window = audit_page(
        &mut client,
        pb::ListConfigAuditRequest {
            key: "audit.k".into(),
            since: oldest_first[5].changed_at,
            until: oldest_first[8].changed_at,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        ids(&window.entries),
        oldest_first[5..8]
            .iter()
            .rev()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    );

    // Bad requests.
    assert_eq!(
        audit_page(
            &mut client,
            pb::ListConfigAuditRequest {
                page_size: 1000,
                ..Default::default()
            }
        )
        .await
        .entries
        .len(),
        count.min(1000)
    );
    assert_invalid(
        client
            .list_config_audit(admin(pb::ListConfigAuditRequest {
                page_size: 1001,
                ..Default::default()
            }))
            .await,
        "page_size",
    );
    for token in ["abc", "-5", "0", "1.5"] {
        assert_invalid(
            client
                .list_config_audit(admin(pb::ListConfigAuditRequest {
                    page_token: token.into(),
                    ..Default::default()
                }))
                .await,
            "page_token",
        );
    }
    assert_invalid(
        client
            .list_config_audit(admin(pb::ListConfigAuditRequest {
                key: "Not A Key".into(),
                ..Default::default()
            }))
            .await,
        "key",
    );
    assert_code(
        client
            .list_config_audit(pb::ListConfigAuditRequest::default())
            .await,
        Code::Unauthenticated,
    );
    let mut wrong = Request::new(pb::ListConfigAuditRequest::default());
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token".parse().expect("header"),
    );
    assert_code(
        client.list_config_audit(wrong).await,
        Code::PermissionDenied,
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let (db, server, mut client) = start().await;
    set_value(&mut client, "bad.existing", "test", json!(1)).await;
    let existing = get(&mut client, "bad.existing").await.expect("existing");
    let before = dump(&db).await;

    let valid = || set_request("bad.new", "", json!(1));
    let with = |f: &dyn Fn(&mut pb::SetConfigRequest)| {
        let mut request = valid();
        f(&mut request);
        request
    };
    let number = |n: f64| {
        Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        })
    };
    let cases: Vec<(&str, pb::SetConfigRequest, Code, &str)> = vec![
        (
            "bad key",
            with(&|r| r.key = "Bad Key".into()),
            Code::InvalidArgument,
            "key",
        ),
        (
            "empty key",
            with(&|r| r.key = String::new()),
            Code::InvalidArgument,
            "key",
        ),
        (
            "long key",
            with(&|r| r.key = "k".repeat(129)),
            Code::InvalidArgument,
            "key",
        ),
        (
            "oversized value",
            with(&|r| r.value = pb_json(&json!("x".repeat(64 * 1024)))),
            Code::InvalidArgument,
            "value",
        ),
        (
            "missing value",
            with(&|r| r.value = None),
            Code::InvalidArgument,
            "value",
        ),
        (
            "value with no kind",
            with(&|r| r.value = Some(prost_types::Value { kind: None })),
            Code::InvalidArgument,
            "value",
        ),
        (
            "NaN",
            with(&|r| r.value = number(f64::NAN)),
            Code::InvalidArgument,
            "value",
        ),
        (
            "infinity",
            with(&|r| r.value = number(f64::INFINITY)),
            Code::InvalidArgument,
            "value",
        ),
        (
            "nested NaN",
            with(&|r| {
                r.value = Some(prost_types::Value {
                    kind: Some(prost_types::value::Kind::ListValue(
                        prost_types::ListValue {
                            values: vec![to_pb_value(&json!(1)), number(f64::NAN).expect("value")],
                        },
                    )),
                })
            }),
            Code::InvalidArgument,
            "value",
        ),
        (
            "environment Prod",
            with(&|r| r.environment = "Prod".into()),
            Code::InvalidArgument,
            "environment",
        ),
        (
            "environment prod!",
            with(&|r| r.environment = "prod!".into()),
            Code::InvalidArgument,
            "environment",
        ),
        (
            "long description",
            with(&|r| r.description = Some("d".repeat(1025))),
            Code::InvalidArgument,
            "description",
        ),
        (
            "negative expected_version",
            with(&|r| r.expected_version = Some(-1)),
            Code::InvalidArgument,
            "expected_version",
        ),
        (
            "stale expected_version",
            with(&|r| {
                r.key = "bad.existing".into();
                r.environment = "test".into();
                r.expected_version = Some(existing.version - 1);
            }),
            Code::Aborted,
            "",
        ),
        (
            "must not exist yet",
            with(&|r| {
                r.key = "bad.existing".into();
                r.environment = "test".into();
                r.expected_version = Some(0);
            }),
            Code::Aborted,
            "",
        ),
        (
            "expected a missing row",
            with(&|r| r.expected_version = Some(existing.version)),
            Code::Aborted,
            "",
        ),
    ];
    for (name, request, code, field) in cases {
        let status = client.set_config(admin(request)).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(field),
            "{name} names {field:?}: {status:?}"
        );
    }
    // Tokens.
    assert_code(client.set_config(valid()).await, Code::Unauthenticated);
    let mut wrong = Request::new(valid());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("header"));
    assert_code(client.set_config(wrong).await, Code::PermissionDenied);
    assert_code(
        client
            .delete_config(pb::DeleteConfigRequest {
                key: "bad.existing".into(),
                environment: "test".into(),
                expected_version: None,
            })
            .await,
        Code::Unauthenticated,
    );
    assert_code(
        client
            .set_maintenance_mode(pb::SetMaintenanceModeRequest {
                enabled: true,
                message: "m".into(),
            })
            .await,
        Code::Unauthenticated,
    );

    // Actor header.
    for actor in ["   ", &"a".repeat(129)] {
        assert_invalid(
            client.set_config(with_actor(admin(valid()), actor)).await,
            "x-readyd-actor",
        );
    }
    let mut tab = admin(valid());
    tab.metadata_mut().insert(
        "x-readyd-actor",
        tonic::metadata::MetadataValue::from_static("a\tb"),
    );
    assert_invalid(client.set_config(tab).await, "x-readyd-actor");
    let mut binary = admin(valid());
    binary.metadata_mut().insert(
        "x-readyd-actor",
        tonic::metadata::AsciiMetadataValue::try_from(&b"caf\xc3\xa9"[..]).expect("opaque bytes"),
    );
    assert_invalid(client.set_config(binary).await, "x-readyd-actor");
    assert_invalid(
        client
            .delete_config(with_actor(
                admin(pb::DeleteConfigRequest {
                    key: "bad.existing".into(),
                    environment: "test".into(),
                    expected_version: None,
                }),
                "  ",
            ))
            .await,
        "x-readyd-actor",
    );

    // Reads and deletes.
    assert_code(get(&mut client, "no.such.key").await, Code::NotFound);
    assert_invalid(get(&mut client, "No Such Key").await, "key");
    let delete_cases: Vec<(&str, pb::DeleteConfigRequest, Code, &str)> = vec![
        (
            "unknown key",
            pb::DeleteConfigRequest {
                key: "no.such.key".into(),
                environment: String::new(),
                expected_version: None,
            },
            Code::NotFound,
            "",
        ),
        (
            "other environment's row",
            pb::DeleteConfigRequest {
                key: "bad.existing".into(),
                environment: "prod".into(),
                expected_version: None,
            },
            Code::NotFound,
            "",
        ),
        (
            "bad key",
            pb::DeleteConfigRequest {
                key: "Bad".into(),
                environment: String::new(),
                expected_version: None,
            },
            Code::InvalidArgument,
            "key",
        ),
        (
            "bad environment",
            pb::DeleteConfigRequest {
                key: "bad.existing".into(),
                environment: "Test".into(),
                expected_version: None,
            },
            Code::InvalidArgument,
            "environment",
        ),
        (
            "negative expected_version",
            pb::DeleteConfigRequest {
                key: "bad.existing".into(),
                environment: "test".into(),
                expected_version: Some(-3),
            },
            Code::InvalidArgument,
            "expected_version",
        ),
        (
            "stale expected_version",
            pb::DeleteConfigRequest {
                key: "bad.existing".into(),
                environment: "test".into(),
                expected_version: Some(existing.version + 1),
            },
            Code::Aborted,
            "",
        ),
    ];
    for (name, request, code, field) in delete_cases {
        let status = client.delete_config(admin(request)).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(field),
            "{name} names {field:?}: {status:?}"
        );
    }

    // Maintenance, lists and watches.
    assert_invalid(
        client
            .set_maintenance_mode(admin(pb::SetMaintenanceModeRequest {
                enabled: true,
                message: "m".repeat(64 * 1024 + 1),
            }))
            .await,
        "message",
    );
    assert_invalid(
        client
            .list_configs(admin(pb::ListConfigsRequest {
                environment: "Prod".into(),
                ..Default::default()
            }))
            .await,
        "environment",
    );
    assert_invalid(
        client
            .watch_configs(pb::WatchConfigsRequest {
                keys: vec!["Bad Key".into()],
                since_version: None,
                with_freshness: false,
            })
            .await,
        "key",
    );
    assert_invalid(
        client
            .watch_configs(pb::WatchConfigsRequest {
                keys: vec![],
                since_version: Some(-1),
                with_freshness: false,
            })
            .await,
        "since_version",
    );

    assert_eq!(dump(&db).await, before, "refused requests change nothing");
    // Still serving.
    assert_eq!(
        get(&mut client, "bad.existing").await.expect("existing"),
        existing
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Sensitivity and description are sticky (issue 16, item 4).

/// A write as an old client (before `is_sensitive` and `description` were
/// optional) sends it when it leaves them at their defaults: proto3 does not
/// put `false` or `""` on the wire, so the server sees them unset.
fn old_client_set(key: &str, value: Value) -> pb::SetConfigRequest {
    set_request(key, "", value)
}

/// Whether a non-admin caller sees the value of `key`.
async fn public_value(client: &mut Client, key: &str) -> Option<Value> {
    let entry = get(client, key).await.expect("get");
    entry
        .value
        .map(|value| from_pb_value(value).expect("a JSON value"))
}

#[tokio::test]
async fn updating_a_secret_keeps_it_secret_unless_made_public_explicitly() {
    let (db, server, mut client) = start().await;
    let created = set(
        &mut client,
        pb::SetConfigRequest {
            description: Some("SMTP password".into()),
            is_sensitive: Some(true),
            ..set_request("mail.password", "", json!("first-s3cret"))
        },
    )
    .await;
    assert!(created.is_sensitive);

    // An update that says nothing about sensitivity or the description
    // keeps both: the new value is as secret as the old one.
    let updated = set(
        &mut client,
        old_client_set("mail.password", json!("second-s3cret")),
    )
    .await;
    assert!(updated.is_sensitive, "{updated:?}");
    assert_eq!(updated.description, "SMTP password");
    assert_eq!(public_value(&mut client, "mail.password").await, None);
    assert!(
        get(&mut client, "mail.password")
            .await
            .expect("get")
            .redacted
    );

    // is_sensitive = false alone is refused, names the flag to set, and
    // changes nothing.
    let before = dump(&db).await;
    let refused = client
        .set_config(admin(pb::SetConfigRequest {
            is_sensitive: Some(false),
            ..set_request("mail.password", "", json!("third-s3cret"))
        }))
        .await
        .expect_err("un-secreting without make_public");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("make_public"), "{refused:?}");
    assert!(!refused.message().contains("s3cret"), "{refused:?}");
    assert_eq!(dump(&db).await, before);

    // make_public contradicting is_sensitive = true is a bad request.
    let contradiction = client
        .set_config(admin(pb::SetConfigRequest {
            is_sensitive: Some(true),
            make_public: true,
            ..set_request("mail.password", "", json!("x"))
        }))
        .await;
    assert_invalid(contradiction, "make_public");
    assert_eq!(dump(&db).await, before);

    // Every audit row of the secret holds keyed fingerprints, never the
    // value.
    let audit = audit_page(
        &mut client,
        pb::ListConfigAuditRequest {
            key: "mail.password".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(audit.entries.len(), 2);
    for entry in &audit.entries {
        for value in [&entry.old_value, &entry.new_value].into_iter().flatten() {
            let text = from_pb_value(value.clone()).expect("JSON").to_string();
            assert!(text.starts_with("\"hmac-sha256:"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    // An explicit make_public does it; the description can be cleared.
    let public = set(
        &mut client,
        pb::SetConfigRequest {
            make_public: true,
            description: Some(String::new()),
            ..set_request("mail.password", "", json!("now-public"))
        },
    )
    .await;
    assert!(!public.is_sensitive);
    assert_eq!(public.description, "");
    assert_eq!(
        public_value(&mut client, "mail.password").await,
        Some(json!("now-public"))
    );
    // A new row without a word on sensitivity is public, as before.
    let plain = set(
        &mut client,
        old_client_set("mail.host", json!("smtp.internal")),
    )
    .await;
    assert!(!plain.is_sensitive);
    // And is_sensitive = false on a row that is not sensitive is fine.
    set(
        &mut client,
        pb::SetConfigRequest {
            is_sensitive: Some(false),
            ..set_request("mail.host", "", json!("smtp2.internal"))
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn audit_rows_from_before_keyed_fingerprints_stay_readable() {
    let (db, server, mut client) = start().await;
    sqlx::query(
        "INSERT INTO config_audit (key, environment, action, old_value, new_value, actor, version) \
         VALUES ('legacy.secret', '*', 'update', '\"sha256:0123456789ab\"', \
                 '\"sha256:ba9876543210\"', 'admin', 1)",
    )
    .execute(&db.pool)
    .await
    .expect("an old audit row");
    let audit = audit_page(
        &mut client,
        pb::ListConfigAuditRequest {
            key: "legacy.secret".into(),
            ..Default::default()
        },
    )
    .await;
    let [entry] = audit.entries.as_slice() else {
        panic!("one row: {audit:?}");
    };
    assert_eq!(json_of(&entry.old_value), json!("sha256:0123456789ab"));
    assert_eq!(json_of(&entry.new_value), json!("sha256:ba9876543210"));
    server.stop().await;
}

#[tokio::test]
async fn huge_input_is_echoed_only_in_part() {
    let (_db, server, mut client) = start().await;
    let huge = format!("Bad{}", "k".repeat(100_000));
    let statuses = [
        get(&mut client, &huge).await.expect_err("bad key"),
        client
            .set_config(admin(set_request("ok.key", &huge, json!(1))))
            .await
            .expect_err("bad environment"),
        client
            .list_config_audit(admin(pb::ListConfigAuditRequest {
                page_token: huge.clone(),
                ..Default::default()
            }))
            .await
            .expect_err("bad page token"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("Badkkk"), "{}", status.message());
        assert!(
            status.message().len() < 400,
            "{} bytes",
            status.message().len()
        );
    }
    server.stop().await;
}
