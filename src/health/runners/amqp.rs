//! An AMQP 0-9-1 broker (RabbitMQ): open a connection (protocol header, SASL
//! login with the URL's credentials, tuning, the virtual host opened), then
//! close it cleanly with Connection.Close, so the broker logs no abrupt
//! disconnect. That is the whole handshake a publisher or consumer needs
//! before its first channel; no channel, queue or exchange is touched.
//!
//! lapin drives every connection from an I/O thread of its own, which would
//! wait forever for a broker that accepted the TCP connection and then never
//! answered, even after the run was dropped on timeout. So the runner makes
//! the TCP connection itself (through lapin's connector hook), keeps a
//! duplicate of its socket, and shuts the socket down when a run ends without
//! a clean close: the I/O thread sees the connection end and exits.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::tcp::TLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{AsyncTcpStream, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{describe_error, describe_io, redactor_for};
use crate::health::redact::{Redactor, redact_url};

/// Opens and closes one AMQP connection per run.
pub struct AmqpRunner {
    /// The parsed URL (credentials included).
    uri: AMQPUri,
    /// The URL without its password, for Debug.
    display: String,
    /// The URL's secrets.
    redactor: Redactor,
}

impl fmt::Debug for AmqpRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpRunner({})", self.display)
    }
}

impl AmqpRunner {
    /// A runner for the `amqp://` or `amqps://` URL `url`.
    pub fn new(url: &str) -> Result<Self, String> {
        let mut uri = url
            .parse::<AMQPUri>()
            .map_err(|err| format!("not a usable AMQP URL: {err}"))?;
        // lapin's parser keeps only what the url crate calls a domain and
        // turns an IPv6 address into "localhost": take the host from the URL.
        let parsed = Url::parse(url).map_err(|err| format!("not a usable AMQP URL: {err}"))?;
        if let Some(host) = parsed.host_str().filter(|host| !host.is_empty()) {
            uri.authority.host = host.trim_matches(['[', ']']).to_owned();
        }
        Ok(Self {
            uri,
            display: redact_url(url),
            redactor: redactor_for(url),
        })
    }

    /// The URL's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// One connection, closed cleanly. Dropped midway, its socket is shut
    /// down (see the module comment).
    pub async fn run(&self) -> Result<(), String> {
        let host = self.uri.authority.host.clone();
        let port = self.uri.authority.port;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|err| describe_io(&err))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address"));
        }
        let runtime = lapin::runtime::default_runtime().map_err(|err| describe_error(&err))?;
        let mut guard = SocketGuard::new();
        let socket = guard.socket.clone();
        let tls = self.uri.scheme == AMQPScheme::AMQPS;
        let properties =
            ConnectionProperties::default().with_connection_name("readyd health check".into());
        let connect = Connection::connector(
            self.uri.clone(),
            runtime,
            async move |_uri: AMQPUri, runtime| -> lapin::Result<_> {
                let attempt = async {
                    let stream = AsyncTcpStream::connect(&runtime, addrs.clone()).await?;
                    let duplicate = match &stream {
                        AsyncTcpStream::Plain(plain) => {
                            plain.get_ref().as_fd().try_clone_to_owned()?
                        }
                        _ => return Err(io::Error::other("not a plain TCP stream")),
                    };
                    socket.hold(TcpStream::from(duplicate))?;
                    if tls {
                        stream.into_tls(&host, TLSConfig::default()).await
                    } else {
                        Ok(stream)
                    }
                };
                tokio::select! {
                    result = attempt => Ok(result?),
                    () = socket.cancelled.cancelled() => {
                        Err(io::Error::from(io::ErrorKind::ConnectionAborted).into())
                    }
                }
            },
            properties,
        );
        let conn = connect.await.map_err(|err| describe_lapin(&err))?;
        conn.close(200, "OK".into())
            .await
            .map_err(|err| describe_lapin(&err))?;
        guard.closed_cleanly();
        Ok(())
    }
}

/// The run's TCP socket, shared with the connector that makes it.
#[derive(Default)]
struct SharedSocket {
    /// A duplicate of the connection's socket, once there is one.
    state: Mutex<SocketState>,
    /// Fires when the run ends: a connection attempt still under way stops.
    cancelled: CancellationToken,
}

/// What the guard and the connector agree on.
#[derive(Default)]
struct SocketState {
    /// The run has ended; no socket may be kept any more.
    ended: bool,
    /// The duplicate, kept until the run ends.
    socket: Option<TcpStream>,
}

impl SharedSocket {
    fn lock(&self) -> MutexGuard<'_, SocketState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `socket` for the guard; Err when the run has already ended.
    fn hold(&self, socket: TcpStream) -> io::Result<()> {
        let mut state = self.lock();
        if state.ended {
            return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
        }
        state.socket = Some(socket);
        Ok(())
    }
}

/// Ends the run's connection when the run ends, however it ends.
struct SocketGuard {
    /// Shared with the connector.
    socket: Arc<SharedSocket>,
    /// The connection was closed by the AMQP handshake: nothing to shut down.
    clean: bool,
}

impl SocketGuard {
    fn new() -> Self {
        Self {
            socket: Arc::new(SharedSocket::default()),
            clean: false,
        }
    }

    fn closed_cleanly(&mut self) {
        self.clean = true;
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.socket.cancelled.cancel();
        let socket = {
            let mut state = self.socket.lock();
            state.ended = true;
            state.socket.take()
        };
        if let Some(socket) = socket
            && !self.clean
        {
            // Reaches lapin's copy of the socket too: its I/O thread sees
            // the connection end and exits.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// A short description of a lapin error.
fn describe_lapin(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::IOError(io) => describe_io(io),
        lapin::ErrorKind::ProtocolError(amqp) => amqp.to_string(),
        _ => describe_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_urls() {
        for (url, host) in [
            ("amqp://u:p@10.1.2.3:5672/%2f", "10.1.2.3"),
            ("amqp://u:p@[::1]:5672/%2f", "::1"),
            ("amqps://u:p@broker.example:5671/%2f", "broker.example"),
        ] {
            let runner = AmqpRunner::new(url).unwrap();
            assert_eq!(runner.uri.authority.host, host, "{url}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let runner = AmqpRunner::new("amqp://guest:hunter2@127.0.0.1:5672/%2f").unwrap();
        assert!(!format!("{runner:?}").contains("hunter2"));
    }
}
