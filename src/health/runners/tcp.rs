//! A TCP port: the connection is accepted, nothing is sent. For dependencies
//! without a runner of their own, "something listens there" is the most that
//! can be said without speaking their protocol.

use std::fmt;

use tokio::net::TcpStream;

use super::describe_io;

/// Opens and drops one TCP connection.
pub struct TcpRunner {
    /// Host name or address (IPv6 without brackets).
    host: String,
    /// Port.
    port: u16,
}

impl fmt::Debug for TcpRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TcpRunner({}:{})", self.host, self.port)
    }
}

impl TcpRunner {
    /// A runner for `host:port`.
    pub fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            port,
        }
    }

    /// One connection, closed at once. Every address the name resolves to is
    /// tried in turn.
    pub async fn run(&self) -> Result<(), String> {
        TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map(drop)
            .map_err(|err| describe_io(&err))
    }
}
