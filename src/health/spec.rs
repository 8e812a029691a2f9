//! Dependency checks declared by URL: `NAME=URL` pairs from `--check` and
//! READYD_CHECKS, turned into validated [`CheckSpec`]s. Pure: no I/O.
//!
//! The URL's scheme picks the runner; the query parameters `critical`,
//! `interval`, `timeout`, `failures` and (for files) `min_free` are readyd's
//! and are removed before the URL reaches the driver. Every other part of the
//! URL, including other query parameters (e.g. `sslmode`), goes to the driver
//! unchanged.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::redact::{Redactor, redact_url};

/// The name readyd's own database check always has.
pub const DATABASE_CHECK: &str = "database";
/// The name of a follower's own check of its upstream.
pub const UPSTREAM_CHECK: &str = "upstream";

/// Longest check name (its probe name is `dep.<name>`).
pub const MAX_CHECK_NAME_LEN: usize = 64;

/// Default time between two runs of a check.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default time one run may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures before a check counts as failed.
pub const DEFAULT_FAILURES: u32 = 3;
/// Shortest interval accepted: a check must not become a load test.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest timeout accepted.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Most consecutive failures accepted as a threshold.
pub const MAX_FAILURES: u32 = 1000;

/// What a check connects to; one variant per runner. URLs here may hold
/// passwords: the `Debug` form never shows them.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// readyd's own database, through its pool.
    Database,
    /// A follower's upstream readyd: grpc.health.v1 Check of the server,
    /// over the follower's own connection.
    Upstream,
    /// `postgres://` or `postgresql://`: connect and `SELECT 1`.
    Postgres(String),
    /// `redis://` or `rediss://`: PING.
    Redis(String),
    /// `amqp://` or `amqps://`: open and close a connection.
    Amqp(String),
    /// `nats://` (or `tls://`): connect and flush.
    Nats(String),
    /// `http://` or `https://`: GET answers 2xx.
    Http(String),
    /// `grpc://host:port/service`: grpc.health.v1 Check is SERVING.
    Grpc {
        /// `http://host:port`, for the gRPC channel.
        endpoint: String,
        /// The service name asked about ("" for the server as a whole).
        service: String,
    },
    /// `tcp://host:port`: a connection is accepted.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// `file:///path`: the directory is writable and has free space.
    File {
        /// The directory.
        path: PathBuf,
        /// Free bytes required (0: only writability).
        min_free: u64,
    },
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Database => f.write_str("Database"),
            Self::Upstream => f.write_str("Upstream"),
            Self::Postgres(url) => write!(f, "Postgres({})", redact_url(url)),
            Self::Redis(url) => write!(f, "Redis({})", redact_url(url)),
            Self::Amqp(url) => write!(f, "Amqp({})", redact_url(url)),
            Self::Nats(url) => write!(f, "Nats({})", redact_url(url)),
            Self::Http(url) => write!(f, "Http({})", redact_url(url)),
            Self::Grpc { endpoint, service } => write!(f, "Grpc({endpoint}, {service:?})"),
            Self::Tcp { host, port } => write!(f, "Tcp({host}:{port})"),
            Self::File { path, min_free } => write!(f, "File({}, {min_free})", path.display()),
        }
    }
}

/// One validated dependency check.
#[derive(Clone, Debug)]
pub struct CheckSpec {
    /// Unique name; the probe name is `dep.<name>`.
    pub name: String,
    /// What to check.
    pub target: Target,
    /// The URL as shown to people: password and secret parameters removed.
    pub display: String,
    /// Removes this check's secrets from error messages.
    pub redactor: Redactor,
    /// Whether its failure makes readyd UNHEALTHY and not ready.
    pub critical: bool,
    /// Time between the end of one run and the start of the next.
    pub interval: Duration,
    /// Time one run may take; longer counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures before the check counts as failed.
    pub failures: u32,
}

impl CheckSpec {
    /// How old a result may be before it counts as failing:
    /// 3 × interval + timeout.
    pub fn stale_after(&self) -> Duration {
        self.interval.saturating_mul(3).saturating_add(self.timeout)
    }
}

/// A check that could not be declared. The message names the check and
/// never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CheckSpecError(pub String);

/// Whether `name` may name a check: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
pub fn is_valid_check_name(name: &str) -> bool {
    match name.as_bytes().split_first() {
        Some((&first, rest)) => {
            name.len() <= MAX_CHECK_NAME_LEN
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.iter().all(|&b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                })
        }
        None => false,
    }
}

/// Splits the raw `--check` values into `NAME=URL` entries: each value may
/// itself hold several entries separated by commas or newlines (the form of
/// READYD_CHECKS). Blank entries are skipped.
pub fn split_entries<'a>(raw: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    raw.into_iter()
        .flat_map(|value| value.split([',', '\n']))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect()
}

/// Parses every `NAME=URL` entry, collecting every problem. Names must be
/// unique and must not be `database` (readyd's own check).
pub fn parse_checks<'a>(
    raw: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<CheckSpec>, Vec<CheckSpecError>> {
    let mut specs: Vec<CheckSpec> = Vec::new();
    let mut errors = Vec::new();
    for entry in split_entries(raw) {
        match parse_entry(entry) {
            Ok(spec) if specs.iter().any(|other| other.name == spec.name) => errors.push(
                CheckSpecError(format!("check {:?}: declared more than once", spec.name)),
            ),
            Ok(spec) => specs.push(spec),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// Parses one `NAME=URL` entry.
pub fn parse_entry(entry: &str) -> Result<CheckSpec, CheckSpecError> {
    let Some((name, url)) = entry.split_once('=') else {
        return Err(CheckSpecError(format!(
            "{:?} is not NAME=URL, e.g. redis=redis://127.0.0.1:6379",
            redact_url(entry)
        )));
    };
    let name = name.trim();
    let url = url.trim();
    if !is_valid_check_name(name) {
        return Err(CheckSpecError(format!(
            "check {name:?}: not a valid check name; expected lower case letters, digits, \
             '_', '.' and '-', starting with a letter or digit, at most {MAX_CHECK_NAME_LEN} characters"
        )));
    }
    if name == DATABASE_CHECK || name == UPSTREAM_CHECK {
        return Err(CheckSpecError(format!(
            "check {name:?}: the name is readyd's own check of its database or upstream; choose \
             another name (tune it with --database-check)"
        )));
    }
    parse_url(name, url)
}

/// readyd's query parameters of a check URL, before validation.
#[derive(Default)]
struct RawParams {
    critical: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    failures: Option<String>,
    min_free: Option<String>,
}

/// Parses a check's URL into its spec.
fn parse_url(name: &str, raw: &str) -> Result<CheckSpec, CheckSpecError> {
    let fail = |message: String| CheckSpecError(format!("check {name:?}: {message}"));
    let mut url = Url::parse(raw).map_err(|err| {
        fail(format!(
            "{:?} is not a URL ({err}); expected e.g. redis://127.0.0.1:6379",
            redact_url(raw)
        ))
    })?;
    let (params, rest) = take_params(&url);
    // Only readyd's parameters are removed; the driver gets the others.
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    let is_file = url.scheme() == "file";
    if !is_file && params.min_free.is_some() {
        return Err(fail("min_free applies only to file:// checks".to_owned()));
    }
    let (critical, interval, timeout, failures) = common_params(&params).map_err(&fail)?;
    let target = target_of(&url, params.min_free.as_deref()).map_err(&fail)?;
    let display = redact_url(url.as_str());
    Ok(CheckSpec {
        name: name.to_owned(),
        redactor: Redactor::for_url(&url),
        target,
        display,
        critical,
        interval,
        timeout,
        failures,
    })
}

/// `critical`, `interval`, `timeout` and `failures`, validated, with their
/// defaults.
fn common_params(params: &RawParams) -> Result<(bool, Duration, Duration, u32), String> {
    let critical = match params.critical.as_deref() {
        None => true,
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(other) => return Err(format!("critical={other:?}; expected true or false")),
    };
    let interval = parse_param_duration("interval", params.interval.as_deref(), DEFAULT_INTERVAL)?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "interval {} is too short; at least {}",
            humantime::format_duration(interval),
            humantime::format_duration(MIN_INTERVAL)
        ));
    }
    let timeout = parse_param_duration("timeout", params.timeout.as_deref(), DEFAULT_TIMEOUT)?;
    if timeout < MIN_TIMEOUT {
        return Err(format!(
            "timeout {} is too short; at least {}",
            humantime::format_duration(timeout),
            humantime::format_duration(MIN_TIMEOUT)
        ));
    }
    let failures = match params.failures.as_deref() {
        None => DEFAULT_FAILURES,
        Some(raw) => match raw.parse::<u32>() {
            Ok(n) if (1..=MAX_FAILURES).contains(&n) => n,
            _ => {
                return Err(format!(
                    "failures={raw:?}; expected a whole number from 1 to {MAX_FAILURES}"
                ));
            }
        },
    };
    Ok((critical, interval, timeout, failures))
}

/// readyd's parameters, and every other query pair in order.
fn take_params(url: &Url) -> (RawParams, Vec<(String, String)>) {
    let mut params = RawParams::default();
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
            "critical" => &mut params.critical,
            "interval" => &mut params.interval,
            "timeout" => &mut params.timeout,
            "failures" => &mut params.failures,
            "min_free" => &mut params.min_free,
            _ => {
                rest.push((key.into_owned(), value.into_owned()));
                continue;
            }
        };
        *slot = Some(value.into_owned());
    }
    (params, rest)
}

fn parse_param_duration(
    param: &str,
    raw: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    match raw {
        None => Ok(default),
        Some(raw) => humantime::parse_duration(raw.trim()).map_err(|err| {
            format!("{param}={raw:?} is not a duration ({err}); expected e.g. 500ms, 10s")
        }),
    }
}

/// Picks the runner's target from the (parameter-free) URL.
fn target_of(url: &Url, min_free: Option<&str>) -> Result<Target, String> {
    let host = || {
        url.host_str()
            .filter(|host| !host.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no host", redact_url(url.as_str())))
    };
    match url.scheme() {
        "postgres" | "postgresql" => {
            // A Unix socket is named by a `host` parameter instead.
            if !url.query_pairs().any(|(key, _)| key == "host") {
                host()?;
            }
            Ok(Target::Postgres(url.to_string()))
        }
        "redis" | "rediss" => {
            host()?;
            Ok(Target::Redis(url.to_string()))
        }
        "amqp" | "amqps" => {
            host()?;
            Ok(Target::Amqp(url.to_string()))
        }
        "nats" | "tls" => {
            host()?;
            Ok(Target::Nats(url.to_string()))
        }
        "http" | "https" => {
            host()?;
            Ok(Target::Http(url.to_string()))
        }
        "grpc" => {
            let host = host()?;
            let port = url
                .port()
                .ok_or_else(|| "grpc:// needs a port, e.g. grpc://127.0.0.1:50051/".to_owned())?;
            let service = url.path().trim_start_matches('/').to_owned();
            let host = if host.contains(':') {
                format!("[{}]", host.trim_matches(['[', ']']))
            } else {
                host
            };
            Ok(Target::Grpc {
                endpoint: format!("http://{host}:{port}"),
                service,
            })
        }
        "tcp" => {
            let host = host()?;
            let port = url
                .port()
                .ok_or_else(|| "tcp:// needs a port, e.g. tcp://127.0.0.1:5432".to_owned())?;
            Ok(Target::Tcp {
                host: host.trim_matches(['[', ']']).to_owned(),
                port,
            })
        }
        "file" => {
            if url.host_str().is_some_and(|host| !host.is_empty()) {
                return Err(
                    "file:// takes an absolute path and no host, e.g. file:///var/lib/app"
                        .to_owned(),
                );
            }
            let path = url.to_file_path().map_err(|()| {
                "file:// needs an absolute path, e.g. file:///var/lib/app".to_owned()
            })?;
            let min_free = match min_free {
                None => 0,
                Some(raw) => raw
                    .trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|size| size.as_u64())
                    .map_err(|err| {
                        format!("min_free={raw:?} is not a size ({err}); expected e.g. 100MB, 1GiB")
                    })?,
            };
            Ok(Target::File { path, min_free })
        }
        other => Err(format!(
            "scheme {other:?} is not supported; expected postgres, redis, amqp, nats, http, https, grpc, tcp or file"
        )),
    }
}

/// The spec of readyd's own database check, tuned by `params`: the query
/// parameters of a check URL without the URL, e.g.
/// `interval=5s&timeout=1s&failures=2` (`critical` is accepted too).
/// `display` is how the database is shown (its URL without password).
pub fn database_check(params: &str, display: &str) -> Result<CheckSpec, CheckSpecError> {
    source_check(DATABASE_CHECK, Target::Database, params, display)
}

/// The spec of a follower's own check of its upstream, tuned by the same
/// `--database-check` parameters as a database check.
pub fn upstream_check(params: &str, display: &str) -> Result<CheckSpec, CheckSpecError> {
    source_check(UPSTREAM_CHECK, Target::Upstream, params, display)
}

/// readyd's check of where its data comes from: critical until the first
/// snapshot has loaded, then not (see the health monitor).
fn source_check(
    name: &str,
    target: Target,
    params: &str,
    display: &str,
) -> Result<CheckSpec, CheckSpecError> {
    let fail =
        |message: String| CheckSpecError(format!("check {name:?} (--database-check): {message}"));
    let params = params.trim().trim_start_matches('?');
    let url = Url::parse(&format!("readyd:database?{params}"))
        .map_err(|err| fail(format!("{params:?} is not a query string ({err})")))?;
    let (raw, rest) = take_params(&url);
    if let Some((unknown, _)) = rest.first() {
        return Err(fail(format!(
            "unknown parameter {unknown:?}; expected interval, timeout, failures or critical"
        )));
    }
    if raw.min_free.is_some() {
        return Err(fail("min_free applies only to file:// checks".to_owned()));
    }
    let (critical, interval, timeout, failures) = common_params(&raw).map_err(fail)?;
    Ok(CheckSpec {
        name: name.to_owned(),
        target,
        display: display.to_owned(),
        redactor: Redactor::default(),
        critical,
        interval,
        timeout,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(entry: &str) -> CheckSpec {
        match parse_entry(entry) {
            Ok(spec) => spec,
            Err(err) => panic!("{entry}: {err}"),
        }
    }

    fn error(entry: &str) -> String {
        match parse_entry(entry) {
            Ok(spec) => panic!("{entry} was accepted: {spec:?}"),
            Err(err) => err.0,
        }
    }

    #[test]
    fn every_scheme_picks_its_runner() {
        let cases = [
            ("pg=postgres://u:p@db:5432/app?sslmode=disable", "Postgres"),
            ("cache=redis://127.0.0.1:6379/0", "Redis"),
            ("mq=amqp://guest:guest@127.0.0.1:5672/%2f", "Amqp"),
            ("bus=nats://127.0.0.1:4222", "Nats"),
            ("web=https://example.org/healthz", "Http"),
            ("api=grpc://127.0.0.1:50051/readiness", "Grpc"),
            ("port=tcp://127.0.0.1:5432", "Tcp"),
            ("disk=file:///var/lib/app?min_free=100MB", "File"),
        ];
        for (entry, runner) in cases {
            let spec = parse(entry);
            assert!(format!("{:?}", spec.target).starts_with(runner), "{entry}");
        }
    }

    #[test]
    fn readyd_parameters_are_taken_and_the_others_passed_on() {
        let spec = parse(
            "pg=postgres://u:secretpw@db/app?sslmode=require&critical=false&interval=5s&timeout=1s&failures=2",
        );
        assert!(!spec.critical);
        assert_eq!(spec.interval, Duration::from_secs(5));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!(spec.failures, 2);
        assert_eq!(
            spec.target,
            Target::Postgres("postgres://u:secretpw@db/app?sslmode=require".into())
        );
        assert_eq!(spec.display, "postgres://u:***@db/app?sslmode=require");
        assert_eq!(spec.stale_after(), Duration::from_secs(16));
        assert!(!format!("{spec:?}").contains("secretpw"));
    }

    #[test]
    fn defaults_apply() {
        let spec = parse("port=tcp://127.0.0.1:5432");
        assert!(spec.critical);
        assert_eq!(spec.interval, DEFAULT_INTERVAL);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert_eq!(spec.failures, DEFAULT_FAILURES);
    }

    #[test]
    fn grpc_and_file_targets_are_taken_apart() {
        assert_eq!(
            parse("api=grpc://[::1]:50051/").target,
            Target::Grpc {
                endpoint: "http://[::1]:50051".into(),
                service: String::new()
            }
        );
        assert_eq!(
            parse("disk=file:///tmp?min_free=1KiB").target,
            Target::File {
                path: PathBuf::from("/tmp"),
                min_free: 1024
            }
        );
    }

    #[test]
    fn bad_entries_name_the_check_and_never_the_password() {
        let cases = [
            ("cache", "not NAME=URL"),
            ("Cache=redis://h:1", "not a valid check name"),
            ("database=redis://h:1", "readyd's own check of its database"),
            (
                "upstream=redis://h:1",
                "readyd's own check of its database or upstream",
            ),
            ("x=ftp://h", "scheme \"ftp\" is not supported"),
            ("x=redis://u:hunter2@h:1?interval=soon", "interval=\"soon\""),
            ("x=redis://u:hunter2@h:1?interval=1ms", "too short"),
            ("x=redis://u:hunter2@h:1?timeout=0s", "too short"),
            ("x=redis://u:hunter2@h:1?failures=0", "failures=\"0\""),
            (
                "x=redis://u:hunter2@h:1?critical=maybe",
                "critical=\"maybe\"",
            ),
            ("x=redis://u:hunter2@h:1?min_free=1GB", "only to file://"),
            ("x=tcp://h", "needs a port"),
            ("x=grpc://h/svc", "needs a port"),
            ("x=file://host/tmp", "no host"),
            ("x=file:///tmp?min_free=lots", "min_free=\"lots\""),
            ("x=not a url hunter2", "not a URL"),
        ];
        for (entry, expected) in cases {
            let message = error(entry);
            assert!(message.contains(expected), "{entry}: {message}");
            assert!(!message.contains("hunter2"), "{entry}: {message}");
            if entry.contains('=') && !entry.starts_with("Cache") {
                let name = entry.split('=').next().unwrap_or_default();
                assert!(message.contains(&format!("{name:?}")), "{entry}: {message}");
            }
        }
    }

    #[test]
    fn every_problem_is_collected() {
        let errors = parse_checks(["a=tcp://h:1,a=tcp://h:2\nb=ftp://h", "c=tcp://h"])
            .expect_err("three problems");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].0.contains("more than once"));
        assert!(errors[1].0.contains("\"b\""));
        assert!(errors[2].0.contains("\"c\""));
        let specs = parse_checks(["a=tcp://h:1, b=tcp://h:2\n\n", "c=tcp://h:3"]).expect("valid");
        let names: Vec<_> = specs.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn the_database_check_takes_only_its_parameters() {
        let spec = database_check("interval=1s&failures=1", "db").expect("valid");
        assert_eq!(spec.name, DATABASE_CHECK);
        assert_eq!(spec.target, Target::Database);
        assert_eq!(spec.interval, Duration::from_secs(1));
        assert_eq!(spec.failures, 1);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert!(database_check("sslmode=require", "db").is_err());
        assert!(database_check("min_free=1GB", "db").is_err());
        assert!(database_check("", "db").is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        // Any valid name, interval, timeout and failure count is taken as
        // given.
        #[test]
        fn valid_parameters_round_trip(
            name in "[a-z0-9][a-z0-9_.-]{0,63}",
            interval_ms in 100u64..100_000,
            timeout_ms in 10u64..100_000,
            failures in 1u32..=1000,
            critical in any::<bool>(),
            port in 1u16..,
        ) {
            let entry = format!(
                "{name}=tcp://127.0.0.1:{port}?interval={interval_ms}ms&timeout={timeout_ms}ms&failures={failures}&critical={critical}"
            );
            let spec = parse_entry(&entry).map_err(|err| TestCaseError::fail(err.0))?;
            prop_assert_eq!(spec.name, name);
            prop_assert_eq!(spec.interval, Duration::from_millis(interval_ms));
            prop_assert_eq!(spec.timeout, Duration::from_millis(timeout_ms));
            prop_assert_eq!(spec.failures, failures);
            prop_assert_eq!(spec.critical, critical);
            prop_assert_eq!(spec.target, Target::Tcp { host: "127.0.0.1".into(), port });
        }

        // Whatever is typed, parsing never panics, and an error never shows
        // the password.
        #[test]
        fn any_entry_is_accepted_or_refused_without_leaking(
            name in "[a-zA-Z0-9_.-]{0,10}",
            scheme in "[a-z]{0,8}",
            rest in "[ -~]{0,40}",
        ) {
            let entry = format!("{name}={scheme}://user:Pw9SECRET@{rest}");
            if let Err(err) = parse_entry(&entry) {
                prop_assert!(!err.0.contains("Pw9SECRET"), "{}", err.0);
            }
        }
    }
}
