"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API,
standard library only, for the browser tests' drivers (ofrep_web/driver.py,
console_web/driver.py).

`Browser` starts chromedriver in a process group of its own (Chromium runs
in it too), opens a session, and on `close` ends every process it started:
the session, then chromedriver's group, then whatever Chromium left behind
(this process becomes their subreaper). A driver reports to its test in JSON
lines on stdout (`say`); the first is {"started": {"chromedriver_pid": N}},
so that the test can end that group should the driver itself die.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

INSTALL = "apt-get install chromium chromium-driver"
# Headless on a machine without a desktop, as root, and without the
# browser's own background traffic (without these, connections get refused).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
]
# Local connections only, whatever proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Deadline(Exception):
    """The run took longer than its deadline."""


def say(message):
    """One JSON line to the test."""
    print(json.dumps(message), flush=True)


def become_subreaper():
    """Makes this process the one Chromium's orphans are re-parented to
    (Linux), so that end_descendants can end and reap them."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def children():
    """The pids of this process's children, from /proc."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                stat = handle.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == me:
            found.append(int(entry))
    return found


def end_descendants(seconds):
    """Reaps what is left under this process (Chromium's helpers end by
    themselves once it has quit), killing what is still there after
    `seconds` (and giving up 5 s after that)."""
    deadline = time.monotonic() + seconds
    killed = False
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        left = children()
        if not left:
            return
        if time.monotonic() > deadline:
            if killed:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_with_deadline(seconds, main):
    """Runs main() as the driver's whole life: a deadline (SIGALRM), SIGTERM
    as an exit (so that clean-up runs), and this process as the subreaper
    of what it starts. Returns main's exit code."""

    def on_alarm(signum, frame):
        raise Deadline(f"the driver's deadline of {seconds} s passed")

    def on_term(signum, frame):
        raise SystemExit(f"ended by signal {signum}")

    become_subreaper()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(seconds))
    try:
        return main()
    finally:
        signal.alarm(0)


class WebDriver:
    """chromedriver's W3C WebDriver API over plain HTTP."""

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with OPENER.open(request, timeout=timeout) as answer:
                return json.load(answer)["value"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:1000]
            raise RuntimeError(f"WebDriver {method} {path}: {err.code} {detail}") from None

    def wait_until_up(self, process, seconds):
        deadline = time.monotonic() + seconds
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chromedriver exited with {process.returncode}")
            try:
                if self.call("GET", "/status", timeout=2).get("ready"):
                    return
            except (OSError, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not answer within {seconds} s")
            time.sleep(0.1)

    def open_session(self, binary, args, logging):
        value = self.call(
            "POST",
            "/session",
            {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {"binary": binary, "args": args},
                        "goog:loggingPrefs": logging,
                        "timeouts": {"script": 10000, "pageLoad": 30000},
                    }
                }
            },
            timeout=60,
        )
        self.session = value["sessionId"]

    def on_session(self, method, path, body=None, timeout=30):
        return self.call(method, f"/session/{self.session}{path}", body, timeout)

    def script(self, script, *args, timeout=30):
        """The value of `script` (a function body) run in the page."""
        return self.on_session(
            "POST", "/execute/sync", {"script": script, "args": list(args)}, timeout
        )

    def cdp(self, command, params=None):
        """A DevTools protocol command, through chromedriver."""
        return self.on_session(
            "POST", "/goog/cdp/execute", {"cmd": command, "params": params or {}}
        )

    def log(self, kind):
        """The entries of log `kind` ("browser", "performance") since the
        last read."""
        return self.on_session("POST", "/se/log", {"type": kind})

    def close_session(self):
        if self.session is not None:
            session, self.session = self.session, None
            self.call("DELETE", f"/session/{session}", timeout=15)


class Browser:
    """chromedriver with one Chromium session, in a scratch directory of
    its own; `close` (always, also when `start` failed) ends them and
    removes it."""

    def __init__(self, scratch_prefix="readyd-browser-"):
        self.driver = None
        self.process = None
        self.scratch = tempfile.mkdtemp(prefix=scratch_prefix)
        self.driver_log = open(os.path.join(self.scratch, "chromedriver.log"), "w+b")

    def start(self, window_size, logging=None):
        """Starts chromedriver and opens the session: a window of
        `window_size` ("W,H"), the logs of `logging` kept (the browser's
        console by default)."""
        chromedriver = shutil.which("chromedriver")
        chromium = next(
            (path for path in map(shutil.which, ["chromium", "chromium-browser"]) if path), None
        )
        if chromedriver is None or chromium is None:
            raise RuntimeError(f"chromium and chromedriver are needed: {INSTALL}")
        port = free_port()
        # A process group of its own, Chromium included, so that it all
        # ends together (here, and from the test should this driver die).
        self.process = subprocess.Popen(
            [chromedriver, f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=self.driver_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        say({"started": {"chromedriver_pid": self.process.pid}})
        self.driver = WebDriver(port)
        self.driver.wait_until_up(self.process, 20)
        args = CHROMIUM_ARGS + [
            f"--window-size={window_size}",
            f"--user-data-dir={os.path.join(self.scratch, 'profile')}",
        ]
        self.driver.open_session(chromium, args, logging or {"browser": "ALL"})

    def browser_log(self):
        """The browser's console since the last read; a failure to read it
        is an entry of its own rather than an error."""
        try:
            return self.driver.log("browser")
        except Exception as err:  # noqa: BLE001 - reported, not fatal
            return [{"level": "DRIVER", "message": f"cannot read the browser log: {err}"}]

    def report_chromedriver_log(self):
        """The end of chromedriver's own log, on stderr (after a failure)."""
        self.driver_log.seek(0)
        tail = self.driver_log.read()[-4000:].decode(errors="replace")
        if tail:
            print(f"chromedriver's log ends with:\n{tail}", file=sys.stderr)

    def close(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.driver is not None:
            try:
                self.driver.close_session()
            except Exception:  # noqa: BLE001 - the kill below still ends it
                pass
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait()
        end_descendants(5)
        self.driver_log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
