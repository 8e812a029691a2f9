//! The browser tests' drivers (`tests/interop/*/driver.py`, on the shared
//! `tests/interop/webdriver.py`): a Python process that runs a headless
//! Chromium through chromedriver and reports in JSON lines on stdout.
//! Every process it starts ends with it, or here should it die first.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Fails, in one line, unless Chromium and chromedriver are on PATH.
pub fn require_browser() {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    assert!(
        on_path("chromedriver") && (on_path("chromium") || on_path("chromium-browser")),
        "Chromium and chromedriver are not installed: apt-get install chromium chromium-driver"
    );
}

/// A browser driver, running: its messages, its commands (when it takes
/// them on stdin), and what ends it.
pub struct Driver {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    commands: Option<ChildStdin>,
    /// The process group chromedriver runs in, Chromium's processes too.
    chromedriver: Option<i32>,
}

impl Driver {
    /// Starts `script` with `config` (its one argument, as JSON); with
    /// `commands`, it reads commands on its stdin (see [`Driver::call`]).
    pub fn start(script: &Path, config: &Value, commands: bool) -> Driver {
        let mut child = Command::new("python3")
            .arg(script)
            .arg(config.to_string())
            .stdin(if commands {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the browser driver (python3)");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Driver {
            commands: child.stdin.take(),
            child,
            lines,
            chromedriver: None,
        }
    }

    /// The driver's next message, `what`, within `seconds`; fails the test
    /// with what the driver said when it failed (once it has ended).
    pub async fn next(&mut self, what: &str, seconds: u64) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(seconds), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {what} from the browser driver within {seconds} s"))
            .expect("read the driver's output")
            .unwrap_or_else(|| panic!("the browser driver ended before {what}"));
        let message: Value =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line:?}"));
        if message.get("failed").is_some() {
            // Its clean-up, closing the browser, takes a few seconds.
            let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
            panic!(
                "the browser driver failed before {what}:\n{}",
                serde_json::to_string_pretty(&message).unwrap_or(line)
            );
        }
        if let Some(pid) = message.pointer("/started/chromedriver_pid") {
            self.chromedriver = pid.as_i64().and_then(|pid| i32::try_from(pid).ok());
        }
        message
            .get(what)
            .cloned()
            .unwrap_or_else(|| panic!("expected {what:?}, got {line}"))
    }

    /// Sends `command` (one JSON line) and returns its answer (`ok`),
    /// within `seconds`.
    pub async fn call(&mut self, command: Value, seconds: u64) -> Value {
        let stdin = self
            .commands
            .as_mut()
            .expect("a driver that takes commands");
        let mut line = command.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("send the driver a command");
        stdin.flush().await.expect("send the driver a command");
        let what = format!("ok (for {command})");
        self.next("ok", seconds)
            .await
            .get("value")
            .cloned()
            .unwrap_or_else(|| panic!("{what}: no value"))
    }

    /// Waits for the driver to exit, which it does once it has ended
    /// chromedriver and Chromium (a driver that takes commands, once its
    /// stdin closes).
    pub async fn wait(&mut self) {
        self.commands = None;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the browser driver exits")
            .expect("wait for the browser driver");
        assert!(status.success(), "the browser driver: {status:?}");
        self.chromedriver = None;
    }
}

impl Drop for Driver {
    /// When the test failed with the driver still running: SIGTERM, on
    /// which it closes the browser itself, 15 s for that, then SIGKILL for
    /// it and for chromedriver's process group.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
        if let Some(group) = self.chromedriver.take() {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
}
