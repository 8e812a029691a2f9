//! A NATS server: connect (INFO, CONNECT with the URL's credentials, PING and
//! PONG), flush (one more round trip through the client's connection), then
//! drain, which closes the connection. That is the whole life of a client
//! that publishes; no subject is touched. Credentials in the URL are used the
//! NATS way: `user:password@` for user and password, `token@` for a token.

use std::fmt;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use url::Url;

use super::{describe_error, redactor_for};
use crate::health::redact::{Redactor, redact_url};

/// Long enough never to fire: the check's timeout bounds the run.
const NO_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// How the runner authenticates.
#[derive(Clone)]
enum Credentials {
    /// Nothing in the URL.
    None,
    /// `nats://token@host`.
    Token(String),
    /// `nats://user:password@host`.
    UserPassword(String, String),
}

/// Connects, flushes and drains.
pub struct NatsRunner {
    /// The server, without credentials.
    server: ServerAddr,
    /// The URL's credentials, decoded.
    credentials: Credentials,
    /// The URL without its password, for Debug.
    display: String,
    /// The URL's secrets.
    redactor: Redactor,
}

impl fmt::Debug for NatsRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NatsRunner({})", self.display)
    }
}

impl NatsRunner {
    /// A runner for the `nats://` or `tls://` URL `url`.
    pub fn new(url: &str) -> Result<Self, String> {
        let mut parsed = Url::parse(url).map_err(|err| format!("not a usable NATS URL: {err}"))?;
        let decode = |raw: &str| {
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| "the NATS URL's credentials are not UTF-8".to_owned())
        };
        let credentials = match (parsed.username(), parsed.password()) {
            ("", None) => Credentials::None,
            (token, None) => Credentials::Token(decode(token)?),
            (user, Some(password)) => Credentials::UserPassword(decode(user)?, decode(password)?),
        };
        // The client does not read credentials from the URL; they go in the
        // options instead, and the address keeps none.
        parsed
            .set_username("")
            .and_then(|()| parsed.set_password(None))
            .map_err(|()| "the NATS URL cannot hold credentials".to_owned())?;
        let server = parsed
            .as_str()
            .parse::<ServerAddr>()
            .map_err(|err| format!("not a usable NATS URL: {err}"))?;
        Ok(Self {
            server,
            credentials,
            display: redact_url(url),
            redactor: redactor_for(url),
        })
    }

    /// The URL's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// One connection, flush, drain. Dropped while connecting, the socket is
    /// dropped with the future; dropped later, the client's background task
    /// ends when the client handle is dropped.
    pub async fn run(&self) -> Result<(), String> {
        let options = match &self.credentials {
            Credentials::None => ConnectOptions::new(),
            Credentials::Token(token) => ConnectOptions::with_token(token.clone()),
            Credentials::UserPassword(user, password) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        }
        .name("readyd")
        .connection_timeout(NO_TIMEOUT)
        // Only the server named is checked, not the cluster's others.
        .ignore_discovered_servers();
        let client = options
            .connect(self.server.clone())
            .await
            .map_err(|err| describe_error(&err))?;
        client.flush().await.map_err(|err| describe_error(&err))?;
        client.drain().await.map_err(|err| describe_error(&err))
    }
}
