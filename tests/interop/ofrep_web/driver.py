"""Drives a headless Chromium through chromedriver's WebDriver HTTP API
(standard library only) for tests/ofrep_browser.rs: serves index.html,
page.js and the pinned OpenFeature packages from a static server of its own
(another origin than readyd's, so the page's requests are real CORS ones),
loads the page and reports what it sees, one JSON line at a time on stdout:

  {"started": {"chromedriver_pid": N}}    chromedriver runs, in a process
                                          group of its own with Chromium
  {"ready": STATE}                        the provider is ready and its
                                          event stream open
  {"changed": STATE}                      a ConfigurationChanged naming the
                                          watched flag arrived
  {"done": {"state", "browser_log", "screenshot"}}
  {"failed": WHY, "state", "browser_log"} instead of any of the above

STATE is the page's window.readydTest plus its navigations, the bulk
evaluations it made and its visibility. Every process it starts ends before
it exits, which it does by the deadline at the latest.

Usage: python3 driver.py CONFIG_JSON, with CONFIG_JSON an object:
  readyd      readyd's HTTP origin (http://127.0.0.1:PORT)
  token       the client token the page presents
  context     the evaluation context
  flags       [{"key", "kind", "default"}] to evaluate
  watch       the flag whose change to wait for
  vendor      the node_modules/@openfeature directory of the pinned packages
  screenshot  where to save a PNG of the page at the end (optional)
  deadline    seconds the whole run may take (default 120)
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
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
    "--window-size=1000,420",
]
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
}
# Local connections only, whatever proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
STATE_SCRIPT = """
const state = window.readydTest;
if (!state) { return null; }
return JSON.stringify(Object.assign({}, state, {
  navigations: performance.getEntriesByType('navigation').map((e) => e.type),
  bulkEvaluations: performance.getEntriesByType('resource')
    .filter((e) => e.name.includes('/ofrep/v1/evaluate/flags')).length,
  visibility: document.visibilityState,
}));
"""


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


class Deadline(Exception):
    """The run took longer than its deadline."""


def say(message):
    print(json.dumps(message), flush=True)


def static_server(vendor):
    """A static server on 127.0.0.1: this directory's files at /, the
    pinned packages at /vendor/."""
    roots = {"": os.path.realpath(HERE), "vendor": os.path.realpath(vendor)}

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.urlsplit(self.path).path
            if path == "/":
                path = "/index.html"
            top, _, rest = path.lstrip("/").partition("/")
            if top == "vendor":
                base, relative = roots["vendor"], rest
            else:
                base, relative = roots[""], path.lstrip("/")
            full = os.path.realpath(os.path.join(base, relative))
            kind = TYPES.get(os.path.splitext(full)[1])
            if not full.startswith(base + os.sep) or not os.path.isfile(full) or kind is None:
                self.send_error(404)
                return
            with open(full, "rb") as handle:
                body = handle.read()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def open_session(self, binary, user_data_dir):
        value = self.call(
            "POST",
            "/session",
            {
                "capabilities": {
                    "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": binary,
                            "args": CHROMIUM_ARGS + [f"--user-data-dir={user_data_dir}"],
                        },
                        "goog:loggingPrefs": {"browser": "ALL"},
                        "timeouts": {"script": 10000, "pageLoad": 30000},
                    }
                }
            },
            timeout=60,
        )
        self.session = value["sessionId"]

    def on_session(self, method, path, body=None, timeout=30):
        return self.call(method, f"/session/{self.session}{path}", body, timeout)

    def close_session(self):
        if self.session is not None:
            session, self.session = self.session, None
            self.call("DELETE", f"/session/{session}", timeout=15)


def page_state(driver):
    text = driver.on_session("POST", "/execute/sync", {"script": STATE_SCRIPT, "args": []})
    return None if text is None else json.loads(text)


def wait_for(driver, what, seconds, done):
    """Polls the page until done(state); raises naming `what` on a page
    error or when `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        state = page_state(driver)
        if state is not None and state["errors"]:
            return state, f"the page failed while waiting for {what}"
        if state is not None and done(state):
            return state, None
        if time.monotonic() > deadline:
            return state, f"no {what} within {seconds} s"
        time.sleep(0.1)


def main():
    config = json.loads(sys.argv[1])

    def on_alarm(signum, frame):
        raise Deadline(f"the driver's deadline of {config.get('deadline', 120)} s passed")

    def on_term(signum, frame):
        raise SystemExit(f"ended by signal {signum}")

    become_subreaper()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(config.get("deadline", 120)))

    chromedriver = shutil.which("chromedriver")
    chromium = next(
        (path for path in map(shutil.which, ["chromium", "chromium-browser"]) if path), None
    )
    if chromedriver is None or chromium is None:
        say({"failed": f"chromium and chromedriver are needed: {INSTALL}"})
        return 2

    server = None
    process = None
    driver = None
    browser_log = []
    scratch = tempfile.mkdtemp(prefix="readyd-ofrep-web-")
    driver_log = open(os.path.join(scratch, "chromedriver.log"), "w+b")
    state = None

    def collect_log():
        try:
            browser_log.extend(driver.on_session("POST", "/se/log", {"type": "browser"}))
        except Exception as err:  # noqa: BLE001 - reported, not fatal
            browser_log.append({"level": "DRIVER", "message": f"cannot read the browser log: {err}"})

    try:
        server = static_server(config["vendor"])
        port = free_port()
        # A process group of its own, Chromium included, so that it all
        # ends together (here, and from the test should this driver die).
        process = subprocess.Popen(
            [chromedriver, f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=driver_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        say({"started": {"chromedriver_pid": process.pid}})
        driver = WebDriver(port)
        driver.wait_until_up(process, 20)
        driver.open_session(chromium, os.path.join(scratch, "profile"))

        page = {
            "baseUrl": config["readyd"],
            "token": config["token"],
            "context": config["context"],
            "flags": config["flags"],
        }
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        query = urllib.parse.urlencode({"config": json.dumps(page)})
        driver.on_session("POST", "/url", {"url": f"{origin}/?{query}"}, timeout=60)

        state, failure = wait_for(
            driver,
            "a ready provider with an open event stream",
            30,
            lambda s: s["ready"] and any(stream["opens"] > 0 for stream in s["sse"]),
        )
        if failure:
            collect_log()
            say({"failed": failure, "state": state, "browser_log": browser_log})
            return 1
        say({"ready": state})

        watch = config["watch"]
        state, failure = wait_for(
            driver,
            f"ConfigurationChanged naming {watch}",
            30,
            lambda s: any(watch in change["flagsChanged"] for change in s["changes"]),
        )
        if failure:
            collect_log()
            say({"failed": failure, "state": state, "browser_log": browser_log})
            return 1
        say({"changed": state})

        # A moment for anything the change set off to show in the logs.
        time.sleep(0.5)
        state = page_state(driver)
        screenshot = config.get("screenshot")
        if screenshot:
            png = base64.b64decode(driver.on_session("GET", "/screenshot"))
            os.makedirs(os.path.dirname(screenshot), exist_ok=True)
            with open(screenshot, "wb") as handle:
                handle.write(png)
        collect_log()
        say({"done": {"state": state, "browser_log": browser_log, "screenshot": screenshot}})
        return 0
    except Exception as err:  # noqa: BLE001 - reported to the test
        if driver is not None and driver.session is not None:
            collect_log()
        say({"failed": f"{type(err).__name__}: {err}", "state": state, "browser_log": browser_log})
        driver_log.seek(0)
        tail = driver_log.read()[-4000:].decode(errors="replace")
        if tail:
            print(f"chromedriver's log ends with:\n{tail}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if driver is not None:
            try:
                driver.close_session()
            except Exception:  # noqa: BLE001 - the kill below still ends it
                pass
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        end_descendants(5)
        if server is not None:
            server.shutdown()
            server.server_close()
        driver_log.close()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
