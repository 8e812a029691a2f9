//! Command-line flags and `READYD_*` environment variables, turned into
//! validated [`Settings`]. Every problem is collected, so a user fixes them
//! all in one round instead of one per restart (seed property 10).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::flags::is_valid_environment;
use crate::health::redact::redact_url;
use crate::health::spec::{CheckSpec, database_check, parse_checks, split_entries, upstream_check};
use crate::store::DbTimeouts;
use crate::tls::TlsFiles;

/// The flags shared by `serve` and `check`: everything a running readyd needs.
///
/// Values stay raw strings here so that [`Settings::from_args`] can report
/// every bad value at once instead of stopping at the first. The `Debug`
/// form shows no token, and URLs without their credentials.
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Address of the gRPC server (health, flags, config, deployments). Inside
    /// a Kubernetes pod use 0.0.0.0:50051 so the kubelet's probes reach it.
    #[arg(long, env = "READYD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Environment of this instance: picks config rows and flag environments.
    /// Lower case letters, digits, '_' and '-', at most 64 characters.
    #[arg(long, env = "READYD_ENVIRONMENT", default_value = "development")]
    pub environment: String,

    /// Token that mutations must present as `authorization: Bearer <token>`.
    /// Without it every mutation is refused. Prefer the environment variable:
    /// command lines are visible to other users of the machine.
    #[arg(long, env = "READYD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// When set, reads (flags, config, deployments, health report) need
    /// `authorization: Bearer <token>` with this token or the admin token.
    /// grpc.health.v1 probes never need a token.
    #[arg(long, env = "READYD_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,

    /// Token followers present to follow this readyd (the admin token works
    /// too); on a follower, the token it presents to its upstream. Prefer
    /// the environment variable.
    #[arg(long, env = "READYD_REPLICATION_TOKEN", hide_env_values = true)]
    pub replication_token: Option<String>,

    /// A token browsers and phones present to evaluate the flags marked
    /// client-visible over HTTP (OFREP, GET /api/feature-flags/{key}), and
    /// nothing else (repeatable; READYD_CLIENT_TOKEN takes them separated by
    /// commas). Prefer the environment variable.
    #[arg(
        long = "client-token",
        env = "READYD_CLIENT_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub client_token: Vec<String>,

    /// Follow this readyd (`http://host:port` or `https://…`) instead of a
    /// database: no database connection, no private PostgreSQL; writes and
    /// database reads are forwarded there. See README, "Scaling out".
    #[arg(long, env = "READYD_UPSTREAM")]
    pub upstream: Option<String>,

    /// CA certificate (PEM) that an `https://` upstream's certificate must
    /// chain to, instead of the system's roots.
    #[arg(long, env = "READYD_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// How long in-flight calls and streams get to finish after SIGTERM,
    /// e.g. 20s, 1m.
    #[arg(long, env = "READYD_SHUTDOWN_TIMEOUT", default_value = "20s")]
    pub shutdown_timeout: String,

    /// How long readyd keeps serving after SIGTERM with `readiness`
    /// NOT_SERVING (liveness still SERVING) before it stops accepting calls,
    /// so that load balancers and kube-proxy stop routing to it first (the
    /// usual preStop pause). 0 for a sidecar, whose callers have already
    /// exited; e.g. 5s for a central readyd behind a Service.
    #[arg(long, env = "READYD_DRAIN_DELAY", default_value = "0s")]
    pub drain_delay: String,

    /// Name of this instance in reports and history (default: $HOSTNAME or
    /// the host name; in Kubernetes, the pod name).
    #[arg(long, env = "READYD_INSTANCE")]
    pub instance: Option<String>,

    /// A dependency check, NAME=URL (repeatable). The scheme picks the
    /// runner: postgres, redis, amqp, nats, http(s), grpc, tcp, file. Query
    /// parameters: critical (true), interval (10s), timeout (2s), failures
    /// (3), min_free (file only). READYD_CHECKS takes the same pairs
    /// separated by commas or newlines.
    #[arg(long = "check", env = "READYD_CHECKS", hide_env_values = true)]
    pub checks: Vec<String>,

    /// Tuning of the built-in `database` check, as URL query parameters.
    #[arg(
        long,
        env = "READYD_DATABASE_CHECK",
        default_value = "interval=10s&timeout=2s&failures=3"
    )]
    pub database_check: String,

    /// Time between two recorded health history rows (a row is also
    /// recorded on every change of the overall status).
    #[arg(long, env = "READYD_HISTORY_INTERVAL", default_value = "60s")]
    pub history_interval: String,

    /// How long health history rows are kept.
    #[arg(long, env = "READYD_HISTORY_RETENTION", default_value = "7d")]
    pub history_retention: String,

    /// Time between two flushes of flag usage counts to the database (or
    /// the upstream); they are flushed at shutdown too.
    #[arg(long, env = "READYD_USAGE_FLUSH_INTERVAL", default_value = "60s")]
    pub usage_flush_interval: String,

    /// How long flag usage rows (hourly evaluation counts) are kept.
    #[arg(long, env = "READYD_USAGE_RETENTION", default_value = "90d")]
    pub usage_retention: String,

    /// Export a Prometheus counter of evaluations per flag and variant
    /// (readyd_flag_usage_evaluations_total). Off by default: flag keys are
    /// unbounded label values.
    #[arg(long, env = "READYD_METRICS_FLAG_LABELS")]
    pub metrics_flag_labels: bool,

    /// How long the change listener may be cut off from the database before
    /// answers carry reason STALE (a start from the saved snapshot is STALE
    /// at once).
    #[arg(long, env = "READYD_STALE_AFTER", default_value = "10s")]
    pub stale_after: String,

    /// Certificate chain (PEM) to serve TLS with, together with --tls-key.
    /// Both files are read again when they change (certificate rotation).
    #[arg(long, env = "READYD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "READYD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// An extra plaintext address serving only grpc.health.v1, for kubelet
    /// gRPC probes (which speak no TLS) when --tls-cert is set, or `off`.
    #[arg(long, env = "READYD_PROBE_LISTEN", default_value = "off")]
    pub probe_listen: String,

    /// An extra address serving only the flagd evaluation protocol, for
    /// OpenFeature flagd providers that expect flagd's port (usually
    /// 0.0.0.0:8013), or `off`. readyd's own port serves it too.
    #[arg(long, env = "READYD_FLAGD_LISTEN", default_value = "off")]
    pub flagd_listen: String,

    /// An address serving readyd's HTTP surface (HTTP/1.1 and HTTP/2):
    /// /livez, /readyz, /startupz and /api/health, e.g. 0.0.0.0:8014,
    /// or `off`.
    #[arg(long, env = "READYD_HTTP_LISTEN", default_value = "off")]
    pub http_listen: String,

    /// A web origin whose pages may call the HTTP surface from a browser
    /// (CORS), e.g. https://app.example.com (repeatable; READYD_CORS_ORIGIN
    /// takes them separated by commas), or `*` for any. None by default.
    #[arg(
        long = "cors-origin",
        env = "READYD_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Requests per second each token (and "no token") may make to the
    /// client-facing HTTP endpoints (OFREP evaluation, GET
    /// /api/feature-flags/{key}), in bursts of up to one second's; past it
    /// the answer is 429 with Retry-After. 0: no limit.
    #[arg(long, env = "READYD_CLIENT_RATE_LIMIT", default_value_t = crate::http::limit::DEFAULT_PER_SECOND)]
    pub client_rate_limit: u32,

    /// Serve the web console under /console on the HTTP surface (needs
    /// --http-listen and an admin token). Off by default: sidecars do not
    /// need it.
    #[arg(long, env = "READYD_CONSOLE")]
    pub console: bool,

    /// Concurrent HTTP/2 streams (calls) one connection may have open; a
    /// client past it waits for one to finish.
    #[arg(long, env = "READYD_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,

    /// Watch streams (WatchFlags, WatchConfigs, WatchHealth, grpc.health.v1
    /// Watch, flagd EventStream) open at once over all connections; past it
    /// a new one is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "READYD_MAX_WATCH_STREAMS", default_value_t = DEFAULT_MAX_WATCH_STREAMS)]
    pub max_watch_streams: usize,

    /// Replication (Follow) streams of followers open at once; counted apart
    /// from Watch streams.
    #[arg(long, env = "READYD_MAX_FOLLOW_STREAMS", default_value_t = DEFAULT_MAX_FOLLOW_STREAMS)]
    pub max_follow_streams: usize,

    /// Address of the Prometheus endpoint (`/metrics`), or `off`.
    #[arg(long, env = "READYD_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Where the database is and how readyd connects to it. Its `Debug` form
/// shows the URL without its password.
#[derive(clap::Args, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/db. When
    /// unset, readyd runs a private PostgreSQL in <data-dir>/pg (the server
    /// package must be installed).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for readyd's own files (the private PostgreSQL, snapshots).
    #[arg(long, env = "READYD_DATA_DIR", default_value = "./.readyd")]
    pub data_dir: PathBuf,

    /// Connections readyd keeps to the database at most. Small on purpose:
    /// a thousand sidecars must not exhaust a shared database.
    #[arg(long, env = "READYD_DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: u32,

    /// How long to keep trying to reach the database at start, e.g. 5s.
    #[arg(long, env = "READYD_DB_WAIT", default_value = "5s")]
    pub db_wait: String,

    /// Longest one database statement of readyd may run, e.g. 5s (0: no
    /// limit). A transaction of readyd's left idle that long is ended too.
    /// Migrations are exempt.
    #[arg(long, env = "READYD_DB_STATEMENT_TIMEOUT", default_value = "5s")]
    pub db_statement_timeout: String,

    /// Longest a database statement of readyd waits for a lock, e.g. 2s (0:
    /// no limit). A write that another session blocks (say, a `psql` left
    /// in a transaction after changing a flag) fails with UNAVAILABLE
    /// after this; migrations are exempt.
    #[arg(long, env = "READYD_DB_LOCK_TIMEOUT", default_value = "2s")]
    pub db_lock_timeout: String,

    /// Do not apply migrations at start (`readyd migrate` applies them).
    #[arg(long, env = "READYD_NO_MIGRATE")]
    pub no_migrate: bool,
}

/// What `Debug` shows of a token that may be set.
fn token_shown(token: Option<&String>) -> Option<&'static str> {
    token.map(|_| "<redacted>")
}

// The Debug forms destructure every field, so a new flag cannot be added
// without deciding here how it is shown.
impl fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ServeArgs {
            listen,
            database,
            environment,
            admin_token,
            read_token,
            replication_token,
            client_token,
            upstream,
            upstream_ca,
            shutdown_timeout,
            drain_delay,
            instance,
            checks,
            database_check,
            history_interval,
            history_retention,
            usage_flush_interval,
            usage_retention,
            metrics_flag_labels,
            stale_after,
            tls_cert,
            tls_key,
            probe_listen,
            flagd_listen,
            http_listen,
            cors_origin,
            client_rate_limit,
            console,
            max_streams_per_connection,
            max_watch_streams,
            max_follow_streams,
            metrics_listen,
            log,
        } = self;
        let checks: Vec<String> = split_entries(checks.iter().map(String::as_str))
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((name, url)) => format!("{name}={}", redact_url(url.trim())),
                None => redact_url(entry),
            })
            .collect();
        f.debug_struct("ServeArgs")
            .field("listen", listen)
            .field("database", database)
            .field("environment", environment)
            .field("admin_token", &token_shown(admin_token.as_ref()))
            .field("read_token", &token_shown(read_token.as_ref()))
            .field(
                "replication_token",
                &token_shown(replication_token.as_ref()),
            )
            .field("client_token", &format!("{} set", client_token.len()))
            .field("upstream", &upstream.as_deref().map(redact_url))
            .field("upstream_ca", upstream_ca)
            .field("shutdown_timeout", shutdown_timeout)
            .field("drain_delay", drain_delay)
            .field("instance", instance)
            .field("checks", &checks)
            .field("database_check", database_check)
            .field("history_interval", history_interval)
            .field("history_retention", history_retention)
            .field("usage_flush_interval", usage_flush_interval)
            .field("usage_retention", usage_retention)
            .field("metrics_flag_labels", metrics_flag_labels)
            .field("stale_after", stale_after)
            // Paths only: the key file's content is never read here.
            .field("tls_cert", tls_cert)
            .field("tls_key", tls_key)
            .field("probe_listen", probe_listen)
            .field("flagd_listen", flagd_listen)
            .field("http_listen", http_listen)
            .field("cors_origin", cors_origin)
            .field("client_rate_limit", client_rate_limit)
            .field("console", console)
            .field("max_streams_per_connection", max_streams_per_connection)
            .field("max_watch_streams", max_watch_streams)
            .field("max_follow_streams", max_follow_streams)
            .field("metrics_listen", metrics_listen)
            .field("log", log)
            .finish()
    }
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DatabaseArgs {
            database_url,
            data_dir,
            db_pool_size,
            db_wait,
            db_statement_timeout,
            db_lock_timeout,
            no_migrate,
        } = self;
        f.debug_struct("DatabaseArgs")
            .field("database_url", &database_url.as_deref().map(redact_url))
            .field("data_dir", data_dir)
            .field("db_pool_size", db_pool_size)
            .field("db_wait", db_wait)
            .field("db_statement_timeout", db_statement_timeout)
            .field("db_lock_timeout", db_lock_timeout)
            .field("no_migrate", no_migrate)
            .finish()
    }
}

/// Logging flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter in tracing's syntax, e.g. info or readyd=debug,info.
    #[arg(long = "log", env = "READYD_LOG", default_value = "info")]
    pub filter: String,

    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "READYD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A secret string: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where readyd's database lives.
#[derive(Clone)]
pub enum DatabaseSource {
    /// An existing PostgreSQL, from DATABASE_URL.
    External(Box<PgConnectOptions>),
    /// readyd's private PostgreSQL in `<data-dir>/pg`.
    Private,
}

/// Shows where the database is, never its password (sqlx's own `Debug` of
/// the options prints it) nor client key material.
impl fmt::Debug for DatabaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::External(options) => f
                .debug_struct("External")
                .field("host", &options.get_host())
                .field("port", &options.get_port())
                .field("username", &options.get_username())
                .field("database", &options.get_database())
                .finish_non_exhaustive(),
            Self::Private => f.write_str("Private"),
        }
    }
}

/// Validated database settings.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    /// External or private.
    pub source: DatabaseSource,
    /// readyd's own directory.
    pub data_dir: PathBuf,
    /// Pool size, at least 1.
    pub pool_size: u32,
    /// How long to try to connect at start.
    pub wait: Duration,
    /// Whether to apply migrations at start.
    pub migrate: bool,
    /// Bounds on statements and lock waits.
    pub timeouts: DbTimeouts,
}

/// Validated settings of a running readyd.
#[derive(Clone, Debug)]
pub struct Settings {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Database settings.
    pub database: DatabaseSettings,
    /// This instance's environment (valid name).
    pub environment: String,
    /// Admin token, if mutations are enabled.
    pub admin_token: Option<Secret>,
    /// Read token, if reads are guarded.
    pub read_token: Option<Secret>,
    /// Replication token: accepted from followers; sent to the upstream.
    pub replication_token: Option<Secret>,
    /// Client tokens: evaluation of client-visible flags over HTTP.
    pub client_tokens: Vec<Secret>,
    /// The readyd this one follows, when it is a follower.
    pub upstream: Option<Upstream>,
    /// Grace period after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Time between SIGTERM and the drain, serving with readiness NOT_SERVING.
    pub drain_delay: Duration,
    /// Instance name.
    pub instance: String,
    /// Declared dependency checks.
    pub checks: Vec<CheckSpec>,
    /// readyd's own check of its source: the database, or the upstream.
    pub source_check: CheckSpec,
    /// Time between two regular health history rows.
    pub history_interval: Duration,
    /// How long health history rows are kept.
    pub history_retention: Duration,
    /// Time between two flag usage flushes.
    pub usage_flush_interval: Duration,
    /// How long flag usage rows are kept.
    pub usage_retention: Duration,
    /// Whether usage is exported per flag and variant to Prometheus.
    pub metrics_flag_labels: bool,
    /// How long the listener may be down before answers are STALE.
    pub stale_after: Duration,
    /// Where `/metrics` is served; None when off.
    pub metrics_listen: Option<SocketAddr>,
    /// The extra flagd-only address; None when off.
    pub flagd_listen: Option<SocketAddr>,
    /// The HTTP surface's address, when on.
    pub http_listen: Option<SocketAddr>,
    /// Origins allowed to call the HTTP surface from a browser (`*`: any).
    pub cors_origins: Vec<String>,
    /// Requests per second per token on the client-facing endpoints; 0: none.
    pub client_rate_limit: u32,
    /// Whether the web console is served.
    pub console: bool,
    /// Certificate and key to serve TLS with; None for plaintext.
    pub tls: Option<TlsFiles>,
    /// The extra plaintext grpc.health.v1-only address; None when off.
    pub probe_listen: Option<SocketAddr>,
    /// Limits on open streams.
    pub limits: StreamLimits,
}

/// Default of `--max-streams-per-connection`: far above what a client
/// needs, low enough that one connection cannot hold thousands of streams.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// Default of `--max-watch-streams`.
pub const DEFAULT_MAX_WATCH_STREAMS: usize = 20_000;
/// Default of `--max-follow-streams`.
pub const DEFAULT_MAX_FOLLOW_STREAMS: usize = 20_000;

/// The readyd a follower follows. Its `Debug` form shows the URL without
/// credentials.
#[derive(Clone)]
pub struct Upstream {
    /// `http://host:port` or `https://host:port`.
    pub url: http::Uri,
    /// The CA its certificate must chain to (https), instead of the
    /// system's roots.
    pub ca: Option<PathBuf>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &redact_url(&self.url.to_string()))
            .field("ca", &self.ca)
            .finish()
    }
}

impl Upstream {
    /// Whether the connection uses TLS.
    pub fn is_tls(&self) -> bool {
        self.url.scheme_str() == Some("https")
    }
}

/// How many streams readyd keeps open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// HTTP/2 streams per connection.
    pub per_connection: u32,
    /// Watch streams over all connections.
    pub watch: usize,
    /// Follow streams over all connections.
    pub follow: usize,
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct SettingsError {
    /// The flag and variable at fault, e.g. "--listen (READYD_LISTEN)".
    pub setting: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

impl SettingsError {
    fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }
}

/// Largest database pool readyd accepts; more is never what a sidecar wants.
const MAX_POOL_SIZE: u32 = 100;

/// Longest statement or lock timeout accepted (PostgreSQL takes at most
/// 2^31 - 1 ms); longer is the same as no limit, which is spelled 0.
const MAX_DB_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl DatabaseSettings {
    /// Validates the database flags, collecting every problem.
    pub fn from_args(args: &DatabaseArgs) -> Result<Self, Vec<SettingsError>> {
        let mut errors = Vec::new();
        let source = match args.database_url.as_deref().map(str::trim) {
            None | Some("") => Some(DatabaseSource::Private),
            Some(url) => match PgConnectOptions::from_str(url) {
                Ok(options)
                    if url.starts_with("postgres://") || url.starts_with("postgresql://") =>
                {
                    Some(DatabaseSource::External(Box::new(options)))
                }
                // The URL may hold a password: name the problem, never echo it.
                _ => {
                    errors.push(SettingsError::new(
                        "--database-url (DATABASE_URL)",
                        "not a valid PostgreSQL URL; expected postgres://user:password@host:5432/database",
                    ));
                    None
                }
            },
        };
        if args.db_pool_size == 0 || args.db_pool_size > MAX_POOL_SIZE {
            errors.push(SettingsError::new(
                "--db-pool-size (READYD_DB_POOL_SIZE)",
                format!(
                    "{} is out of range; expected 1 to {MAX_POOL_SIZE}",
                    args.db_pool_size
                ),
            ));
        }
        let wait = parse_duration("--db-wait (READYD_DB_WAIT)", &args.db_wait, &mut errors);
        let statement_timeout = parse_duration(
            "--db-statement-timeout (READYD_DB_STATEMENT_TIMEOUT)",
            &args.db_statement_timeout,
            &mut errors,
        );
        let lock_timeout = parse_duration(
            "--db-lock-timeout (READYD_DB_LOCK_TIMEOUT)",
            &args.db_lock_timeout,
            &mut errors,
        );
        for (setting, value) in [
            (
                "--db-statement-timeout (READYD_DB_STATEMENT_TIMEOUT)",
                statement_timeout,
            ),
            ("--db-lock-timeout (READYD_DB_LOCK_TIMEOUT)", lock_timeout),
        ] {
            if let Some(value) = value
                && value > MAX_DB_TIMEOUT
            {
                errors.push(SettingsError::new(
                    setting,
                    format!(
                        "{} is too long; at most {} (0 for no limit)",
                        humantime::format_duration(value),
                        humantime::format_duration(MAX_DB_TIMEOUT)
                    ),
                ));
            }
        }
        if args.data_dir.as_os_str().is_empty() {
            errors.push(SettingsError::new(
                "--data-dir (READYD_DATA_DIR)",
                "must not be empty",
            ));
        }
        match (source, wait, statement_timeout, lock_timeout) {
            (Some(source), Some(wait), Some(statement), Some(lock)) if errors.is_empty() => {
                Ok(Self {
                    source,
                    data_dir: args.data_dir.clone(),
                    pool_size: args.db_pool_size,
                    wait,
                    migrate: !args.no_migrate,
                    timeouts: DbTimeouts { statement, lock },
                })
            }
            _ => Err(errors),
        }
    }
}

impl Settings {
    /// Validates every flag, collecting every problem.
    pub fn from_args(args: &ServeArgs) -> Result<Self, Vec<SettingsError>> {
        let mut errors = Vec::new();
        let listen = match args.listen.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(SettingsError::new(
                    "--listen (READYD_LISTEN)",
                    format!(
                        "{:?} is not an address; expected IP:PORT, e.g. 127.0.0.1:50051",
                        args.listen
                    ),
                ));
                None
            }
        };
        let database = DatabaseSettings::from_args(&args.database)
            .map_err(|mut db_errors| errors.append(&mut db_errors))
            .ok();
        if !is_valid_environment(&args.environment) {
            errors.push(SettingsError::new(
                "--environment (READYD_ENVIRONMENT)",
                format!(
                    "{:?} is not a valid environment name; expected lower case letters, digits, '_' and '-', \
                     starting with a letter or digit, at most 64 characters",
                    args.environment
                ),
            ));
        }
        let admin_token = parse_token(
            "READYD_ADMIN_TOKEN",
            args.admin_token.as_deref(),
            &mut errors,
        );
        let read_token = parse_token("READYD_READ_TOKEN", args.read_token.as_deref(), &mut errors);
        let replication_token = parse_token(
            "READYD_REPLICATION_TOKEN",
            args.replication_token.as_deref(),
            &mut errors,
        );
        let client_tokens: Vec<Secret> = args
            .client_token
            .iter()
            .filter_map(|raw| parse_token("READYD_CLIENT_TOKEN", Some(raw), &mut errors))
            .collect();
        // A client token ships in web pages and apps: one that is also the
        // admin or read token would hand those out.
        if client_tokens.iter().any(|client| {
            [admin_token.as_ref(), read_token.as_ref()]
                .into_iter()
                .flatten()
                .any(|other| other.expose() == client.expose())
        }) {
            errors.push(SettingsError::new(
                "READYD_CLIENT_TOKEN",
                "a client token must differ from the admin and read tokens: it ships in web pages and apps",
            ));
        }
        let upstream = parse_upstream(args, &mut errors);
        let shutdown_timeout = parse_duration(
            "--shutdown-timeout (READYD_SHUTDOWN_TIMEOUT)",
            &args.shutdown_timeout,
            &mut errors,
        );
        let drain_delay = parse_duration(
            "--drain-delay (READYD_DRAIN_DELAY)",
            &args.drain_delay,
            &mut errors,
        );
        let checks = match parse_checks(args.checks.iter().map(String::as_str)) {
            Ok(checks) => Some(checks),
            Err(check_errors) => {
                errors.extend(
                    check_errors
                        .into_iter()
                        .map(|err| SettingsError::new("--check (READYD_CHECKS)", err.0)),
                );
                None
            }
        };
        let database_display = match args.database.database_url.as_deref().map(str::trim) {
            None | Some("") => "private PostgreSQL".to_owned(),
            Some(url) => redact_url(url),
        };
        let source_check = match &upstream {
            Some(upstream) => {
                upstream_check(&args.database_check, &redact_url(&upstream.url.to_string()))
            }
            None => database_check(&args.database_check, &database_display),
        };
        let source_check = source_check
            .map_err(|err| {
                errors.push(SettingsError::new(
                    "--database-check (READYD_DATABASE_CHECK)",
                    err.0,
                ));
            })
            .ok();
        let history_interval = parse_duration(
            "--history-interval (READYD_HISTORY_INTERVAL)",
            &args.history_interval,
            &mut errors,
        );
        if history_interval.is_some_and(|interval| interval < Duration::from_secs(1)) {
            errors.push(SettingsError::new(
                "--history-interval (READYD_HISTORY_INTERVAL)",
                "is too short; at least 1s",
            ));
        }
        let history_retention = parse_duration(
            "--history-retention (READYD_HISTORY_RETENTION)",
            &args.history_retention,
            &mut errors,
        );
        let usage_flush_interval = parse_duration(
            "--usage-flush-interval (READYD_USAGE_FLUSH_INTERVAL)",
            &args.usage_flush_interval,
            &mut errors,
        );
        if usage_flush_interval.is_some_and(|interval| interval < Duration::from_millis(100)) {
            errors.push(SettingsError::new(
                "--usage-flush-interval (READYD_USAGE_FLUSH_INTERVAL)",
                "is too short; at least 100ms",
            ));
        }
        let usage_retention = parse_duration(
            "--usage-retention (READYD_USAGE_RETENTION)",
            &args.usage_retention,
            &mut errors,
        );
        if usage_retention.is_some_and(|retention| retention < Duration::from_secs(3600)) {
            errors.push(SettingsError::new(
                "--usage-retention (READYD_USAGE_RETENTION)",
                "is too short; at least 1h (rows are hourly)",
            ));
        }
        let stale_after = parse_duration(
            "--stale-after (READYD_STALE_AFTER)",
            &args.stale_after,
            &mut errors,
        );
        let metrics_listen = optional_address(
            "--metrics-listen (READYD_METRICS_LISTEN)",
            &args.metrics_listen,
            "127.0.0.1:9464",
            &mut errors,
        );
        let flagd_listen = optional_address(
            "--flagd-listen (READYD_FLAGD_LISTEN)",
            &args.flagd_listen,
            "0.0.0.0:8013",
            &mut errors,
        );
        let cors_origins = cors_origins(&args.cors_origin, &mut errors);
        let http_listen = optional_address(
            "--http-listen (READYD_HTTP_LISTEN)",
            &args.http_listen,
            "0.0.0.0:8014",
            &mut errors,
        );
        if args.console {
            const CONSOLE: &str = "--console (READYD_CONSOLE)";
            if matches!(&http_listen, Some(None)) {
                errors.push(SettingsError::new(
                    CONSOLE,
                    "the console is served on the HTTP surface: set --http-listen (e.g. 0.0.0.0:8014)",
                ));
            }
            if args.upstream.is_some() {
                errors.push(SettingsError::new(
                    CONSOLE,
                    "run the console on a readyd with a database, not on a follower",
                ));
            } else if args.admin_token.is_none() {
                errors.push(SettingsError::new(
                    CONSOLE,
                    "the console needs an admin token to sign in with: set READYD_ADMIN_TOKEN (e.g. to the output of `openssl rand -hex 32`)",
                ));
            }
        }
        let probe_listen = optional_address(
            "--probe-listen (READYD_PROBE_LISTEN)",
            &args.probe_listen,
            "0.0.0.0:50052",
            &mut errors,
        );
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                errors.push(SettingsError::new(
                    "--tls-cert (READYD_TLS_CERT)",
                    "--tls-cert and --tls-key go together: set both, or neither",
                ));
                None
            }
        };
        for (setting, value) in [
            (
                "--max-streams-per-connection (READYD_MAX_STREAMS_PER_CONNECTION)",
                args.max_streams_per_connection as usize,
            ),
            (
                "--max-watch-streams (READYD_MAX_WATCH_STREAMS)",
                args.max_watch_streams,
            ),
            (
                "--max-follow-streams (READYD_MAX_FOLLOW_STREAMS)",
                args.max_follow_streams,
            ),
        ] {
            if value == 0 {
                errors.push(SettingsError::new(setting, "must be at least 1".to_owned()));
            }
        }
        let limits = StreamLimits {
            per_connection: args.max_streams_per_connection,
            watch: args.max_watch_streams,
            follow: args.max_follow_streams,
        };
        let instance = args
            .instance
            .clone()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(default_instance_name);

        match (
            listen,
            database,
            shutdown_timeout,
            checks,
            source_check,
            history_interval,
            history_retention,
            stale_after,
            metrics_listen,
            flagd_listen,
            http_listen,
            probe_listen,
        ) {
            (
                Some(listen),
                Some(database),
                Some(shutdown_timeout),
                Some(checks),
                Some(source_check),
                Some(history_interval),
                Some(history_retention),
                Some(stale_after),
                Some(metrics_listen),
                Some(flagd_listen),
                Some(http_listen),
                Some(probe_listen),
            ) if errors.is_empty() => Ok(Self {
                listen,
                database,
                environment: args.environment.clone(),
                admin_token,
                read_token,
                replication_token,
                client_tokens,
                upstream,
                shutdown_timeout,
                // Parsed above; an unparsable value is among `errors`.
                drain_delay: drain_delay.unwrap_or_default(),
                instance,
                checks,
                source_check,
                history_interval,
                history_retention,
                // Parsed above; an unparsable value is among `errors`.
                usage_flush_interval: usage_flush_interval.unwrap_or_default(),
                usage_retention: usage_retention.unwrap_or_default(),
                metrics_flag_labels: args.metrics_flag_labels,
                stale_after,
                metrics_listen,
                flagd_listen,
                http_listen,
                cors_origins,
                client_rate_limit: args.client_rate_limit,
                console: args.console,
                tls,
                probe_listen,
                limits,
            }),
            _ => Err(errors),
        }
    }
}

/// An address, or None for `off`; `example` shows the expected form.
fn optional_address(
    setting: &'static str,
    raw: &str,
    example: &str,
    errors: &mut Vec<SettingsError>,
) -> Option<Option<SocketAddr>> {
    match raw.trim() {
        "off" | "" => Some(None),
        raw => match raw.parse::<SocketAddr>() {
            Ok(addr) => Some(Some(addr)),
            Err(_) => {
                errors.push(SettingsError::new(
                    setting,
                    format!("{raw:?} is not an address; expected IP:PORT, e.g. {example}, or off"),
                ));
                None
            }
        },
    }
}

/// `--cors-origin`: each a web origin (`scheme://host[:port]`, nothing
/// after) or `*`.
fn cors_origins(raw: &[String], errors: &mut Vec<SettingsError>) -> Vec<String> {
    const SETTING: &str = "--cors-origin (READYD_CORS_ORIGIN)";
    let mut origins = Vec::new();
    for origin in raw
        .iter()
        .map(|origin| origin.trim())
        .filter(|o| !o.is_empty())
    {
        if origin == "*" {
            origins.push(origin.to_owned());
            continue;
        }
        let valid = url::Url::parse(origin).ok().is_some_and(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some()
                && url.origin().ascii_serialization() == origin
        });
        if valid {
            origins.push(origin.to_owned());
        } else {
            errors.push(SettingsError::new(
                SETTING,
                format!(
                    "{:?} is not a web origin; expected scheme://host[:port] with nothing after, e.g. https://app.example.com, or *",
                    crate::echo::truncate(origin)
                ),
            ));
        }
    }
    origins
}

/// `--upstream` and what goes with it: a follower has no database and
/// takes its tokens from its upstream.
fn parse_upstream(args: &ServeArgs, errors: &mut Vec<SettingsError>) -> Option<Upstream> {
    const SETTING: &str = "--upstream (READYD_UPSTREAM)";
    let Some(raw) = args
        .upstream
        .as_deref()
        .map(str::trim)
        .filter(|raw| !raw.is_empty())
    else {
        if args.upstream_ca.is_some() {
            errors.push(SettingsError::new(
                "--upstream-ca (READYD_UPSTREAM_CA)",
                "only a follower uses it: set --upstream too, or remove it",
            ));
        }
        return None;
    };
    let url = match raw.parse::<http::Uri>() {
        Ok(url)
            if matches!(url.scheme_str(), Some("http" | "https"))
                && url.host().is_some()
                && url.path_and_query().is_none_or(|path| path.as_str() == "/") =>
        {
            url
        }
        _ => {
            errors.push(SettingsError::new(
                SETTING,
                format!(
                    "{:?} is not an upstream address; expected http://HOST:PORT or https://HOST:PORT",
                    redact_url(raw)
                ),
            ));
            return None;
        }
    };
    let upstream = Upstream {
        url,
        ca: args.upstream_ca.clone(),
    };
    if upstream.ca.is_some() && !upstream.is_tls() {
        errors.push(SettingsError::new(
            "--upstream-ca (READYD_UPSTREAM_CA)",
            "only an https:// upstream has a certificate to verify",
        ));
    }
    if args
        .database
        .database_url
        .as_deref()
        .is_some_and(|url| !url.trim().is_empty())
    {
        errors.push(SettingsError::new(
            SETTING,
            "a follower has no database: unset DATABASE_URL (--database-url), or unset --upstream to use the database",
        ));
    }
    if args.admin_token.is_some() || args.read_token.is_some() || !args.client_token.is_empty() {
        errors.push(SettingsError::new(
            SETTING,
            "a follower takes its tokens from its upstream: unset READYD_ADMIN_TOKEN, READYD_READ_TOKEN and READYD_CLIENT_TOKEN",
        ));
    }
    if args.replication_token.is_none() {
        errors.push(SettingsError::new(
            SETTING,
            "a follower presents a replication token to its upstream: set READYD_REPLICATION_TOKEN",
        ));
    }
    Some(upstream)
}

fn parse_duration(
    setting: &'static str,
    raw: &str,
    errors: &mut Vec<SettingsError>,
) -> Option<Duration> {
    match humantime::parse_duration(raw.trim()) {
        Ok(duration) => Some(duration),
        Err(err) => {
            errors.push(SettingsError::new(
                setting,
                format!("{raw:?} is not a duration ({err}); expected e.g. 500ms, 20s, 1m"),
            ));
            None
        }
    }
}

fn parse_token(
    setting: &'static str,
    raw: Option<&str>,
    errors: &mut Vec<SettingsError>,
) -> Option<Secret> {
    let raw = raw?;
    if raw.trim().is_empty() {
        // An empty token set by mistake must not silently disable auth.
        errors.push(SettingsError::new(
            setting,
            "is set but empty; unset it or give a token",
        ));
        return None;
    }
    if raw.trim() != raw || raw.chars().any(char::is_control) {
        errors.push(SettingsError::new(
            setting,
            "contains white space or control characters at its ends or inside; check how it was set",
        ));
        return None;
    }
    Some(Secret::new(raw))
}

fn default_instance_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
        })
        .unwrap_or_else(|| "readyd".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use proptest::prelude::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["readyd"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    /// Every secret a setting can hold, none of which a Debug form may show.
    const SECRETS: [&str; 6] = [
        "Pa55w0rdDB",
        "ADMINt0ken",
        "READt0ken",
        "REPLt0ken",
        "NATSt0ken",
        "UPSTREAMt0ken",
    ];

    fn assert_no_secret(shown: &str) {
        for secret in SECRETS {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn debug_never_shows_the_database_password_or_a_token() {
        let mut raw = args(&[]);
        raw.database.database_url =
            Some("postgres://app:Pa55w0rdDB@db.internal:5433/orders?sslmode=prefer".into());
        raw.admin_token = Some("ADMINt0ken".into());
        raw.read_token = Some("READt0ken".into());
        raw.replication_token = Some("REPLt0ken".into());
        raw.checks = vec!["bus=nats://NATSt0ken@bus:4222,web=https://h/x?token=Pa55w0rdDB".into()];
        assert_no_secret(&format!("{raw:?}"));
        assert_no_secret(&format!("{raw:#?}"));
        let settings = Settings::from_args(&raw).expect("valid");
        let shown = format!("{settings:?}");
        assert_no_secret(&shown);
        assert_no_secret(&format!("{settings:#?}"));
        // What is not secret is still there to debug with.
        for kept in ["db.internal", "5433", "orders", "app", "bus:4222"] {
            assert!(shown.contains(kept), "{kept} in {shown}");
        }
    }

    #[test]
    fn a_followers_debug_never_shows_its_upstream_credentials() {
        let mut raw = args(&[]);
        raw.database.database_url = None;
        raw.admin_token = None;
        raw.read_token = None;
        raw.replication_token = Some("REPLt0ken".into());
        raw.upstream = Some("https://UPSTREAMt0ken@central.internal:50051".into());
        assert_no_secret(&format!("{raw:?}"));
        if let Ok(settings) = Settings::from_args(&raw) {
            let shown = format!("{settings:?}");
            assert_no_secret(&shown);
            assert!(shown.contains("central.internal"), "{shown}");
        }
    }

    #[test]
    fn defaults_are_valid_and_use_the_private_database() {
        let mut raw = args(&[]);
        raw.database.database_url = None;
        raw.admin_token = None;
        raw.read_token = None;
        let settings = Settings::from_args(&raw).expect("defaults are valid");
        assert_eq!(settings.database.pool_size, 4);
        assert_eq!(settings.shutdown_timeout, Duration::from_secs(20));
        assert!(matches!(settings.database.source, DatabaseSource::Private));
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let mut raw = args(&[
            "--listen",
            "nowhere",
            "--environment",
            "Prod!",
            "--shutdown-timeout",
            "soon",
            "--db-wait",
            "x",
            "--db-pool-size",
            "0",
        ]);
        raw.database.database_url = Some("mysql:/wrong".into());
        raw.admin_token = Some(String::new());
        raw.read_token = None;
        let errors = Settings::from_args(&raw).expect_err("invalid");
        let settings: Vec<_> = errors.iter().map(|e| e.setting).collect();
        assert_eq!(
            settings,
            [
                "--listen (READYD_LISTEN)",
                "--database-url (DATABASE_URL)",
                "--db-pool-size (READYD_DB_POOL_SIZE)",
                "--db-wait (READYD_DB_WAIT)",
                "--environment (READYD_ENVIRONMENT)",
                "READYD_ADMIN_TOKEN",
                "--shutdown-timeout (READYD_SHUTDOWN_TIMEOUT)",
            ]
        );
    }

    #[test]
    fn drain_delay_defaults_to_none_and_refuses_nonsense() {
        let mut raw = args(&[]);
        raw.database.database_url = None;
        raw.admin_token = None;
        raw.read_token = None;
        let settings = Settings::from_args(&raw).expect("defaults are valid");
        assert_eq!(
            settings.drain_delay,
            Duration::ZERO,
            "a sidecar's callers are gone"
        );
        raw.drain_delay = "5s".into();
        let settings = Settings::from_args(&raw).expect("valid");
        assert_eq!(settings.drain_delay, Duration::from_secs(5));
        raw.drain_delay = "a moment".into();
        let errors = Settings::from_args(&raw).expect_err("invalid");
        let settings: Vec<_> = errors.iter().map(|e| e.setting).collect();
        assert_eq!(settings, ["--drain-delay (READYD_DRAIN_DELAY)"]);
    }

    #[test]
    fn stale_after_defaults_to_ten_seconds_and_refuses_nonsense() {
        let mut raw = args(&[]);
        raw.database.database_url = None;
        raw.admin_token = None;
        raw.read_token = None;
        let settings = Settings::from_args(&raw).expect("defaults are valid");
        assert_eq!(settings.stale_after, Duration::from_secs(10));
        raw.stale_after = "2m".into();
        let settings = Settings::from_args(&raw).expect("valid");
        assert_eq!(settings.stale_after, Duration::from_secs(120));
        raw.stale_after = "soon".into();
        let errors = Settings::from_args(&raw).expect_err("invalid");
        let settings: Vec<_> = errors.iter().map(|e| e.setting).collect();
        assert_eq!(settings, ["--stale-after (READYD_STALE_AFTER)"]);
    }

    #[test]
    fn database_waits_are_bounded_by_default_and_zero_lifts_the_bound() {
        let mut raw = args(&[]);
        raw.database.database_url = None;
        raw.admin_token = None;
        raw.read_token = None;
        let settings = Settings::from_args(&raw).expect("defaults are valid");
        assert_eq!(
            settings.database.timeouts,
            DbTimeouts {
                statement: Duration::from_secs(5),
                lock: Duration::from_secs(2),
            }
        );
        raw.database.db_statement_timeout = "0".into();
        raw.database.db_lock_timeout = "250ms".into();
        let settings = Settings::from_args(&raw).expect("valid");
        assert_eq!(settings.database.timeouts.statement, Duration::ZERO);
        assert_eq!(settings.database.timeouts.lock, Duration::from_millis(250));
        raw.database.db_statement_timeout = "forever".into();
        raw.database.db_lock_timeout = "30d".into();
        let errors = Settings::from_args(&raw).expect_err("invalid");
        let settings: Vec<_> = errors.iter().map(|e| e.setting).collect();
        assert_eq!(
            settings,
            [
                "--db-statement-timeout (READYD_DB_STATEMENT_TIMEOUT)",
                "--db-lock-timeout (READYD_DB_LOCK_TIMEOUT)",
            ]
        );
    }

    #[test]
    fn a_bad_database_url_is_never_echoed() {
        let mut raw = args(&[]);
        raw.database.database_url = Some("postgres://u:hunter2@[bad".into());
        let errors = Settings::from_args(&raw).expect_err("invalid");
        assert!(errors.iter().all(|e| !e.to_string().contains("hunter2")));
    }

    #[test]
    fn cors_origins_are_web_origins_or_any() {
        let raw = args(&[
            "--cors-origin",
            "https://app.example.com,http://localhost:3000",
        ]);
        let mut raw = raw;
        raw.database.database_url = Some("postgres://localhost/db".into());
        let settings = Settings::from_args(&raw).expect("valid origins");
        assert_eq!(
            settings.cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://files.example.com",
            "https://user@app.example.com",
        ] {
            let mut raw = args(&["--cors-origin", bad]);
            raw.database.database_url = Some("postgres://localhost/db".into());
            let errors = Settings::from_args(&raw).expect_err(bad);
            assert!(
                errors
                    .iter()
                    .any(|e| e.to_string().contains("--cors-origin (READYD_CORS_ORIGIN)")),
                "{bad}: {errors:?}"
            );
        }
        let mut any = args(&["--cors-origin", "*"]);
        any.database.database_url = Some("postgres://localhost/db".into());
        assert_eq!(Settings::from_args(&any).expect("any").cors_origins, ["*"]);
    }

    #[test]
    fn client_tokens_are_several_and_never_the_admin_or_read_token() {
        let mut raw = args(&["--client-token", "web-1,ios-1"]);
        raw.database.database_url = Some("postgres://localhost/db".into());
        raw.admin_token = Some("admin-1".into());
        let settings = Settings::from_args(&raw).expect("two client tokens");
        assert_eq!(settings.client_tokens.len(), 2);
        assert!(!format!("{raw:?}").contains("web-1"), "never printed");
        raw.client_token = vec!["web-1".into(), "admin-1".into()];
        let errors = Settings::from_args(&raw).expect_err("the admin token as a client token");
        assert!(
            errors.iter().any(|e| e.to_string().contains("must differ")),
            "{errors:?}"
        );
        raw.client_token = vec!["web-1".into(), "".into()];
        let errors = Settings::from_args(&raw).expect_err("an empty client token");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("READYD_CLIENT_TOKEN")),
            "{errors:?}"
        );
    }

    #[test]
    fn the_console_needs_the_http_surface_and_an_admin_token() {
        let mut raw = args(&["--console", "--http-listen", "127.0.0.1:0"]);
        raw.database.database_url = Some("postgres://localhost/db".into());
        let errors = Settings::from_args(&raw).expect_err("no admin token");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("READYD_ADMIN_TOKEN")),
            "{errors:?}"
        );
        raw.admin_token = Some("admin-1".into());
        assert!(Settings::from_args(&raw).expect("console").console);
        raw.http_listen = "off".into();
        let errors = Settings::from_args(&raw).expect_err("no HTTP surface");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("--http-listen")),
            "{errors:?}"
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        assert!(!format!("{:?}", Secret::new("s3cret")).contains("s3cret"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn listen_addresses_parse_or_are_reported(listen in "\\PC{0,24}|[0-9.:]{0,24}") {
            let mut raw = args(&[]);
            raw.listen = listen.clone();
            raw.database.database_url = None;
            raw.admin_token = None;
            raw.read_token = None;
            let valid = listen.trim().parse::<SocketAddr>().is_ok();
            match Settings::from_args(&raw) {
                Ok(settings) => prop_assert!(valid && settings.listen == listen.trim().parse::<SocketAddr>().unwrap()),
                Err(errors) => {
                    prop_assert!(!valid);
                    prop_assert_eq!(errors.len(), 1);
                    prop_assert_eq!(errors[0].setting, "--listen (READYD_LISTEN)");
                }
            }
        }
    }
}
