//! A TCP proxy between readyd and PostgreSQL that a test can cut, stall and
//! heal, to take the database away from a running readyd without stopping
//! the shared server: cut closes every connection (the server went away);
//! stall forwards nothing and closes nothing (a network partition, where
//! nobody is told).

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A TCP address.
    Tcp(String),
    /// A Unix socket file.
    Unix(PathBuf),
}

impl Target {
    /// The PostgreSQL server behind `url` (`host`/`port` of a URL, or a
    /// `host=/socket/dir` query parameter).
    pub fn of_url(url: &str) -> Target {
        let options: sqlx::postgres::PgConnectOptions = url.parse().expect("database url");
        let port = options.get_port();
        match options.get_socket() {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Target::Tcp(format!("{}:{port}", options.get_host())),
        }
    }
}

/// A running proxy; dropping it stops accepting.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// true while cut.
    cut: watch::Sender<bool>,
    /// true while stalled.
    stalled: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy on a loopback port.
    pub async fn start(target: Target) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, _) = watch::channel(false);
        let cut_rx = cut.subscribe();
        let (stalled, _) = watch::channel(false);
        let stalled_rx = stalled.subscribe();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client); // refused while cut
                    continue;
                }
                let target = target.clone();
                let mut cut_rx = cut_rx.clone();
                let mut stalled_rx = stalled_rx.clone();
                tokio::spawn(async move {
                    let stalled_now = *stalled_rx.borrow();
                    if stalled_now {
                        // Accepted, never answered; closed when healed.
                        let _ = stalled_rx.wait_for(|stalled| !*stalled).await;
                        return;
                    }
                    match target {
                        Target::Tcp(addr) => {
                            if let Ok(server) = TcpStream::connect(addr).await {
                                pipe(client, server, &mut cut_rx, &mut stalled_rx).await;
                            }
                        }
                        Target::Unix(path) => {
                            if let Ok(server) = UnixStream::connect(path).await {
                                pipe(client, server, &mut cut_rx, &mut stalled_rx).await;
                            }
                        }
                    }
                });
            }
        });
        TcpProxy {
            addr,
            cut,
            stalled,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards nothing, closes nothing, and accepts connections without
    /// answering them; heal closes what the stall held.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Accepts and forwards connections again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
        self.stalled.send_replace(false);
    }

    /// `url` rewritten to go through this proxy.
    pub fn url_for(&self, database: &str, user: &str) -> String {
        format!("postgres://{user}@{}/{database}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn pipe<S>(
    mut client: TcpStream,
    mut server: S,
    cut: &mut watch::Receiver<bool>,
    stalled: &mut watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stall_began = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|cut| *cut) => false,
        _ = stalled.wait_for(|stalled| *stalled) => true,
    };
    if stall_began {
        // Bytes in flight are lost: the connection is closed at heal.
        let _ = stalled.wait_for(|stalled| !*stalled).await;
    }
}
