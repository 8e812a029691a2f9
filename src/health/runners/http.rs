//! An HTTP endpoint: GET must answer 2xx, the contract of every health
//! endpoint and load balancer probe. Redirects are followed (at most 10) and
//! the final status counts; the body is not read. One client per runner, but
//! no idle connection is kept: every run opens its own, as a new client would,
//! and leaves nothing open.

use std::fmt;

use reqwest::Url;

use super::{describe_error, redactor_for};
use crate::health::redact::{Redactor, redact_url};

/// Sends one GET per run.
pub struct HttpRunner {
    /// Built once; keeps no idle connections.
    client: reqwest::Client,
    /// The URL; credentials in it are sent as basic authentication.
    url: Url,
    /// The URL without its password, for Debug.
    display: String,
    /// The URL's secrets.
    redactor: Redactor,
}

impl fmt::Debug for HttpRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpRunner({})", self.display)
    }
}

impl HttpRunner {
    /// A runner for the `http://` or `https://` URL `url`. The rustls crypto
    /// provider must be installed first (see `install_crypto_provider`).
    pub fn new(url: &str) -> Result<Self, String> {
        let parsed = Url::parse(url).map_err(|err| format!("not a usable HTTP URL: {err}"))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("readyd/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|err| {
                format!(
                    "cannot build the HTTP client: {}",
                    describe_error(&err.without_url())
                )
            })?;
        Ok(Self {
            client,
            url: parsed,
            display: redact_url(url),
            redactor: redactor_for(url),
        })
    }

    /// The URL's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// One GET. Dropped midway, the request and its connection are dropped.
    pub async fn run(&self) -> Result<(), String> {
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            // Without the URL: reqwest's messages would quote it.
            .map_err(|err| describe_error(&err.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}
