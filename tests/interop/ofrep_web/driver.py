"""Drives a headless Chromium (through chromedriver, ../webdriver.py) for
tests/ofrep_browser.rs: serves index.html,
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
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from webdriver import Browser, run_with_deadline, say  # noqa: E402

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
}
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


def run(config):
    server = None
    browser = Browser("readyd-ofrep-web-")
    state = None
    try:
        server = static_server(config["vendor"])
        browser.start("1000,420")
        driver = browser.driver

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
            say({"failed": failure, "state": state, "browser_log": browser.browser_log()})
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
            say({"failed": failure, "state": state, "browser_log": browser.browser_log()})
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
        browser_log = browser.browser_log()
        say({"done": {"state": state, "browser_log": browser_log, "screenshot": screenshot}})
        return 0
    except Exception as err:  # noqa: BLE001 - reported to the test
        browser_log = browser.browser_log() if browser.driver and browser.driver.session else []
        say({"failed": f"{type(err).__name__}: {err}", "state": state, "browser_log": browser_log})
        browser.report_chromedriver_log()
        return 1
    finally:
        browser.close()
        if server is not None:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    sys.exit(run_with_deadline(config.get("deadline", 120), lambda: run(config)))
