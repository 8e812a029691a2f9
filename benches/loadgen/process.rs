//! Servers under load as child processes: pinned to a core with `taskset`
//! when the machine allows it, found by the address they print, and read
//! from `/proc` for CPU time and resident memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which cores the servers and the client run on.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// The servers' core, when pinned.
    pub server: Option<usize>,
    /// The client's core, when pinned.
    pub client: Option<usize>,
    /// What was done, for the report.
    pub note: String,
}

impl Pinning {
    /// Servers on core 0 and the client on core 1 when `wanted`, `taskset`
    /// runs and there are two cores or more; else nothing pinned, and the
    /// note says why.
    pub fn detect(wanted: bool) -> Pinning {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let unpinned = |why: String| Pinning {
            server: None,
            client: None,
            note: format!("unpinned: {why}"),
        };
        if !wanted {
            return unpinned("pinning turned off".into());
        }
        if cores < 2 {
            return unpinned(format!("{cores} core available"));
        }
        let taskset = std::process::Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !taskset.is_ok_and(|status| status.success()) {
            return unpinned("taskset not found".into());
        }
        Pinning {
            server: Some(0),
            client: Some(1),
            note: format!("server on core 0, client on core 1 ({cores} cores)"),
        }
    }

    /// Moves this process (every thread it has now and, by inheritance,
    /// every later one) to the client's core.
    pub fn pin_client(&self) -> Result<(), String> {
        let Some(core) = self.client else {
            return Ok(());
        };
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string()])
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .map_err(|err| format!("taskset: {err}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("taskset exited with {status}"))
        }
    }

    /// `program`, under `taskset` on the server core when pinned.
    pub fn server_command(&self, program: &Path) -> Command {
        match self.server {
            Some(core) => {
                let mut command = Command::new("taskset");
                command.args(["-c", &core.to_string()]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }
}

/// A server under load: a child process, or (in the smoke test) a task of
/// this process.
pub struct Server {
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    /// The child, when it is one.
    child: Option<Child>,
    /// Its output lines, kept draining so it never blocks on a full pipe.
    lines: Option<mpsc::UnboundedReceiver<String>>,
    /// Stops it, when it runs in this process.
    stop: Option<CancellationToken>,
}

impl Server {
    /// A server running in this process until `stop` fires.
    pub fn in_process(addr: SocketAddr, stop: CancellationToken) -> Server {
        Server {
            addr,
            child: None,
            lines: None,
            stop: Some(stop),
        }
    }

    /// Spawns `command` and waits until `address_of` finds the address in
    /// one of its output lines; also returns the time from spawn to then.
    pub async fn spawn(
        mut command: Command,
        address_of: fn(&str) -> Option<SocketAddr>,
    ) -> (Server, Duration) {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn the server");
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
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.recv().await {
                if let Some(addr) = address_of(&line) {
                    return Some(addr);
                }
                seen.push(line);
            }
            None
        })
        .await;
        let Ok(Some(addr)) = found else {
            panic!(
                "the server did not say where it serves within 60 s:\n{}",
                seen.join("\n")
            );
        };
        let elapsed = started.elapsed();
        let server = Server {
            addr,
            child: Some(child),
            lines: Some(lines),
            stop: None,
        };
        (server, elapsed)
    }

    /// The child's process id (`taskset` execs the program, so it is the
    /// server's own).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// CPU time (user + system, every thread) the child has used so far,
    /// to the nanosecond from the process's CPU clock; from
    /// `/proc/<pid>/stat` (10 ms ticks) where that clock cannot be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()?).ok()?);
        if let Ok(now) = nix::time::clock_getcpuclockid(pid).and_then(|clock| clock.now()) {
            let (secs, nanos) = (u64::try_from(now.tv_sec()), u32::try_from(now.tv_nsec()));
            if let (Ok(secs), Ok(nanos)) = (secs, nanos) {
                return Some(Duration::new(secs, nanos));
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ is 100 on every Linux architecture readyd targets.
        Some(Duration::from_millis(ticks * 10))
    }

    /// The child's resident memory, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The child's resident memory by kind, in bytes: anonymous (heap,
    /// stacks) and file-backed (the binary's pages that were read).
    pub fn rss_kinds(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some((field("RssAnon:")?, field("RssFile:")?))
    }

    /// Stops the server: SIGTERM and a wait for a child, the token for a
    /// task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.lines.take();
    }
}
