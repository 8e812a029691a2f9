"""Drives a headless Chromium (through chromedriver, ../webdriver.py) for
tests/console_browser.rs, one command at a time: the test reads the page
and checks readyd between commands, so the steps stay in the test.

It says {"started": {"chromedriver_pid": N}}, then {"ready": {}} once the
browser runs; then for each command line on stdin (a JSON object, "do"
naming what) it answers {"ok": {"value": …}}, or {"failed": WHY,
"browser_log"} and ends. It ends when stdin closes, or by the deadline.
Every process it starts ends before it exits.

Commands:
  open        {url}                 navigate
  viewport    {width, height}       the page's size in CSS pixels
  script      {js, args}            the value of a function body run in
                                    the page
  wait        {js, args, seconds, what}
                                    polls js until its value is truthy;
                                    the value
  type        {css, text}           clears the field, then types text
  click       {css}                 clicks the element
  tab         {presses}             presses Tab that many times; each time
                                    the focused element and whether its
                                    focus shows (see FOCUSED)
  screenshot  {path, scale}         a PNG of the viewport (scaled down
                                    when scale is under 1)
  axe         {source}              axe-core's violations on the page
                                    (its source injected first)
  log         {}                    the browser's console since last read
  responses   {prefix}              every response to a URL starting with
                                    prefix since last read: url, status,
                                    MIME type and body (by the DevTools
                                    protocol, whatever made the request)
  forget_responses {}               from now on only, for responses
  cookies     {}                    the page's cookies, HttpOnly included

Usage: python3 driver.py CONFIG_JSON, with CONFIG_JSON an object:
  deadline    seconds the whole run may take (default 150)
"""

import base64
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from webdriver import Browser, run_with_deadline, say  # noqa: E402

# W3C WebDriver's key for Tab.
TAB = "\ue004"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
# What the focused element is, and whether its focus shows: it matches
# :focus-visible and has an outline or a ring (box-shadow).
FOCUSED = """
const el = document.activeElement;
if (!el || el === document.body) { return null; }
const style = getComputedStyle(el);
const label = el.getAttribute('aria-label')
  || (el.labels && el.labels[0] && el.labels[0].textContent.trim())
  || el.textContent.trim();
return {
  id: el.id, tag: el.tagName.toLowerCase(), type: el.type || '', name: el.name || '',
  label: label.slice(0, 80),
  focusVisible: el.matches(':focus-visible'),
  outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
  ring: style.boxShadow !== 'none',
};
"""
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, { resultTypes: ['violations'] }).then(
  (result) => done(JSON.stringify(result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => ({ target: n.target, html: n.html.slice(0, 200),
      summary: n.failureSummary })),
  })))),
  (err) => done(JSON.stringify({ error: String(err) })));
"""


class Page:
    """The commands, on one browser session."""

    def __init__(self, browser):
        self.browser = browser
        self.driver = browser.driver

    def element(self, css):
        found = self.driver.on_session("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(found, dict) or ELEMENT not in found:
            raise RuntimeError(f"no element {css!r}: {found!r}")
        return found[ELEMENT]

    def do_open(self, url):
        self.driver.on_session("POST", "/url", {"url": url}, timeout=60)

    def do_viewport(self, width, height):
        self.driver.cdp(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self.driver.script("return window.innerWidth;")

    def do_script(self, js, args=()):
        return self.driver.script(js, *args)

    def do_wait(self, js, what, seconds, args=()):
        deadline = time.monotonic() + seconds
        while True:
            value = self.driver.script(js, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {seconds} s (last: {value!r})")
            time.sleep(0.05)

    def on_element(self, css, *steps):
        """Finds `css` and makes each (path, body) step on it; again from
        the start should the page have replaced the element meanwhile
        (pages redraw lists when what they show changes)."""
        for attempt in range(3):
            element = self.element(css)
            try:
                for path, body in steps:
                    self.driver.on_session("POST", f"/element/{element}/{path}", body)
                return
            except RuntimeError as err:
                if "stale element reference" not in str(err) or attempt == 2:
                    raise

    def do_type(self, css, text):
        self.on_element(css, ("clear", {}), ("value", {"text": text}))

    def do_click(self, css):
        self.on_element(css, ("click", {}))

    def do_tab(self, presses):
        seen = []
        for _ in range(presses):
            self.driver.on_session(
                "POST",
                "/actions",
                {
                    "actions": [
                        {
                            "type": "key",
                            "id": "keyboard",
                            "actions": [
                                {"type": "keyDown", "value": TAB},
                                {"type": "keyUp", "value": TAB},
                            ],
                        }
                    ]
                },
            )
            seen.append(self.driver.script(FOCUSED))
        self.driver.on_session("DELETE", "/actions")
        return seen

    def do_screenshot(self, path, scale=None):
        if scale is None:
            data = self.driver.on_session("GET", "/screenshot")
        else:
            size = self.driver.script("return [window.innerWidth, window.innerHeight];")
            clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": scale}
            data = self.driver.cdp("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        png = base64.b64decode(data)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(png)
        return len(png)

    def do_axe(self, source):
        if not self.driver.script("return typeof window.axe === 'object';"):
            with open(source, encoding="utf-8") as handle:
                self.driver.script(handle.read() + "\nreturn true;", timeout=60)
        answer = json.loads(
            self.driver.on_session(
                "POST", "/execute/async", {"script": AXE_RUN, "args": []}, timeout=60
            )
        )
        if isinstance(answer, dict):
            raise RuntimeError(f"axe-core failed: {answer['error']}")
        return answer

    def do_log(self):
        return self.driver.log("browser")

    def do_responses(self, prefix):
        found = []
        for entry in self.driver.log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") != "Network.responseReceived":
                continue
            params = message["params"]
            response = params["response"]
            if not response["url"].startswith(prefix):
                continue
            try:
                body = self.driver.cdp("Network.getResponseBody", {"requestId": params["requestId"]})
                text = body["body"]
                if body.get("base64Encoded"):
                    text = base64.b64decode(text).decode(errors="replace")
            except RuntimeError as err:
                # Say so: the test decides whether a body it cannot see
                # matters (an answer without one, e.g. a 204, has none).
                text = None
                response["bodyError"] = str(err)[:200]
            found.append(
                {
                    "url": response["url"],
                    "status": response["status"],
                    "mimeType": response.get("mimeType", ""),
                    "body": text,
                    "bodyError": response.get("bodyError"),
                }
            )
        return found

    def do_forget_responses(self):
        self.driver.log("performance")

    def do_cookies(self):
        return self.driver.on_session("GET", "/cookie")


def run(config):
    browser = Browser("readyd-console-web-")
    try:
        browser.start(
            "1280,800",
            {"browser": "ALL", "performance": "ALL"},
        )
        page = Page(browser)
        say({"ready": {}})
        while True:
            line = sys.stdin.readline()
            if not line:
                break
            if not line.strip():
                continue
            command = json.loads(line)
            name = command.pop("do")
            handler = getattr(page, f"do_{name}", None)
            if handler is None:
                raise RuntimeError(f"no command {name!r}")
            try:
                value = handler(**command)
            except Exception as err:  # noqa: BLE001 - named, then reported
                raise RuntimeError(f"{name} {json.dumps(command)}: {err}") from err
            say({"ok": {"value": value}})
        return 0
    except Exception as err:  # noqa: BLE001 - reported to the test
        browser_log = browser.browser_log() if browser.driver and browser.driver.session else []
        say({"failed": f"{type(err).__name__}: {err}", "browser_log": browser_log})
        browser.report_chromedriver_log()
        return 1
    finally:
        browser.close()


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    sys.exit(run_with_deadline(config.get("deadline", 150), lambda: run(config)))
