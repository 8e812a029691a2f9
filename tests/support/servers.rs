//! Redis, NATS and RabbitMQ for the dependency check tests.
//!
//! The URL in `READYD_TEST_REDIS_URL`, `READYD_TEST_NATS_URL` or
//! `READYD_TEST_AMQP_URL` when it is set; otherwise a private server that this
//! test process starts on a free loopback port the first time it is asked for,
//! and that dies with the process. A server already answering on the standard
//! port is never used: it may be configured differently (a password, a vhost)
//! and it is not the tests' to rely on; and this way every run, CI's included,
//! exercises the private start.
//!
//! Ports: NATS picks its own and logs it. Redis and RabbitMQ are given a port
//! that was free a moment ago, so another process may take it first: the
//! start is then retried on new ports.
//!
//! Lifetime: each server is spawned with a parent-death signal (SIGKILL), so
//! it ends when this process ends, however it ends (a failed test, a timeout
//! kill). Its files are under the system temp directory in a directory named
//! after this process; a later start removes the directories of processes
//! that are gone.

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Starts with a port taken meanwhile by someone else are retried this often.
const ATTEMPTS: u32 = 5;

/// RabbitMQ takes seconds to boot, more on a loaded two-core machine.
const RABBITMQ_START: Duration = Duration::from_secs(90);
const QUICK_START: Duration = Duration::from_secs(20);

/// The URL of a Redis without a password.
pub fn redis_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    env_or("READYD_TEST_REDIS_URL", &URL, start_redis)
}

/// The URL of a NATS without credentials.
pub fn nats_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    env_or("READYD_TEST_NATS_URL", &URL, start_nats)
}

/// The URL of a RabbitMQ whose `guest` user (password `guest`) may use `/`.
pub fn amqp_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    env_or("READYD_TEST_AMQP_URL", &URL, start_rabbitmq)
}

fn env_or(name: &str, url: &OnceLock<String>, start: fn() -> String) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => url.get_or_init(start).clone(),
    }
}

/// Where `program` is installed: on PATH, or in an sbin directory that is
/// not on it; else the one line that says which package to install.
pub fn installed(program: &str, package: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "{program} is not installed: install the {package} package (apt-get install {package})"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn require(program: &str, package: &str) -> PathBuf {
    installed(program, package).unwrap_or_else(|line| panic!("{line}"))
}

// ------------------------------------------------------------------ redis

fn start_redis() -> String {
    let bin = require("redis-server", "redis-server");
    for attempt in 0..ATTEMPTS {
        let dir = server_dir("redis", attempt);
        let [port] = free_ports();
        let mut command = Command::new(&bin);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir);
        let mut server = Server::spawn(command, &dir);
        match server.wait_for(QUICK_START, |log| {
            log.contains("Ready to accept connections").then_some(())
        }) {
            Ok(()) => {
                keep(server);
                return format!("redis://127.0.0.1:{port}");
            }
            Err(log) if log.contains("Address already in use") => continue,
            Err(log) => panic!("redis-server did not start:\n{log}"),
        }
    }
    panic!("redis-server found no free port in {ATTEMPTS} attempts");
}

// ------------------------------------------------------------------- nats

fn start_nats() -> String {
    let bin = require("nats-server", "nats-server");
    let dir = server_dir("nats", 0);
    let mut command = Command::new(&bin);
    // -p -1: the server binds a random port itself and logs which.
    command.args(["-a", "127.0.0.1", "-p", "-1"]);
    let mut server = Server::spawn(command, &dir);
    let port = server
        .wait_for(QUICK_START, |log| {
            let ready = log.contains("Server is ready");
            let (_, rest) = log.split_once("Listening for client connections on 127.0.0.1:")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            ready.then(|| digits.parse::<u16>().ok()).flatten()
        })
        .unwrap_or_else(|log| panic!("nats-server did not start:\n{log}"));
    keep(server);
    format!("nats://127.0.0.1:{port}")
}

// --------------------------------------------------------------- rabbitmq

fn start_rabbitmq() -> String {
    // The Debian sbin entry is a wrapper that insists on the rabbitmq user;
    // the script it wraps runs as anyone.
    let direct = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    let bin = if is_executable(&direct) {
        direct
    } else {
        require("rabbitmq-server", "rabbitmq-server")
    };
    let epmd = require("epmd", "rabbitmq-server");
    for attempt in 0..ATTEMPTS {
        let dir = server_dir("rabbitmq", attempt);
        // A port mapper of its own: the node would otherwise start a shared
        // one that outlives the tests.
        let [epmd_port, port, dist_port] = free_ports();
        let mut mapper = Command::new(&epmd);
        mapper
            .args(["-port", &epmd_port.to_string()])
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        let mut mapper = Server::spawn(mapper, &dir.join("epmd"));
        if mapper
            .wait_for(QUICK_START, |_| {
                TcpStream::connect(("127.0.0.1", epmd_port)).ok()
            })
            .is_err()
        {
            continue;
        }
        let files = |name: &str| dir.join(name);
        write(&files("rabbitmq-env.conf"), "");
        write(&files("rabbitmq.conf"), "# no settings: the defaults\n");
        write(&files("enabled_plugins"), "[].\n");
        let mut command = Command::new(&bin);
        command
            // Nothing from the system's configuration: no plugins (the
            // management one would take a fixed port), no node name.
            .env("RABBITMQ_CONF_ENV_FILE", files("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", files("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", files("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", files("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", files("mnesia"))
            .env("RABBITMQ_LOG_BASE", files("log"))
            .env("RABBITMQ_PID_FILE", files("rabbitmq.pid"))
            .env("RABBITMQ_LOGS", "-")
            .env(
                "RABBITMQ_NODENAME",
                format!("readyd-test-{}@localhost", std::process::id()),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            // The script then execs the VM instead of running it as a child
            // of its own, so the parent-death signal reaches the VM; and
            // -noinput keeps the Erlang shell off.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            // The Erlang cookie is written to $HOME.
            .env("HOME", &dir)
            .env_remove("ERL_FLAGS");
        let mut server = Server::spawn(command, &dir);
        match server.wait_for(RABBITMQ_START, |log| {
            log.contains("Server startup complete").then_some(())
        }) {
            Ok(()) => {
                keep(server);
                keep(mapper);
                return format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
            }
            Err(log) if log.contains("eaddrinuse") => continue,
            Err(log) => panic!("rabbitmq-server did not start:\n{log}"),
        }
    }
    panic!("rabbitmq-server found no free ports in {ATTEMPTS} attempts");
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

// ------------------------------------------------------------------ common

/// Distinct ports that were free when asked (see the module doc on races).
fn free_ports<const N: usize>() -> [u16; N] {
    // All bound at once, so no two are the same.
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"));
    listeners.map(|listener| listener.local_addr().expect("local address").port())
}

/// Keeps a started server running for the rest of this process (it dies
/// with the process: see the module doc).
fn keep(server: Server) {
    static RUNNING: Mutex<Vec<Server>> = Mutex::new(Vec::new());
    RUNNING.lock().expect("running servers").push(server);
}

/// A fresh directory for one start of `name`, under this process's own.
fn server_dir(name: &str, attempt: u32) -> PathBuf {
    static SWEPT: OnceLock<PathBuf> = OnceLock::new();
    let base = SWEPT.get_or_init(|| {
        let base = std::env::temp_dir().join("readyd-test-servers");
        remove_dirs_of_gone_processes(&base);
        base
    });
    let dir = base.join(format!("{}-{name}-{attempt}", std::process::id()));
    // A directory left from an earlier process with the same pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
    dir
}

fn remove_dirs_of_gone_processes(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()) else {
            continue;
        };
        let gone = pid.parse::<i32>().is_ok_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A server process writing its output to `output.log` in its directory.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(mut command: Command, dir: &Path) -> Server {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
        let log = dir.join("output.log");
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the server log");
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let program = command.get_program().to_string_lossy().into_owned();
        let child = spawn_tied(command).unwrap_or_else(|err| panic!("start {program}: {err}"));
        Server { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until `ready` finds what it looks for in the log (or elsewhere).
    /// Err(the log) when the process exits first or the deadline passes;
    /// the process is then killed.
    fn wait_for<T>(
        &mut self,
        within: Duration,
        mut ready: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if let Some(found) = ready(&log) {
                // Ready, unless it was someone else's listener and this
                // process is on its way out.
                if matches!(self.child.try_wait(), Ok(None)) {
                    return Ok(found);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{log}\n(exited: {status})"));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("{}\n(not ready within {within:?})", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        // By pid: this Child is the process this module started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    /// A start that did not succeed leaves nothing running.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` so that it gets SIGKILL when this process ends.
///
/// The parent-death signal fires when the *thread* that spawned the child
/// ends, and test threads end with their test: every spawn happens on one
/// thread that lives as long as the process.
fn spawn_tied(command: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // SAFETY: prctl is async-signal-safe and touches no
                    // memory of the parent.
                    unsafe {
                        command.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                                return Err(io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((command, reply))
        .expect("the spawner thread runs");
    answer.recv().expect("the spawner thread answers")
}
