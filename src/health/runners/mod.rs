//! One runner per URL scheme: each proves its dependency healthy the way a
//! client of that dependency would find out, by connecting and doing the
//! cheapest real exchange of its protocol, rather than only opening a port.
//!
//! A runner is built once when readyd starts ([`Runner::new`]) and run on every
//! interval ([`Runner::run`]). The caller bounds every run with the check's
//! timeout and drops the run when it expires, so the drivers' own timeouts are
//! switched off where they have one, and every run cleans up after itself when
//! it is dropped halfway. Error messages are short and never carry a password.

mod amqp;
mod database;
mod file;
mod grpc;
mod http;
mod nats;
mod postgres;
mod redis;
mod tcp;
mod upstream;

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Once;

use url::Url;

use super::redact::Redactor;
use super::spec::Target;

/// Longest piece of peer-supplied text (a reply, a server's error message)
/// quoted in an error message.
const MAX_QUOTED_CHARS: usize = 200;

/// A check's runner, built once at start and run on every interval.
pub enum Runner {
    /// readyd's own database, through its pool.
    Database(database::DatabaseRunner),
    /// A PostgreSQL server: a fresh connection and `SELECT 1`.
    Postgres(Box<postgres::PostgresRunner>),
    /// A Redis server: PING answers PONG.
    Redis(self::redis::RedisRunner),
    /// An AMQP broker: a connection opens and closes cleanly.
    Amqp(amqp::AmqpRunner),
    /// A NATS server: connect and flush.
    Nats(nats::NatsRunner),
    /// An HTTP endpoint: GET answers 2xx.
    Http(http::HttpRunner),
    /// A gRPC server: grpc.health.v1 Check answers SERVING.
    Grpc(Box<grpc::GrpcRunner>),
    /// A TCP port: a connection is accepted.
    Tcp(tcp::TcpRunner),
    /// A directory: writable, with enough free space.
    File(file::FileRunner),
    /// A follower's upstream readyd.
    Upstream(upstream::UpstreamRunner),
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every runner's own Debug leaves passwords out.
        match self {
            Self::Database(runner) => runner.fmt(f),
            Self::Postgres(runner) => runner.fmt(f),
            Self::Redis(runner) => runner.fmt(f),
            Self::Amqp(runner) => runner.fmt(f),
            Self::Nats(runner) => runner.fmt(f),
            Self::Http(runner) => runner.fmt(f),
            Self::Grpc(runner) => runner.fmt(f),
            Self::Tcp(runner) => runner.fmt(f),
            Self::File(runner) => runner.fmt(f),
            Self::Upstream(runner) => runner.fmt(f),
        }
    }
}

impl Runner {
    /// Builds the runner for `target`. `pool` is readyd's own database pool
    /// (used by [`Target::Database`]); `upstream` a follower's connection to
    /// its upstream (used by [`Target::Upstream`]).
    ///
    /// Err(message) for a target that cannot be built (message without
    /// secrets).
    pub fn new(
        target: &Target,
        pool: Option<&sqlx::PgPool>,
        upstream: Option<&crate::client::channel::RetryingChannel>,
    ) -> Result<Runner, String> {
        if matches!(
            target,
            Target::Redis(_) | Target::Amqp(_) | Target::Nats(_) | Target::Http(_)
        ) {
            // Their TLS (rediss://, amqps://, tls://, https://) may take rustls's
            // process-wide provider; the HTTP client always does.
            install_crypto_provider();
        }
        let runner = match target {
            Target::Database => Self::Database(database::DatabaseRunner::new(
                pool.ok_or("this readyd has no database to check")?,
            )),
            Target::Upstream => Self::Upstream(upstream::UpstreamRunner::new(
                upstream.ok_or("this readyd follows no upstream")?.clone(),
            )),
            Target::Postgres(url) => Self::Postgres(Box::new(
                postgres::PostgresRunner::new(url).map_err(scrub_for(url))?,
            )),
            Target::Redis(url) => {
                Self::Redis(self::redis::RedisRunner::new(url).map_err(scrub_for(url))?)
            }
            Target::Amqp(url) => Self::Amqp(amqp::AmqpRunner::new(url).map_err(scrub_for(url))?),
            Target::Nats(url) => Self::Nats(nats::NatsRunner::new(url).map_err(scrub_for(url))?),
            Target::Http(url) => Self::Http(http::HttpRunner::new(url).map_err(scrub_for(url))?),
            Target::Grpc { endpoint, service } => {
                Self::Grpc(Box::new(grpc::GrpcRunner::new(endpoint, service)?))
            }
            Target::Tcp { host, port } => Self::Tcp(tcp::TcpRunner::new(host, *port)),
            Target::File { path, min_free } => {
                Self::File(file::FileRunner::new(path.clone(), *min_free))
            }
        };
        Ok(runner)
    }

    /// One attempt. Ok(()) if the dependency is healthy, Err(message)
    /// describing why not.
    ///
    /// Cancel-safe: the caller may drop it at any point (its timeout), and
    /// nothing is left behind.
    pub async fn run(&self) -> Result<(), String> {
        let result = match self {
            Self::Database(runner) => runner.run().await,
            Self::Postgres(runner) => runner.run().await,
            Self::Redis(runner) => runner.run().await,
            Self::Amqp(runner) => runner.run().await,
            Self::Nats(runner) => runner.run().await,
            Self::Http(runner) => runner.run().await,
            Self::Grpc(runner) => runner.run().await,
            Self::Tcp(runner) => runner.run().await,
            Self::File(runner) => runner.run().await,
            Self::Upstream(runner) => runner.run().await,
        };
        // The caller scrubs as well; doing it here keeps a secret that a
        // driver echoed out of the message whoever the caller is.
        result.map_err(|message| match self.redactor() {
            Some(redactor) => redactor.scrub(&message),
            None => message,
        })
    }

    /// The secrets of this runner's URL, if it has one.
    fn redactor(&self) -> Option<&Redactor> {
        match self {
            Self::Postgres(runner) => Some(runner.redactor()),
            Self::Redis(runner) => Some(runner.redactor()),
            Self::Amqp(runner) => Some(runner.redactor()),
            Self::Nats(runner) => Some(runner.redactor()),
            Self::Http(runner) => Some(runner.redactor()),
            Self::Database(_)
            | Self::Grpc(_)
            | Self::Tcp(_)
            | Self::File(_)
            | Self::Upstream(_) => None,
        }
    }
}

/// Installs ring as the process-wide rustls crypto provider, which the HTTP
/// client needs (its TLS has no provider of its own) and other TLS clients
/// may take. Idempotent; a provider installed earlier by anyone stays.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only when a provider is already installed: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The redactor for the secrets of `url` (none if it is not a URL).
fn redactor_for(url: &str) -> Redactor {
    Url::parse(url)
        .map(|url| Redactor::for_url(&url))
        .unwrap_or_default()
}

/// Scrubs the secrets of `url` from a build error.
fn scrub_for(url: &str) -> impl FnOnce(String) -> String + '_ {
    move |message| redactor_for(url).scrub(&message)
}

/// A short, human description of an I/O error.
fn describe_io(err: &io::Error) -> String {
    let known = match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset by peer",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::UnexpectedEof => "connection closed by peer",
        io::ErrorKind::BrokenPipe => "connection closed by peer (broken pipe)",
        io::ErrorKind::TimedOut => "connection timed out",
        io::ErrorKind::HostUnreachable => "host unreachable",
        io::ErrorKind::NetworkUnreachable => "network unreachable",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::PermissionDenied => "permission denied",
        io::ErrorKind::ReadOnlyFilesystem => "read-only file system",
        io::ErrorKind::StorageFull => "no space left on device",
        io::ErrorKind::QuotaExceeded => "disk quota exceeded",
        _ => return strip_os_error(&err.to_string()),
    };
    known.to_owned()
}

/// `message` without a trailing " (os error N)".
fn strip_os_error(message: &str) -> String {
    match message.rfind(" (os error ") {
        Some(at) if message.ends_with(')') => message[..at].to_owned(),
        _ => message.to_owned(),
    }
}

/// A short description of a driver's error: the well-known network failures
/// by name, anything else as its chain of causes.
fn describe_error(err: &(dyn StdError + 'static)) -> String {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(io_err) = current.downcast_ref::<io::Error>() {
            // An io::Error may itself only wrap a driver's error.
            let wraps_error = io_err.get_ref().is_some() && io_err.kind() == io::ErrorKind::Other;
            if !wraps_error {
                return describe_io(io_err);
            }
        }
        cause = current.source();
    }
    chain(err)
}

/// Every distinct message along `err`'s chain of causes, joined by ": ".
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = String::new();
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(current) = cause {
        let message = current.to_string();
        // Many errors already include their source in their own message.
        if !message.is_empty() && !out.contains(&message) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&message);
        }
        cause = current.source();
    }
    if out.is_empty() {
        "unknown error".to_owned()
    } else {
        out
    }
}

/// Peer-supplied text made safe to quote: control characters replaced, at
/// most [`MAX_QUOTED_CHARS`] characters.
fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTED_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners_can_be_shared_and_runs_spawned() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let runner = Runner::Tcp(tcp::TcpRunner::new("127.0.0.1", 1));
        assert_send_sync(&runner);
        assert_send(&runner.run());
    }

    #[test]
    fn io_errors_read_as_people_say_them() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&refused), "connection refused");
        let other = io::Error::from_raw_os_error(2);
        assert_eq!(describe_io(&other), "No such file or directory");
    }

    #[test]
    fn chains_skip_repeated_messages() {
        #[derive(Debug)]
        struct Outer(io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "outer: {}", self.0)
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(io::Error::other("inner"));
        assert_eq!(chain(&err), "outer: inner");
        let refused = Outer(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(describe_error(&refused), "connection refused");
    }

    #[test]
    fn quoted_text_is_bounded_and_printable() {
        assert_eq!(quote("a\nb"), "a b");
        let long = "x".repeat(MAX_QUOTED_CHARS + 10);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
