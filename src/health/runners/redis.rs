//! A Redis server: a new connection (with the URL's password and database
//! selected, as any client would) and PING, which must answer PONG. PING is
//! the one command every Redis-compatible server answers without touching
//! data; a fresh connection per run proves authentication still works.

use std::fmt;

use redis::{AsyncConnectionConfig, Value};

use super::{describe_error, quote, redactor_for};
use crate::health::redact::{Redactor, redact_url};

/// Connects and sends PING.
pub struct RedisRunner {
    /// Holds the parsed connection info; connects nothing by itself.
    client: redis::Client,
    /// The URL without its password, for Debug.
    display: String,
    /// The URL's secrets.
    redactor: Redactor,
}

impl fmt::Debug for RedisRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisRunner({})", self.display)
    }
}

impl RedisRunner {
    /// A runner for the `redis://` or `rediss://` URL `url`.
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|err| format!("not a usable Redis URL: {}", describe_error(&err)))?;
        Ok(Self {
            client,
            display: redact_url(url),
            redactor: redactor_for(url),
        })
    }

    /// The URL's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// One connection and PING. The connection (and its driver task) ends
    /// when the last handle is dropped, here or on cancellation.
    pub async fn run(&self) -> Result<(), String> {
        // The check's timeout bounds the run; the driver's own defaults
        // (1 s to connect, 500 ms per reply) would cut it shorter.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| describe_redis(&err))?;
        let reply: Value = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|err| describe_redis(&err))?;
        match &reply {
            Value::SimpleString(text) if text == "PONG" => Ok(()),
            Value::BulkString(bytes) if bytes == b"PONG" => Ok(()),
            Value::SimpleString(text) => Err(format!("PING answered {:?}", quote(text))),
            Value::BulkString(bytes) => Err(format!(
                "PING answered {:?}",
                quote(&String::from_utf8_lossy(bytes))
            )),
            other => Err(format!("PING answered {}", quote(&format!("{other:?}")))),
        }
    }
}

/// A short description of a Redis error.
fn describe_redis(err: &redis::RedisError) -> String {
    if err.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    describe_error(err)
}
