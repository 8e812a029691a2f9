//! The embedded migrations against a real PostgreSQL: they can be applied
//! again without changing anything, `schema_problems()` tells a migrated
//! database from an empty one, the seeded defaults and the indexes of
//! DESIGN.md are there, and the check constraints refuse bad rows written by
//! plain SQL.

mod support;

use readyd::store::Store;
use sqlx::{AssertSqlSafe, PgPool};
use support::TestDb;

/// Everything that describes the public schema, as sorted text lines, plus
/// the row count of every table.
async fn schema_dump(pool: &PgPool) -> Vec<String> {
    let mut dump = Vec::new();
    let columns: Vec<(String, String, i32, String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, ordinal_position::int, data_type::text,
                is_nullable::text, column_default::text
           FROM information_schema.columns
          WHERE table_schema = 'public'
          ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("columns");
    assert!(columns.len() > 40, "too few columns: {columns:?}");
    for column in columns {
        dump.push(format!("column {column:?}"));
    }
    let indexes: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT tablename::text, indexname::text, indexdef FROM pg_indexes
          WHERE schemaname = 'public' ORDER BY tablename, indexname",
    )
    .fetch_all(pool)
    .await
    .expect("indexes");
    assert!(indexes.len() >= 10, "too few indexes: {indexes:?}");
    for index in indexes {
        dump.push(format!("index {index:?}"));
    }
    let functions: Vec<(String, String)> = sqlx::query_as(
        "SELECT proname::text, pg_get_function_identity_arguments(oid) FROM pg_proc
          WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("functions");
    assert!(
        functions
            .iter()
            .any(|(name, _)| name == "check_system_health"),
        "{functions:?}"
    );
    for function in functions {
        dump.push(format!("function {function:?}"));
    }
    let triggers: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT trigger_name::text, event_object_table::text, event_manipulation::text,
                action_timing::text
           FROM information_schema.triggers
          WHERE trigger_schema = 'public' ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .expect("triggers");
    assert!(triggers.len() >= 10, "too few triggers: {triggers:?}");
    for trigger in triggers {
        dump.push(format!("trigger {trigger:?}"));
    }
    for table in tables(pool).await {
        let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM public.{table}"
        )))
        .fetch_one(pool)
        .await
        .expect("count");
        dump.push(format!("rows {table} {rows}"));
    }
    dump
}

/// `Store::schema_problems()` as the lines an operator reads.
async fn problem_lines(store: &Store) -> Vec<String> {
    store
        .schema_problems()
        .await
        .expect("schema problems")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Names of the base tables of the public schema.
async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables")
}

#[tokio::test]
async fn applying_the_migrations_again_changes_nothing() {
    let db = TestDb::new().await;
    let store = Store::from_pool(db.pool.clone());
    let before = schema_dump(&db.pool).await;
    for table in readyd::store::REQUIRED_TABLES {
        assert!(
            before
                .iter()
                .any(|line| line.starts_with(&format!("rows {table} "))),
            "{table} missing from {before:#?}"
        );
    }
    let version_before: i64 = sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("sequence");

    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");

    let after = schema_dump(&db.pool).await;
    assert_eq!(before, after);
    let version_after: i64 = sqlx::query_scalar("SELECT last_value FROM readyd_change_version")
        .fetch_one(&db.pool)
        .await
        .expect("sequence");
    assert_eq!(
        version_before, version_after,
        "a repeated migration wrote changes"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("applied");
    assert_eq!(applied, readyd::store::migrator().iter().count() as i64);
}

#[tokio::test]
async fn a_migrated_database_has_no_schema_problems() {
    let db = TestDb::new().await;
    let problems = problem_lines(&Store::from_pool(db.pool.clone())).await;
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test]
async fn an_empty_database_reports_the_pending_migration_in_one_line() {
    let db = TestDb::empty().await;
    let store = Store::from_pool(db.pool.clone());
    let problems = problem_lines(&store).await;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let line = &problems[0];
    assert!(!line.contains('\n'), "{line:?}");
    let all = readyd::store::migrator().iter().count();
    assert!(
        line.starts_with(&format!("{all} migration(s) not applied")),
        "{line:?}"
    );
    assert!(line.contains("1 schema"), "{line:?}");
    assert!(line.contains("2 change log"), "{line:?}");
    assert!(line.contains("readyd migrate"), "{line:?}");

    // Checking did not create anything; migrating then clears the problem.
    assert_eq!(tables(&db.pool).await, Vec::<String>::new());
    store.migrate().await.expect("migrate");
    assert_eq!(problem_lines(&store).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_dropped_table_and_a_dropped_function_are_reported() {
    let db = TestDb::new().await;
    sqlx::query("DROP TABLE deployment_history")
        .execute(&db.pool)
        .await
        .expect("drop table");
    sqlx::query("DROP FUNCTION check_system_health(text, jsonb, text)")
        .execute(&db.pool)
        .await
        .expect("drop function");
    let problems = problem_lines(&Store::from_pool(db.pool.clone())).await;
    assert_eq!(
        problems,
        vec![
            "table deployment_history is missing".to_string(),
            "function check_system_health(text, jsonb, text) is missing".to_string(),
        ]
    );
}

#[tokio::test]
async fn the_default_configuration_is_seeded_for_every_environment() {
    let db = TestDb::new().await;
    let rows: Vec<(String, String, serde_json::Value, bool)> = sqlx::query_as(
        "SELECT key, environment, value, is_sensitive FROM app_config ORDER BY key, environment",
    )
    .fetch_all(&db.pool)
    .await
    .expect("app_config");
    let keys: Vec<&str> = rows.iter().map(|(key, ..)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "app_name",
            "app_version",
            "log_level",
            "maintenance_message",
            "maintenance_mode",
            "max_upload_mb",
            "session_timeout_minutes",
        ]
    );
    for (key, environment, value, sensitive) in &rows {
        assert_eq!(environment, "*", "{key}");
        assert!(!sensitive, "{key}");
        match key.as_str() {
            "maintenance_mode" => assert_eq!(value, &serde_json::json!(false)),
            "app_name" | "app_version" | "maintenance_message" | "log_level" => {
                assert!(value.is_string(), "{key} = {value}")
            }
            "max_upload_mb" | "session_timeout_minutes" => {
                assert!(value.as_i64().is_some_and(|n| n > 0), "{key} = {value}")
            }
            other => panic!("unexpected key {other}"),
        }
    }
    // Seeded through the triggers: versioned, and audited once each.
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM app_config")
        .fetch_all(&db.pool)
        .await
        .expect("versions");
    assert!(versions.iter().all(|v| *v > 0), "{versions:?}");
    assert_eq!(db.count("config_audit").await, 7);
}

#[tokio::test]
async fn the_default_feature_flags_are_seeded_switched_off() {
    let db = TestDb::new().await;
    let rows: Vec<(String, bool, i64)> =
        sqlx::query_as("SELECT key, enabled, version FROM feature_flags ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .expect("feature_flags");
    let keys: Vec<&str> = rows.iter().map(|(key, ..)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "advanced_reporting",
            "ai_insights",
            "beta_features",
            "dark_mode",
            "predictive_analytics",
        ]
    );
    for (key, enabled, version) in &rows {
        assert!(!enabled, "{key} is on");
        assert!(*version > 0, "{key} has version {version}");
    }
}

/// The column lists of the indexes on `table`: (unique, columns), with
/// ordering words (DESC, ASC) dropped.
async fn index_columns(pool: &PgPool, table: &str) -> Vec<(bool, Vec<String>)> {
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("pg_indexes");
    defs.iter()
        .map(|def| {
            let open = def.find('(').unwrap_or_else(|| panic!("{def}"));
            let close = def.rfind(')').unwrap_or_else(|| panic!("{def}"));
            let columns = def[open + 1..close]
                .split(',')
                .map(|column| {
                    column
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            (def.starts_with("CREATE UNIQUE INDEX"), columns)
        })
        .collect()
}

fn has_index(indexes: &[(bool, Vec<String>)], unique: bool, columns: &[&str]) -> bool {
    indexes.iter().any(|(u, cols)| {
        (*u || !unique) && cols.iter().map(String::as_str).eq(columns.iter().copied())
    })
}

#[tokio::test]
async fn the_indexes_of_the_design_exist() {
    let db = TestDb::new().await;
    let expected: [(&str, bool, &[&str]); 7] = [
        ("app_config", false, &["key"]),
        ("app_config", false, &["environment"]),
        ("app_config", true, &["key", "environment"]),
        ("deployment_history", false, &["environment"]),
        ("deployment_history", false, &["deployed_at"]),
        ("system_health", false, &["recorded_at"]),
        ("feature_flags", true, &["key"]),
    ];
    for (table, unique, columns) in expected {
        let indexes = index_columns(&db.pool, table).await;
        assert!(
            has_index(&indexes, unique, columns),
            "{table}: no {}index on {columns:?} in {indexes:?}",
            if unique { "unique " } else { "" }
        );
    }
    let primary_key: Option<String> = sqlx::query_scalar(
        "SELECT string_agg(a.attname, ',' ORDER BY a.attnum)
           FROM pg_constraint c
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
          WHERE c.conrelid = 'feature_flags'::regclass AND c.contype = 'p'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("primary key");
    assert_eq!(primary_key.as_deref(), Some("key"));
}

/// A fingerprint of every row of `table`, to see that nothing changed.
async fn table_state(pool: &PgPool, table: &str) -> (i64, String) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')
           FROM {table} t"
    )))
    .fetch_one(pool)
    .await
    .expect("table state")
}

async fn expect_check_violation(pool: &PgPool, sql: &str, table: &str) {
    let before = table_state(pool, table).await;
    let audit_before = table_state(pool, "config_audit").await;
    let err = sqlx::query(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .expect_err(sql);
    let code = err
        .as_database_error()
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("23514"), "{sql}: {err}");
    assert_eq!(
        table_state(pool, table).await,
        before,
        "{sql} changed {table}"
    );
    assert_eq!(
        table_state(pool, "config_audit").await,
        audit_before,
        "{sql} was audited"
    );
}

#[tokio::test]
async fn check_constraints_refuse_bad_rows_written_by_plain_sql() {
    let db = TestDb::new().await;
    let cases = [
        (
            "INSERT INTO feature_flags (key, rollout_percentage) VALUES ('new_flag', 101)",
            "feature_flags",
        ),
        (
            "INSERT INTO feature_flags (key, rollout_percentage) VALUES ('new_flag', -1)",
            "feature_flags",
        ),
        (
            "UPDATE feature_flags SET rollout_percentage = 101 WHERE key = 'dark_mode'",
            "feature_flags",
        ),
        (
            "INSERT INTO feature_flags (key, value_type) VALUES ('new_flag', 'date')",
            "feature_flags",
        ),
        (
            "UPDATE feature_flags SET value_type = 'date'",
            "feature_flags",
        ),
        (
            "INSERT INTO feature_flags (key) VALUES ('Bad Key')",
            "feature_flags",
        ),
        (
            "INSERT INTO app_config (key, value) VALUES ('Bad Key', '1')",
            "app_config",
        ),
        (
            "UPDATE app_config SET key = 'Bad Key' WHERE key = 'log_level'",
            "app_config",
        ),
        (
            "INSERT INTO app_config (key, environment, value) VALUES ('ok_key', 'Prod', '1')",
            "app_config",
        ),
        (
            "INSERT INTO deployment_history (version, environment, deployed_by, kind)
             VALUES ('1.0.0', 'prod', 'ci', 'hotfix')",
            "deployment_history",
        ),
        (
            "INSERT INTO system_health (status, database_size_bytes, active_connections,
                                        max_connections, error_count, response_time_ms)
             VALUES ('fine', 1, 1, 1, 0, 0)",
            "system_health",
        ),
    ];
    for (sql, table) in cases {
        expect_check_violation(&db.pool, sql, table).await;
    }
    // The same rows with good values are accepted: the refusals above were
    // about the bad value, not the statement.
    sqlx::query("INSERT INTO feature_flags (key, rollout_percentage, value_type) VALUES ('new_flag', 100, 'string')")
        .execute(&db.pool)
        .await
        .expect("a good flag");
    sqlx::query("INSERT INTO app_config (key, environment, value) VALUES ('ok_key', 'prod', '1')")
        .execute(&db.pool)
        .await
        .expect("a good config row");
    assert_eq!(db.count("feature_flags").await, 6);
    assert_eq!(db.count("app_config").await, 8);
}
