//! Start-up checks: settings valid, database reachable, migrations current,
//! every required table and the health function present (seed property 10);
//! on a follower, the upstream reachable and willing instead. Every problem
//! is collected and reported together, one line each; `serve` refuses to
//! start on any of them.

use std::fmt;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::client::{self, channel::RetryingChannel};
use crate::embedded_pg::EmbeddedPostgres;
use crate::health::RunnableCheck;
use crate::health::redact::redact_url;
use crate::health::runners::Runner;
use crate::health::spec::CheckSpec;
use crate::relay::coverage::Coverage;
use crate::relay::follower::{FollowError, Follower};
use crate::relay::verifiers;
use crate::settings::{DatabaseSettings, DatabaseSource, ServeArgs, Settings, Upstream};
use crate::snapshot_file::{self, SavedSnapshot, SnapshotFileError};
use crate::source::{self, Source};
use crate::state::{Freshness, Snapshot, State};
use crate::store::listener::ChangeListener;
use crate::store::{SchemaProblem, Store, StoreError};
use crate::telemetry;
use crate::tls::ServingTls;

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
    /// Where the data comes from: the database, or an upstream readyd.
    pub source: Source,
    /// The bound gRPC listener.
    pub listener: TcpListener,
    /// The bound flagd-only listener, when `--flagd-listen` is set.
    pub flagd_listener: Option<TcpListener>,
    /// The HTTP surface's listener, when asked for.
    pub http_listener: Option<TcpListener>,
    /// The bound plaintext probe listener, when `--probe-listen` is set.
    pub probe_listener: Option<TcpListener>,
    /// TLS for the gRPC listener, when `--tls-cert` is set.
    pub tls: Option<ServingTls>,
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The in-memory state, loaded.
    pub state: Arc<State>,
    /// readyd's own check of its source (database or upstream) and its
    /// runner.
    pub source_check: RunnableCheck,
    /// The declared dependency checks and their runners.
    pub checks: Vec<RunnableCheck>,
}

/// `readyd check`: runs every check without changing anything (no
/// migrations, no listening).
pub async fn check(args: &ServeArgs) -> StartupReport {
    let (mut report, settings, reached) = run_checks(args, false).await;
    if let Some(files) = settings.as_ref().and_then(|settings| settings.tls.as_ref())
        && let Err(problem) = ServingTls::load(files)
    {
        report.push("--tls-cert (READYD_TLS_CERT)", problem);
    }
    if let (Reached::Follower, Some(settings)) = (&reached, &settings) {
        // The upstream answers, speaks this protocol and takes the token.
        if let Err(problem) = try_following(settings).await {
            report.push("upstream", problem);
        }
    }
    if let Reached::Yes(mut database) = reached {
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
///
/// An external database that cannot be reached within `--db-wait` is no
/// problem when a valid snapshot of this environment was saved on disk:
/// readyd starts from it, STALE, and connects when the database answers.
pub async fn prepare(args: &ServeArgs) -> Result<Started, StartupReport> {
    let (mut report, settings, reached) = run_checks(args, true).await;
    if let Reached::Follower = reached {
        return match settings {
            Some(settings) => prepare_follower(settings, report).await,
            None => Err(report),
        };
    }
    let (database, saved) = match (reached, &settings) {
        (Reached::Yes(database), _) => (Some(*database), None),
        (Reached::Unreachable(options), Some(settings)) if report.problems.len() == 1 => {
            match saved_snapshot(settings) {
                Some(saved) => {
                    let unreachable = report.problems.remove(0);
                    tracing::warn!(
                        problem = %unreachable,
                        snapshot_version = saved.snapshot.version,
                        saved_at = %saved.written_at,
                        "starting from the snapshot saved on disk: answers carry reason STALE until the database answers"
                    );
                    let store = Store::lazy(
                        *options,
                        settings.database.pool_size,
                        settings.database.timeouts,
                    );
                    let database = Database {
                        store,
                        private_pg: None,
                    };
                    (Some(database), Some(saved))
                }
                None => (None, None),
            }
        }
        _ => (None, None),
    };
    let Bound {
        listener,
        flagd_listener,
        http_listener,
        probe_listener,
        tls,
        metrics_addr,
    } = bind(settings.as_ref(), &mut report).await;
    let runners = match (&settings, &database) {
        (Some(settings), Some(database)) => {
            build_runners(settings, Some(database.store.pool()), None, &mut report)
        }
        _ => None,
    };
    match (settings, database, listener, runners) {
        (Some(settings), Some(database), Some(listener), Some((source_check, checks)))
            if report.problems.is_empty() =>
        {
            let loaded = match saved {
                Some(saved) => Ok(from_disk(&database.store, &settings, saved)),
                None => from_database(&database.store, &settings).await,
            };
            match loaded {
                Ok((changes, snapshot, freshness)) => Ok(Started {
                    settings,
                    source: Source::Database {
                        store: database.store,
                        private_pg: database.private_pg,
                        changes,
                    },
                    listener,
                    flagd_listener,
                    http_listener,
                    probe_listener,
                    tls,
                    metrics_addr,
                    state: Arc::new(State::with_freshness(snapshot, freshness)),
                    source_check,
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

/// What start-up binds.
struct Bound {
    /// The gRPC listener.
    listener: Option<TcpListener>,
    /// The flagd-only listener, when asked for.
    flagd_listener: Option<TcpListener>,
    /// The HTTP surface's listener, when asked for.
    http_listener: Option<TcpListener>,
    /// The plaintext probe listener, when asked for.
    probe_listener: Option<TcpListener>,
    /// The loaded certificate, when TLS is asked for.
    tls: Option<ServingTls>,
    /// Where `/metrics` is served, when it is.
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Binds an extra port when its setting asks for one; a port that cannot
/// be bound is a start-up problem named after `setting`.
async fn bind_extra(
    addr: Option<std::net::SocketAddr>,
    setting: &'static str,
    report: &mut StartupReport,
) -> Option<TcpListener> {
    let addr = addr?;
    match TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(err) => {
            report.push(setting, format!("cannot listen on {addr}: {err}"));
            None
        }
    }
}

/// Binds the listeners and the metrics endpoint; a port that cannot be
/// bound is a start-up problem.
async fn bind(settings: Option<&Settings>, report: &mut StartupReport) -> Bound {
    let listener = match settings {
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
    let flagd_listener = bind_extra(
        settings.and_then(|settings| settings.flagd_listen),
        "--flagd-listen (READYD_FLAGD_LISTEN)",
        report,
    )
    .await;
    let http_listener = bind_extra(
        settings.and_then(|settings| settings.http_listen),
        "--http-listen (READYD_HTTP_LISTEN)",
        report,
    )
    .await;
    let probe_listener = bind_extra(
        settings.and_then(|settings| settings.probe_listen),
        "--probe-listen (READYD_PROBE_LISTEN)",
        report,
    )
    .await;
    let tls = match settings.as_ref().and_then(|settings| settings.tls.as_ref()) {
        Some(files) => match ServingTls::load(files) {
            Ok(tls) => Some(tls),
            Err(problem) => {
                report.push("--tls-cert (READYD_TLS_CERT)", problem);
                None
            }
        },
        None => None,
    };
    // The exporter binds now, so a taken port is a start-up problem.
    let mut metrics_addr = None;
    if let Some(addr) = settings
        .as_ref()
        .and_then(|settings| settings.metrics_listen)
        && report.problems.is_empty()
    {
        match telemetry::install(addr) {
            Ok(bound) => metrics_addr = bound,
            Err(message) => report.push("--metrics-listen (READYD_METRICS_LISTEN)", message),
        }
    }
    Bound {
        listener,
        flagd_listener,
        http_listener,
        probe_listener,
        tls,
        metrics_addr,
    }
}

/// `readyd serve` as a follower: no database; the first snapshot comes from
/// the upstream within `--db-wait`, or, when the upstream cannot be reached,
/// from the snapshot saved on disk (STALE until the upstream answers).
async fn prepare_follower(
    settings: Settings,
    mut report: StartupReport,
) -> Result<Started, StartupReport> {
    let (Some(upstream), Some(token)) = (
        settings.upstream.clone(),
        settings.replication_token.clone(),
    ) else {
        return Err(report);
    };
    let channel = match upstream_channel(&upstream) {
        Ok(channel) => channel,
        Err(message) => {
            report.push("--upstream (READYD_UPSTREAM)", message);
            return Err(report);
        }
    };
    let shown = redact_url(&upstream.url.to_string());
    let verifiers_path = verifiers::path_for(&settings.database.data_dir, &settings.environment);
    let saved_verifiers = verifiers::read(&verifiers_path);
    let (verifiers_tx, verifiers_rx) =
        watch::channel(Arc::new(saved_verifiers.clone().unwrap_or_default()));
    let coverage = Arc::new(Coverage::new(&settings.environment));
    let follower = Follower::new(
        shown.clone(),
        channel.clone(),
        token.clone(),
        settings.instance.clone(),
        settings.environment.clone(),
        Arc::clone(&coverage),
        verifiers_tx,
    );
    let freshness = Freshness::new(settings.stale_after);
    let (first, snapshot) = match follower.first_snapshot(settings.database.wait).await {
        Ok(followed) => {
            if let Some(age) = followed.upstream_stale_for {
                freshness.source_stale(age);
            }
            let snapshot = followed.snapshot.clone();
            (Some(followed), snapshot)
        }
        Err(FollowError::Unreachable(reason)) => match (saved_snapshot(&settings), saved_verifiers)
        {
            (Some(saved), Some(_)) => {
                tracing::warn!(
                    upstream = %shown,
                    problem = %reason,
                    snapshot_version = saved.snapshot.version,
                    saved_at = %saved.written_at,
                    "starting from the snapshot saved on disk: answers carry reason STALE until the upstream answers"
                );
                let age = (chrono::Utc::now() - saved.written_at)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                freshness.loaded_from_disk(age);
                (None, saved.snapshot)
            }
            _ => {
                report.push(
                    "upstream",
                    format!("{reason} (tried for up to {}), and no snapshot is saved on disk to start from", humantime::format_duration(settings.database.wait)),
                );
                return Err(report);
            }
        },
        Err(err) => {
            report.push("upstream", format!("{shown}: {err}"));
            return Err(report);
        }
    };
    let Bound {
        listener,
        flagd_listener,
        http_listener,
        probe_listener,
        tls,
        metrics_addr,
    } = bind(Some(&settings), &mut report).await;
    let runners = build_runners(&settings, None, Some(&channel), &mut report);
    match (listener, runners) {
        (Some(listener), Some((source_check, checks))) if report.problems.is_empty() => {
            Ok(Started {
                source: Source::Upstream(source::Upstream {
                    follower,
                    first,
                    channel,
                    coverage,
                    verifiers: verifiers_rx,
                    token,
                }),
                state: Arc::new(State::with_freshness(snapshot, freshness)),
                settings,
                listener,
                flagd_listener,
                http_listener,
                probe_listener,
                tls,
                metrics_addr,
                source_check,
                checks,
            })
        }
        _ => Err(report),
    }
}

/// Follows the upstream of `settings` until its first snapshot, and lets go.
async fn try_following(settings: &Settings) -> Result<(), String> {
    let (Some(upstream), Some(token)) = (&settings.upstream, &settings.replication_token) else {
        return Ok(());
    };
    let channel = upstream_channel(upstream)?;
    let shown = redact_url(&upstream.url.to_string());
    let (verifiers, _) = watch::channel(Arc::default());
    let follower = Follower::new(
        shown.clone(),
        channel,
        token.clone(),
        settings.instance.clone(),
        settings.environment.clone(),
        Arc::new(Coverage::new(&settings.environment)),
        verifiers,
    );
    follower
        .first_snapshot(settings.database.wait)
        .await
        .map(drop)
        .map_err(|err| format!("{shown}: {err}"))
}

/// The connection to an upstream: HTTP/2 pings find a dead one, TLS for
/// `https://` against `--upstream-ca` or the system's roots; connected on
/// first use.
pub fn upstream_channel(upstream: &Upstream) -> Result<RetryingChannel, String> {
    let mut endpoint = Endpoint::from(upstream.url.clone())
        .user_agent(concat!("readyd/", env!("CARGO_PKG_VERSION")))
        .map_err(|err| format!("cannot set the user agent: {err}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if upstream.is_tls() {
        let mut tls = ClientTlsConfig::new();
        tls = match &upstream.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|err| {
                    format!("cannot read --upstream-ca {}: {err}", path.display())
                })?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| format!("cannot set up TLS to the upstream: {err}"))?;
    }
    Ok(client::channel::connect_lazy(endpoint))
}

/// The change listener and the snapshot, from the database: LISTEN before
/// loading, so no change falls between the two.
async fn from_database(
    store: &Store,
    settings: &Settings,
) -> Result<(ChangeListener, Snapshot, Freshness), StoreError> {
    let changes = ChangeListener::connect(store, &settings.environment).await?;
    // A session holding the change lock makes the load time out
    // (--db-lock-timeout): try again until --db-wait has passed.
    let deadline = tokio::time::Instant::now() + settings.database.wait;
    let snapshot = loop {
        match store.load_snapshot().await {
            Err(err @ StoreError::TimedOut(_)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "loading flags and configuration timed out; trying again");
            }
            loaded => break loaded?,
        }
    };
    Ok((changes, snapshot, Freshness::new(settings.stale_after)))
}

/// The snapshot saved on disk, stale from the start, and a listener that
/// connects (and migrates) once the database answers.
fn from_disk(
    store: &Store,
    settings: &Settings,
    saved: SavedSnapshot,
) -> (ChangeListener, Snapshot, Freshness) {
    let changes =
        ChangeListener::disconnected(store, &settings.environment, settings.database.migrate);
    let freshness = Freshness::new(settings.stale_after);
    let age = (chrono::Utc::now() - saved.written_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    freshness.loaded_from_disk(age);
    (changes, saved.snapshot, freshness)
}

/// This environment's snapshot saved on disk, when there is a valid one. A
/// damaged or foreign file is ignored with a warning.
fn saved_snapshot(settings: &Settings) -> Option<SavedSnapshot> {
    let path = snapshot_file::path_for(&settings.database.data_dir, &settings.environment);
    match snapshot_file::read(&path, &settings.environment) {
        Ok(saved) => Some(saved),
        Err(SnapshotFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            tracing::info!(path = %path.display(), "no snapshot saved on disk to start from");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "the snapshot saved on disk is ignored");
            None
        }
    }
}

/// The runner of every check; a check whose runner cannot be built is a
/// start-up problem.
fn build_runners(
    settings: &Settings,
    pool: Option<&sqlx::PgPool>,
    upstream: Option<&RetryingChannel>,
    report: &mut StartupReport,
) -> Option<(RunnableCheck, Vec<RunnableCheck>)> {
    let mut build = |spec: &CheckSpec| match Runner::new(&spec.target, pool, upstream) {
        Ok(runner) => Some((spec.clone(), runner)),
        Err(message) => {
            report.push(
                "--check (READYD_CHECKS)",
                format!("check {:?}: {}", spec.name, spec.redactor.scrub(&message)),
            );
            None
        }
    };
    let source = build(&settings.source_check);
    let declared: Vec<_> = settings.checks.iter().map(&mut build).collect();
    let declared: Option<Vec<_>> = declared.into_iter().collect();
    Some((source?, declared?))
}

/// What became of the database during the checks.
enum Reached {
    /// Connected (and migrated, when asked).
    Yes(Box<Database>),
    /// An external database that did not answer within `--db-wait`: readyd
    /// may still start from the snapshot saved on disk.
    Unreachable(Box<PgConnectOptions>),
    /// Not reached for another reason, or not tried.
    No,
    /// Not tried: this readyd follows an upstream.
    Follower,
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

async fn run_checks(args: &ServeArgs, migrate: bool) -> (StartupReport, Option<Settings>, Reached) {
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
    // A follower has no database to check.
    if args
        .upstream
        .as_deref()
        .is_some_and(|upstream| !upstream.trim().is_empty())
    {
        return (report, settings, Reached::Follower);
    }
    // The database is checked even when other settings are wrong, so that
    // one run reports everything.
    let Ok(db_settings) = DatabaseSettings::from_args(&args.database) else {
        return (report, settings, Reached::No);
    };
    let (options, private_pg) = match &db_settings.source {
        DatabaseSource::External(options) => ((**options).clone(), None),
        DatabaseSource::Private => match EmbeddedPostgres::start(&db_settings.data_dir, true).await
        {
            Ok(pg) => (pg.connect_options(), Some(pg)),
            Err(err) => {
                report.push("private PostgreSQL", err.to_string());
                return (report, settings, Reached::No);
            }
        },
    };
    let store = match Store::connect(
        options.clone(),
        db_settings.pool_size,
        db_settings.wait,
        db_settings.timeouts,
    )
    .await
    {
        Ok(store) => store,
        Err(err) => {
            let unreachable = matches!(err, StoreError::Unavailable(_)) && private_pg.is_none();
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
            let reached = if unreachable {
                Reached::Unreachable(Box::new(options))
            } else {
                Reached::No
            };
            return (report, settings, reached);
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
    (report, settings, Reached::Yes(Box::new(database)))
}
