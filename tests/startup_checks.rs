//! Seed property 10: start-up validation reports exactly one problem per
//! injected fault, all at once, and none when there is none.

mod support;

use proptest::prelude::*;
use readyd::startup::{Problem, StartupReport};
use sqlx::AssertSqlSafe;
use support::{TestDb, serve_args};

/// One thing the test can break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    BadListenAddress,
    BadEnvironmentName,
    UnreachableDatabase,
    MissingTable,
    MissingFunction,
}

/// The database a case runs against. Unreachable excludes the schema faults:
/// nothing can be missing from a database that cannot be reached.
#[derive(Debug, Clone, Copy)]
enum DbFault {
    None,
    Unreachable,
    Schema {
        missing_table: bool,
        missing_function: bool,
    },
}

fn faults_strategy() -> impl Strategy<Value = (bool, bool, DbFault)> {
    let db = prop_oneof![
        Just(DbFault::None),
        Just(DbFault::Unreachable),
        (any::<bool>(), any::<bool>()).prop_map(|(missing_table, missing_function)| {
            DbFault::Schema {
                missing_table,
                missing_function,
            }
        }),
    ];
    (any::<bool>(), any::<bool>(), db)
}

fn injected(bad_listen: bool, bad_env: bool, db: DbFault) -> Vec<Fault> {
    let mut faults = Vec::new();
    if bad_listen {
        faults.push(Fault::BadListenAddress);
    }
    if bad_env {
        faults.push(Fault::BadEnvironmentName);
    }
    match db {
        DbFault::None => {}
        DbFault::Unreachable => faults.push(Fault::UnreachableDatabase),
        DbFault::Schema {
            missing_table,
            missing_function,
        } => {
            if missing_table {
                faults.push(Fault::MissingTable);
            }
            if missing_function {
                faults.push(Fault::MissingFunction);
            }
        }
    }
    faults
}

/// Which fault a reported problem stands for.
fn classify(problem: &Problem) -> Option<Fault> {
    match problem.subject.as_str() {
        "--listen (READYD_LISTEN)" => Some(Fault::BadListenAddress),
        "--environment (READYD_ENVIRONMENT)" => Some(Fault::BadEnvironmentName),
        "database" if problem.message.starts_with("cannot connect") => {
            Some(Fault::UnreachableDatabase)
        }
        "database schema" if problem.message.starts_with("table ") => Some(Fault::MissingTable),
        "database schema" if problem.message.starts_with("function ") => {
            Some(Fault::MissingFunction)
        }
        _ => None,
    }
}

/// Four databases, one per combination of schema faults, made once.
struct Databases {
    intact: TestDb,
    no_table: TestDb,
    no_function: TestDb,
    neither: TestDb,
}

async fn break_schema(db: &TestDb, table: bool, function: bool) {
    if table {
        sqlx::query("DROP TABLE deployment_history")
            .execute(&db.pool)
            .await
            .expect("drop table");
    }
    if function {
        sqlx::query(AssertSqlSafe(format!(
            "DROP FUNCTION {}",
            readyd::store::HEALTH_FUNCTION
        )))
        .execute(&db.pool)
        .await
        .expect("drop function");
    }
}

async fn databases() -> Databases {
    let dbs = Databases {
        intact: TestDb::new().await,
        no_table: TestDb::new().await,
        no_function: TestDb::new().await,
        neither: TestDb::new().await,
    };
    break_schema(&dbs.no_table, true, false).await;
    break_schema(&dbs.no_function, false, true).await;
    break_schema(&dbs.neither, true, true).await;
    dbs
}

async fn report_for(
    dbs: &Databases,
    bad_listen: bool,
    bad_env: bool,
    db: DbFault,
) -> StartupReport {
    let url = match db {
        DbFault::None => dbs.intact.url.clone(),
        // Port 1 refuses at once on loopback.
        DbFault::Unreachable => "postgres://postgres@127.0.0.1:1/readyd".to_owned(),
        DbFault::Schema {
            missing_table,
            missing_function,
        } => match (missing_table, missing_function) {
            (false, false) => dbs.intact.url.clone(),
            (true, false) => dbs.no_table.url.clone(),
            (false, true) => dbs.no_function.url.clone(),
            (true, true) => dbs.neither.url.clone(),
        },
    };
    let mut args = serve_args(&url);
    // Short only where nothing answers (so the case is quick); a database
    // that answers must never look unreachable on a busy machine.
    args.database.db_wait = if matches!(db, DbFault::Unreachable) {
        "150ms".into()
    } else {
        "30s".into()
    };
    if bad_listen {
        args.listen = "localhost:fifty".into();
    }
    if bad_env {
        args.environment = "Production!".into();
    }
    readyd::startup::check(&args).await
}

#[test]
fn the_report_holds_exactly_one_problem_per_injected_fault() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dbs = runtime.block_on(databases());
    proptest!(ProptestConfig::with_cases(32), |((bad_listen, bad_env, db) in faults_strategy())| {
        let report = runtime.block_on(report_for(&dbs, bad_listen, bad_env, db));
        let mut expected = injected(bad_listen, bad_env, db);
        let mut found: Vec<Option<Fault>> = report.problems.iter().map(classify).collect();
        prop_assert!(found.iter().all(Option::is_some), "unexpected problem in:\n{}", report);
        expected.sort_by_key(|f| *f as u8);
        found.sort_by_key(|f| f.map(|f| f as u8));
        let found: Vec<Fault> = found.into_iter().flatten().collect();
        prop_assert_eq!(found, expected, "report:\n{}", report);
    });
    runtime.block_on(async move { drop(dbs) });
}

#[tokio::test]
async fn every_problem_is_one_line_naming_its_subject() {
    let db = TestDb::new().await;
    break_schema(&db, true, true).await;
    let mut args = serve_args(&db.url);
    args.listen = "nowhere".into();
    args.environment = "UPPER".into();
    args.shutdown_timeout = "a while".into();
    let report = readyd::startup::check(&args).await;
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines.iter().all(|line| line.starts_with("error: ")),
        "{text}"
    );
    assert!(text.contains("deployment_history"), "{text}");
    assert!(text.contains("check_system_health"), "{text}");
}

#[tokio::test]
async fn serve_refuses_to_start_on_any_problem_and_keeps_the_database_as_it_was() {
    let db = TestDb::empty().await;
    let mut args = serve_args(&db.url);
    args.environment = "Not Valid".into();
    let report = readyd::startup::prepare(&args)
        .await
        .expect_err("must refuse");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(
        report.problems[0].subject,
        "--environment (READYD_ENVIRONMENT)"
    );
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .expect("query");
    assert!(!migrated, "a refused start must not migrate");
}

#[tokio::test]
async fn serve_migrates_a_fresh_database_unless_told_not_to() {
    let db = TestDb::empty().await;
    let mut args = serve_args(&db.url);
    args.database.no_migrate = true;
    let report = readyd::startup::prepare(&args)
        .await
        .expect_err("unmigrated");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0].message.contains("readyd migrate"),
        "{report}"
    );

    args.database.no_migrate = false;
    let started = readyd::startup::prepare(&args)
        .await
        .expect("migrated and started");
    assert!(readyd::startup::check(&args).await.problems.is_empty());
    drop(started);
}
