//! Start-up checks: settings valid, database reachable, migrations current,
//! every required table and the health function present (seed property 10).
//! Every problem is collected and reported together, one line each; `serve`
//! refuses to start on any of them.

use std::fmt;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::embedded_pg::EmbeddedPostgres;
use crate::health::RunnableCheck;
use crate::health::runners::Runner;
use crate::health::spec::CheckSpec;
use crate::settings::{DatabaseSettings, DatabaseSource, ServeArgs, Settings};
use crate::state::State;
use crate::store::listener::ChangeListener;
use crate::store::{SchemaProblem, Store};
use crate::telemetry;

/// One thing that stops readyd from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is at fault: a setting, "database", "database schema".
    pub subject: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// Every problem found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupReport {
    /// The problems, in the order they were found.
    pub problems: Vec<Problem>,
}

impl StartupReport {
    fn push(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            subject: subject.into(),
            message: message.into(),
        });
    }
}

impl fmt::Display for StartupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            writeln!(f, "error: {problem}")?;
        }
        Ok(())
    }
}

/// What a successful start-up hands to the server.
#[derive(Debug)]
pub struct Started {
    /// Validated settings.
    pub settings: Settings,
    /// The connected, migrated database.
    pub store: Store,
    /// The private PostgreSQL, when readyd runs its own.
    pub private_pg: Option<EmbeddedPostgres>,
    /// The bound gRPC listener.
    pub listener: TcpListener,
    /// The bound flagd-only listener, when `--flagd-listen` is set.
    pub flagd_listener: Option<TcpListener>,
    /// The in-memory state, loaded.
    pub state: Arc<State>,
    /// The change listener that keeps `state` current (not yet running).
    pub changes: ChangeListener,
    /// readyd's own database check and its runner.
    pub database_check: RunnableCheck,
    /// The declared dependency checks and their runners.
    pub checks: Vec<RunnableCheck>,
}

/// `readyd check`: runs every check without changing anything (no
/// migrations, no listening).
pub async fn check(args: &ServeArgs) -> StartupReport {
    let (report, _settings, database) = run_checks(args, false).await;
    if let Some(mut database) = database {
        // A private PostgreSQL that was already running belongs to a
        // running readyd: leave it be.
        if database
            .private_pg
            .as_ref()
            .is_some_and(EmbeddedPostgres::adopted)
        {
            database.private_pg = None;
        }
        database.release().await;
    }
    report
}

/// `readyd serve`'s first step: migrates (unless `--no-migrate`), runs every
/// check, binds the listener. On any problem, releases what it started and
/// returns the whole report.
pub async fn prepare(args: &ServeArgs) -> Result<Started, StartupReport> {
    let (mut report, settings, database) = run_checks(args, true).await;
    let listener = match &settings {
        Some(settings) => match TcpListener::bind(settings.listen).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                report.push(
                    "--listen (READYD_LISTEN)",
                    format!("cannot listen on {}: {err}", settings.listen),
                );
                None
            }
        },
        None => None,
    };
    let flagd_listener = match settings.as_ref().and_then(|settings| settings.flagd_listen) {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                report.push(
                    "--flagd-listen (READYD_FLAGD_LISTEN)",
                    format!("cannot listen on {addr}: {err}"),
                );
                None
            }
        },
        None => None,
    };
    // The exporter binds now, so a taken port is a start-up problem.
    if let Some(addr) = settings
        .as_ref()
        .and_then(|settings| settings.metrics_listen)
        && report.problems.is_empty()
        && let Err(message) = telemetry::install(addr)
    {
        report.push("--metrics-listen (READYD_METRICS_LISTEN)", message);
    }
    let runners = match (&settings, &database) {
        (Some(settings), Some(database)) => build_runners(settings, &database.store, &mut report),
        _ => None,
    };
    match (settings, database, listener, runners) {
        (Some(settings), Some(database), Some(listener), Some((database_check, checks)))
            if report.problems.is_empty() =>
        {
            // LISTEN before loading, so no change falls between the two.
            let loaded = match ChangeListener::connect(&database.store, &settings.environment).await
            {
                Ok(changes) => database
                    .store
                    .load_snapshot()
                    .await
                    .map(|snapshot| (changes, snapshot)),
                Err(err) => Err(err),
            };
            match loaded {
                Ok((changes, snapshot)) => Ok(Started {
                    settings,
                    store: database.store,
                    private_pg: database.private_pg,
                    listener,
                    flagd_listener,
                    state: Arc::new(State::new(snapshot)),
                    changes,
                    database_check,
                    checks,
                }),
                Err(err) => {
                    report.push(
                        "database",
                        format!("loading flags and configuration failed: {err}"),
                    );
                    database.release().await;
                    Err(report)
                }
            }
        }
        (_, database, _, _) => {
            if let Some(database) = database {
                database.release().await;
            }
            Err(report)
        }
    }
}

/// The runner of every check; a check whose runner cannot be built is a
/// start-up problem.
fn build_runners(
    settings: &Settings,
    store: &Store,
    report: &mut StartupReport,
) -> Option<(RunnableCheck, Vec<RunnableCheck>)> {
    let mut build = |spec: &CheckSpec| match Runner::new(&spec.target, store.pool()) {
        Ok(runner) => Some((spec.clone(), runner)),
        Err(message) => {
            report.push(
                "--check (READYD_CHECKS)",
                format!("check {:?}: {}", spec.name, spec.redactor.scrub(&message)),
            );
            None
        }
    };
    let database = build(&settings.database_check);
    let declared: Vec<_> = settings.checks.iter().map(&mut build).collect();
    let declared: Option<Vec<_>> = declared.into_iter().collect();
    Some((database?, declared?))
}

/// A database reached during the checks.
struct Database {
    store: Store,
    private_pg: Option<EmbeddedPostgres>,
}

impl Database {
    async fn release(self) {
        self.store.close().await;
        if let Some(pg) = self.private_pg {
            pg.stop_or_warn().await;
        }
    }
}

async fn run_checks(
    args: &ServeArgs,
    migrate: bool,
) -> (StartupReport, Option<Settings>, Option<Database>) {
    let mut report = StartupReport::default();
    let settings = match Settings::from_args(args) {
        Ok(settings) => Some(settings),
        Err(errors) => {
            for error in errors {
                report.push(error.setting, error.message);
            }
            None
        }
    };
    // The database is checked even when other settings are wrong, so that
    // one run reports everything.
    let Ok(db_settings) = DatabaseSettings::from_args(&args.database) else {
        return (report, settings, None);
    };
    let (options, private_pg) = match &db_settings.source {
        DatabaseSource::External(options) => ((**options).clone(), None),
        DatabaseSource::Private => match EmbeddedPostgres::start(&db_settings.data_dir, true).await
        {
            Ok(pg) => (pg.connect_options(), Some(pg)),
            Err(err) => {
                report.push("private PostgreSQL", err.to_string());
                return (report, settings, None);
            }
        },
    };
    let store = match Store::connect(options, db_settings.pool_size, db_settings.wait).await {
        Ok(store) => store,
        Err(err) => {
            report.push(
                "database",
                format!(
                    "cannot connect (tried for up to {}): {err}",
                    humantime::format_duration(db_settings.wait)
                ),
            );
            if let Some(pg) = private_pg.filter(|pg| !pg.adopted()) {
                pg.stop_or_warn().await;
            }
            return (report, settings, None);
        }
    };
    let database = Database { store, private_pg };
    // Migrating changes the database: only when everything else is right,
    // so a refused start leaves the database as it was.
    let will_migrate = migrate && db_settings.migrate;
    if will_migrate
        && settings.is_some()
        && let Err(err) = database.store.migrate().await
    {
        report.push("database", format!("applying migrations failed: {err}"));
    }
    match database.store.schema_problems().await {
        Ok(problems) => {
            for problem in problems {
                // serve applies pending migrations itself once the other
                // problems are fixed: they are not a problem of their own.
                if will_migrate && matches!(problem, SchemaProblem::PendingMigrations(_)) {
                    continue;
                }
                report.push("database schema", problem.to_string());
            }
        }
        Err(err) => report.push("database", format!("cannot inspect the schema: {err}")),
    }
    (report, settings, Some(database))
}
