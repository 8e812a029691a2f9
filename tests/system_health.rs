//! `check_system_health()` (Property 11): for any sequence of calls, with any
//! instance name, checks object and environment, through the Rust API or by
//! plain SQL, each call answers every field with sane values consistent with
//! each other, and records exactly one `system_health` row equal to what it
//! answered.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use readyd::store::Store;
use readyd::store::system_health::SystemHealth;
use serde_json::{Value, json};
use support::TestDb;

/// One call of the health function.
#[derive(Debug, Clone)]
enum Call {
    /// `Store::check_system_health(instance, checks, environment)`.
    Api {
        instance: String,
        checks: Value,
        environment: String,
    },
    /// `SELECT check_system_health($1, $2, $3)`, NULLs allowed.
    Sql {
        instance: Option<String>,
        checks: Option<Value>,
        environment: Option<String>,
    },
    /// `SELECT check_system_health()`.
    SqlDefaults,
}

impl Call {
    fn instance(&self) -> Option<&str> {
        match self {
            Call::Api { instance, .. } => Some(instance),
            Call::Sql { instance, .. } => instance.as_deref(),
            Call::SqlDefaults => None,
        }
    }

    fn checks(&self) -> Value {
        match self {
            Call::Api { checks, .. } => checks.clone(),
            Call::Sql {
                checks: Some(checks),
                ..
            } => checks.clone(),
            Call::Sql { checks: None, .. } | Call::SqlDefaults => json!({}),
        }
    }

    fn environment(&self) -> Option<&str> {
        match self {
            Call::Api { environment, .. } => Some(environment),
            Call::Sql { environment, .. } => environment.as_deref(),
            Call::SqlDefaults => None,
        }
    }
}

/// One case: maybe set an environment's app_version first, then call.
#[derive(Debug, Clone)]
struct Case {
    set_version: Option<(String, String)>,
    calls: Vec<Call>,
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn checks() -> impl Strategy<Value = Value> {
    let inner = prop_oneof![
        3 => leaf(),
        1 => prop::collection::vec(leaf(), 0..3).prop_map(Value::from),
    ];
    prop::collection::btree_map("[a-z_]{1,6}|\\PC{1,4}", inner, 0..4)
        .prop_map(|map: BTreeMap<String, Value>| Value::Object(map.into_iter().collect()))
}

fn instance() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9-]{0,15}", "\\PC{0,12}"]
}

/// A name that may be stored as an app_config environment.
fn stored_environment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("prod".to_string()),
        Just("staging".to_string()),
        "[a-z][a-z0-9_-]{0,6}",
    ]
}

fn environment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => stored_environment(),
        1 => Just("*".to_string()),
        1 => "\\PC{0,8}",
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        3 => (instance(), checks(), environment()).prop_map(|(instance, checks, environment)| {
            Call::Api {
                instance,
                checks,
                environment,
            }
        }),
        2 => (
            prop::option::of(instance()),
            prop::option::of(checks()),
            prop::option::of(environment()),
        )
            .prop_map(|(instance, checks, environment)| Call::Sql {
                instance,
                checks,
                environment,
            }),
        1 => Just(Call::SqlDefaults),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::of((stored_environment(), "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}")),
        prop::collection::vec(call(), 1..=5),
    )
        .prop_map(|(set_version, calls)| Case { set_version, calls })
}

type Row = (
    DateTime<Utc>,
    Option<String>,
    String,
    i64,
    i32,
    i32,
    i64,
    f64,
    Value,
    Option<String>,
);

/// What the database says right after a call, to compare with its answer.
struct Server {
    max_connections: i32,
    database_size: i64,
    errors: i64,
}

async fn server_now(db: &TestDb) -> Server {
    let (max_connections, database_size, errors): (i32, i64, i64) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int,
                pg_database_size(current_database()),
                (SELECT coalesce(deadlocks, 0) + coalesce(conflicts, 0)
                   FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(&db.pool)
    .await
    .expect("server state");
    Server {
        max_connections,
        database_size,
        errors,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

async fn call_once(db: &TestDb, call: &Call) -> Result<SystemHealth, TestCaseError> {
    let store = Store::from_pool(db.pool.clone());
    let raw: Value = match call {
        Call::Api {
            instance,
            checks,
            environment,
        } => {
            let health = store
                .check_system_health(instance, checks, environment)
                .await
                .map_err(|err| TestCaseError::fail(format!("check_system_health: {err}")))?;
            return Ok(health);
        }
        Call::Sql {
            instance,
            checks,
            environment,
        } => sqlx::query_scalar("SELECT check_system_health($1, $2, $3)")
            .bind(instance.clone())
            .bind(checks.clone())
            .bind(environment.clone())
            .fetch_one(&db.pool)
            .await
            .map_err(|err| TestCaseError::fail(format!("SQL: {err}")))?,
        Call::SqlDefaults => sqlx::query_scalar("SELECT check_system_health()")
            .fetch_one(&db.pool)
            .await
            .map_err(|err| TestCaseError::fail(format!("SQL: {err}")))?,
    };
    let object = raw.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    prop_assert_eq!(
        keys,
        vec![
            "active_connections",
            "checked_at",
            "checks",
            "connection_utilization",
            "database_size_bytes",
            "error_count",
            "id",
            "instance",
            "max_connections",
            "response_time_ms",
            "status",
            "version",
        ]
    );
    // Explicit JSON nulls, never missing values, for the optional fields.
    prop_assert_eq!(object["instance"].as_str(), call.instance());
    serde_json::from_value(raw.clone())
        .map_err(|err| TestCaseError::fail(format!("decode {raw}: {err}")))
}

async fn run_case(
    db: &TestDb,
    versions: &Mutex<HashMap<String, String>>,
    case: Case,
) -> Result<(), TestCaseError> {
    if let Some((environment, version)) = &case.set_version {
        sqlx::query(
            "INSERT INTO app_config (key, environment, value) VALUES ('app_version', $1, to_jsonb($2::text))
             ON CONFLICT (key, environment) DO UPDATE SET value = excluded.value",
        )
        .bind(environment)
        .bind(version)
        .execute(&db.pool)
        .await
        .expect("set app_version");
        versions
            .lock()
            .expect("versions")
            .insert(environment.clone(), version.clone());
    }
    let mut rows = db.count("system_health").await;
    let mut last_id = 0;
    for call in &case.calls {
        let health = call_once(db, call).await?;
        let now = Utc::now();
        let server = server_now(db).await;

        // Every field, sane and consistent.
        prop_assert!(
            ["healthy", "degraded", "unhealthy"].contains(&health.status.as_str()),
            "status {}",
            health.status
        );
        prop_assert!(health.max_connections > 0);
        prop_assert_eq!(health.max_connections, server.max_connections);
        prop_assert!(
            health.active_connections > 0 && health.active_connections <= health.max_connections,
            "{} of {} connections",
            health.active_connections,
            health.max_connections
        );
        let (active, max) = (
            i64::from(health.active_connections),
            i64::from(health.max_connections),
        );
        let expected_status = if active * 100 >= 90 * max {
            "unhealthy"
        } else if active * 100 >= 75 * max {
            "degraded"
        } else {
            "healthy"
        };
        prop_assert_eq!(health.status.as_str(), expected_status);
        let ratio = active as f64 / max as f64;
        prop_assert!(
            (health.connection_utilization - ratio).abs() <= 0.000_051,
            "utilization {} for {active}/{max}",
            health.connection_utilization
        );
        prop_assert!(health.database_size_bytes > 0);
        prop_assert!(
            (health.database_size_bytes - server.database_size).abs() <= server.database_size / 10,
            "size {} but the database has {}",
            health.database_size_bytes,
            server.database_size
        );
        prop_assert!(health.error_count >= 0);
        prop_assert_eq!(health.error_count, server.errors);
        prop_assert!(
            health.response_time_ms >= 0.0 && health.response_time_ms < 5_000.0,
            "response time {}",
            health.response_time_ms
        );
        let skew = (now - health.checked_at).num_milliseconds();
        prop_assert!(
            (-2_000..5_000).contains(&skew),
            "checked_at {} is {skew} ms before now",
            health.checked_at
        );
        prop_assert_eq!(health.instance.as_deref(), call.instance());
        prop_assert_eq!(&health.checks, &call.checks());
        let expected_version = {
            let versions = versions.lock().expect("versions");
            call.environment()
                .and_then(|environment| versions.get(environment))
                .or_else(|| versions.get("*"))
                .cloned()
        };
        prop_assert_eq!(&health.version, &expected_version, "{:?}", call);

        // Exactly one new row, equal to the answer.
        rows += 1;
        prop_assert_eq!(db.count("system_health").await, rows);
        prop_assert!(health.id > last_id, "id {} after {last_id}", health.id);
        last_id = health.id;
        let row: Row = sqlx::query_as(
            "SELECT recorded_at, instance, status, database_size_bytes, active_connections,
                    max_connections, error_count, response_time_ms, checks, version
               FROM system_health WHERE id = $1",
        )
        .bind(health.id)
        .fetch_one(&db.pool)
        .await
        .expect("the recorded row");
        let (at, instance, status, size, active, max, errors, elapsed, checks, version) = row;
        prop_assert_eq!(at, health.checked_at);
        prop_assert_eq!(instance, health.instance.clone());
        prop_assert_eq!(status, health.status.clone());
        prop_assert_eq!(size, health.database_size_bytes);
        prop_assert_eq!(active, health.active_connections);
        prop_assert_eq!(max, health.max_connections);
        prop_assert_eq!(errors, health.error_count);
        prop_assert!(
            close(elapsed, health.response_time_ms),
            "{elapsed} vs {}",
            health.response_time_ms
        );
        prop_assert_eq!(&checks, &health.checks);
        prop_assert_eq!(version, health.version.clone());
    }
    Ok(())
}

#[test]
fn every_health_check_answers_sane_fields_and_records_exactly_that_row() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDb::new());
    // app_version per environment, as the migration seeds it plus two more.
    runtime.block_on(async {
        sqlx::query(
            "INSERT INTO app_config (key, environment, value) VALUES
                ('app_version', 'prod', '\"2.0.0-prod\"'),
                ('app_version', 'staging', '3')",
        )
        .execute(&db.pool)
        .await
        .expect("seed app_version");
    });
    let versions = Mutex::new(HashMap::from([
        ("*".to_string(), "0.0.0".to_string()),
        ("prod".to_string(), "2.0.0-prod".to_string()),
        ("staging".to_string(), "3".to_string()),
    ]));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/system_health.txt",
        ))),
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(run_case(&db, &versions, case))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[tokio::test]
async fn a_bare_sql_call_records_a_null_instance_empty_checks_and_the_default_version() {
    let db = TestDb::new().await;
    let raw: Value = sqlx::query_scalar("SELECT check_system_health()")
        .fetch_one(&db.pool)
        .await
        .expect("check_system_health()");
    assert_eq!(raw["instance"], Value::Null);
    assert_eq!(raw["checks"], json!({}));
    assert_eq!(raw["version"], json!("0.0.0"));
    assert_eq!(db.count("system_health").await, 1);
    let (instance, checks, version): (Option<String>, Value, Option<String>) =
        sqlx::query_as("SELECT instance, checks, version FROM system_health")
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(instance, None);
    assert_eq!(checks, json!({}));
    assert_eq!(version.as_deref(), Some("0.0.0"));
}

#[tokio::test]
async fn the_api_reports_the_version_of_its_environment_else_the_default() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO app_config (key, environment, value) VALUES ('app_version', 'prod', '\"1.4.2\"');
         UPDATE app_config SET value = '\"1.0.0\"' WHERE key = 'app_version' AND environment = '*'",
    )
    .execute(&db.pool)
    .await
    .expect("versions");
    let store = Store::from_pool(db.pool.clone());
    let checks = json!({"disk": "ok", "queue": 3});
    let prod = store
        .check_system_health("pod-1", &checks, "prod")
        .await
        .expect("prod");
    assert_eq!(prod.version.as_deref(), Some("1.4.2"));
    assert_eq!(prod.instance.as_deref(), Some("pod-1"));
    assert_eq!(prod.checks, checks);
    let dev = store
        .check_system_health("pod-2", &json!({}), "dev")
        .await
        .expect("dev");
    assert_eq!(dev.version.as_deref(), Some("1.0.0"));
    assert!(dev.id > prod.id);
    assert_eq!(db.count("system_health").await, 2);
}
