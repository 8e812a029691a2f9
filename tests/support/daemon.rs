//! The real `readyd` binary as a child process, for signal, restart and
//! outage tests: start it, find its address in its "serving" log line,
//! signal it, wait for it, read its log; and the two halves of a relay
//! fleet, an upstream with a database and a follower of it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use readyd::client::channel::RetryingChannel;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// The binary under test: where nextest says it is (which follows an
/// archived run to where the archive was unpacked), else where cargo built it.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("NEXTEST_BIN_EXE_readyd")
        .map_or_else(|| env!("CARGO_BIN_EXE_readyd").into(), Into::into)
}

/// How long a daemon may take to say it is serving (a start with the
/// database down waits `--db-wait` first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `readyd serve` command line being put together.
pub struct DaemonCommand {
    command: Command,
    json: bool,
}

impl DaemonCommand {
    /// `readyd serve` on an ephemeral loopback port, JSON logs at info,
    /// metrics off, and nothing inherited that would change what it does
    /// (DATABASE_URL, tokens, log settings).
    pub fn serve() -> DaemonCommand {
        let mut command = Command::new(binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env_remove("READYD_ADMIN_TOKEN")
            .env_remove("READYD_READ_TOKEN")
            .env_remove("READYD_CHECKS")
            .env("READYD_LOG", "info")
            .env("READYD_METRICS_LISTEN", "off")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        DaemonCommand {
            command,
            json: true,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> DaemonCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    /// Adds `flag` followed by `path`.
    pub fn arg_path(mut self, flag: &str, path: &Path) -> DaemonCommand {
        self.command.arg(flag).arg(path);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> DaemonCommand {
        self.command.env(key, value);
        self
    }

    /// Text logs instead of JSON.
    pub fn text_logs(mut self) -> DaemonCommand {
        self.json = false;
        self
    }

    /// Starts the daemon and waits for its "serving" line.
    pub async fn start(mut self) -> Daemon {
        let log_format = if self.json { "json" } else { "text" };
        self.command.args(["--log-format", log_format]);
        let mut child = self.command.spawn().expect("spawn readyd");
        let (tx, mut lines) = mpsc::unbounded_channel();
        let outputs = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ];
        // Keep reading both pipes, so the child never blocks on a full one.
        for output in outputs.into_iter().flatten() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(output).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let json = self.json;
        let mut seen = Vec::new();
        let (addr, metrics, probe, http) = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.recv().await {
                seen.push(line.clone());
                if let Some(addr) = serving_field(&line, json, "listen") {
                    return (
                        addr,
                        serving_field(&line, json, "metrics"),
                        serving_field(&line, json, "probe"),
                        serving_field(&line, json, "http"),
                    );
                }
            }
            panic!("readyd exited before serving:\n{}", seen.join("\n"));
        })
        .await
        .expect("readyd serves in time");
        // Lines read while waiting are part of the log too.
        let (replay_tx, replay) = mpsc::unbounded_channel();
        for line in seen {
            let _ = replay_tx.send(line);
        }
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if replay_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            addr,
            metrics,
            probe,
            http,
            lines: replay,
            read: Vec::new(),
        }
    }
}

/// The replication token of the fleets the tests start: an upstream and
/// its followers share it.
pub const REPLICATION_TOKEN: &str = "test-replication-token";

/// A readyd on the database at `db_url`, serving `environment` as instance
/// `upstream`, that followers holding [`REPLICATION_TOKEN`] may follow.
/// Further settings (tokens, listeners, intervals) go on the returned
/// command.
pub fn upstream(db_url: &str, environment: &str, data_dir: &Path) -> DaemonCommand {
    DaemonCommand::serve()
        .env("DATABASE_URL", db_url)
        .env("READYD_REPLICATION_TOKEN", REPLICATION_TOKEN)
        .arg_path("--data-dir", data_dir)
        .args(["--environment", environment, "--instance", "upstream"])
}

/// A follower of `upstream_url` (no database), serving `environment` as
/// `instance`, with [`REPLICATION_TOKEN`] and its snapshot in `data_dir`.
/// Further settings go on the returned command.
pub fn follower(
    upstream_url: &str,
    environment: &str,
    instance: &str,
    data_dir: &Path,
) -> DaemonCommand {
    DaemonCommand::serve()
        .env("READYD_UPSTREAM", upstream_url)
        .env("READYD_REPLICATION_TOKEN", REPLICATION_TOKEN)
        .arg_path("--data-dir", data_dir)
        .args(["--environment", environment, "--instance", instance])
}

/// An address of a "readyd is serving" line: `listen` (gRPC) or `metrics`.
fn serving_field(line: &str, json: bool, field: &str) -> Option<SocketAddr> {
    if !line.contains("readyd is serving") {
        return None;
    }
    let addr = if json {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        event[field].as_str()?.to_owned()
    } else {
        line.split(&format!("{field}="))
            .nth(1)?
            .split_whitespace()
            .next()?
            .to_owned()
    };
    addr.parse().ok()
}

/// A running `readyd serve` child process (killed if dropped).
pub struct Daemon {
    child: Child,
    /// The gRPC address it serves on.
    pub addr: SocketAddr,
    /// Where it serves `/metrics`, when it does (`--metrics-listen
    /// 127.0.0.1:0` picks a free port, race-free).
    pub metrics: Option<SocketAddr>,
    /// Where it serves the HTTP surface, when it does (`--http-listen
    /// 127.0.0.1:0`).
    pub http: Option<SocketAddr>,
    /// Where it serves plaintext probes, when it does (`--probe-listen`).
    pub probe: Option<SocketAddr>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Lines read by [`Daemon::wait_for_log`], still owed to `log_lines`.
    read: Vec<String>,
}

impl Daemon {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new connection to it.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }

    /// A new connection as readyd's own clients make them: calls the
    /// server never processed (it was shutting down) are sent again.
    pub async fn retrying_channel(&self) -> RetryingChannel {
        readyd::client::channel::connect(Endpoint::from_shared(self.url()).expect("endpoint"))
            .await
            .expect("connect")
    }

    /// `/metrics`' address; panics when the daemon serves none.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .expect("the daemon serves metrics (start it with --metrics-listen 127.0.0.1:0)")
    }

    /// Waits for a log line that contains `text` (the event a test waits
    /// on, instead of a sleep); the line is returned and kept for
    /// [`Daemon::log_lines`].
    pub async fn wait_for_log(&mut self, text: &str, within: Duration) -> String {
        let found = tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                self.read.push(line.clone());
                if line.contains(text) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "readyd exited without logging {text:?}:\n{}",
                self.read.join("\n")
            ),
            Err(_) => panic!(
                "readyd did not log {text:?} within {within:?}:\n{}",
                self.read.join("\n")
            ),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("send signal");
    }

    /// Waits for it to exit.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
    }

    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(10)).await;
    }

    /// SIGTERM, wait for exit 0, and return every log line.
    pub async fn stop(mut self) -> Vec<String> {
        self.signal(Signal::SIGTERM);
        let status = self.wait(Duration::from_secs(30)).await;
        let lines = self.log_lines().await;
        assert!(
            status.success(),
            "exit status {status:?}; log:\n{}",
            lines.join("\n")
        );
        lines
    }

    /// Every log line not read yet (waits briefly for lines in flight).
    pub async fn log_lines(&mut self) -> Vec<String> {
        let mut all = std::mem::take(&mut self.read);
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(300), self.lines.recv()).await
        {
            all.push(line);
        }
        all
    }
}
