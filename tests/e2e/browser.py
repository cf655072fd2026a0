"""A headless Chromium driven over the DevTools protocol (CDP): navigate, set a cookie, run JavaScript, click,
type, take screenshots. Just what the OHIF tests need; needs ``websocket-client``."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
]


class Browser:
    """``with Browser(chromium) as b: b.goto(url); b.wait_for("document.title"); b.screenshot(path)``."""

    def __init__(self, chromium: str, timeout: float = 60.0, flags: tuple[str, ...] = ()):
        self.chromium = chromium
        self.timeout = timeout
        self.flags = list(flags)  # added to FLAGS, e.g. --ignore-certificate-errors for a self-signed test server
        self._id = 0
        self.events: list[dict] = []  # CDP events received so far (Network.*, Page.*)

    def __enter__(self) -> "Browser":
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)  # chromium helpers may still write
        self.process = subprocess.Popen(
            [self.chromium, *FLAGS, *self.flags, f"--user-data-dir={self._profile.name}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + self.timeout
        port = None
        while port is None and time.time() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError("chromium exited before opening its DevTools port")
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = int(match.group(1)) if match else None
        if port is None:
            raise TimeoutError("chromium did not open its DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")  # page errors arrive as Runtime.exceptionThrown events
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.ws.close()
        finally:
            self.process.kill()
            self.process.wait(timeout=30)
            self._profile.cleanup()

    def send(self, method: str, **params) -> dict:
        """One CDP command; returns its result (events in between are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def set_cookie(self, name: str, value: str, url: str) -> None:
        self.send("Network.setCookie", name=name, value=value, url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, what: str | None = None):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what or expression}")

    def click(self, selector: str, text: str | None = None) -> None:
        """Click the first element matching a CSS selector (and holding ``text``, when given)."""
        found = self.evaluate(
            f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => {json.dumps(text)} === null || e.innerText.includes({json.dumps(text)}));"
            " if (!e) return false; e.click(); return true; })()"
        )
        if not found:
            raise LookupError(f"nothing to click at {selector!r}" + (f" with text {text!r}" if text else ""))

    def mouse_click(self, selector: str, text: str | None = None, clicks: int = 1, timeout: float = 10.0) -> None:
        """Click (``clicks=2``: double-click) the middle of the first visible element matching a CSS selector (and
        holding ``text``) with the mouse, as a user does: menus that open on pointer events (Radix) need this rather
        than :meth:`click`.

        Like a user, it waits until the element has stopped moving (a menu that is still being placed or animated
        would take the click elsewhere) and is the element under the pointer (not covered by another one)."""
        where = (
            f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]"
            f".find(e => e.offsetParent !== null && ({json.dumps(text)} === null || e.innerText.includes({json.dumps(text)})));"
            " if (!e) return null; e.scrollIntoView({block: 'nearest'}); const r = e.getBoundingClientRect();"
            " const x = r.x + r.width / 2, y = r.y + r.height / 2; const hit = document.elementFromPoint(x, y);"
            " return [x, y, !!hit && (hit === e || e.contains(hit))]; })()"
        )
        deadline = time.time() + timeout
        previous = box = None
        while True:
            box = self.evaluate(where)
            if box and box[2] and box[:2] == previous:
                break
            if time.time() > deadline:
                target = f"{selector!r}" + (f" with text {text!r}" if text else "")
                if not box:
                    raise LookupError(f"nothing visible to click at {target}")
                raise LookupError(f"{target} is covered by another element or still moving after {timeout:g} s")
            previous = box[:2] if box else None
            time.sleep(0.1)
        x, y, _ = box
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for count in range(1, clicks + 1):
            self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=count)
            self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=count)

    def type_into(self, selector: str, text: str) -> None:
        """Replace the value of the first visible input matching ``selector`` as a user would: focus, select all, type
        (React sees real input events)."""
        if not self.evaluate(
            f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})].find(e => e.offsetParent !== null);"
            " if (!e) return false;"
            " e.focus(); e.select(); return true; })()"
        ):
            raise LookupError(f"no visible input at {selector!r}")
        self.send("Input.insertText", text=text)

    def requests(self, url_part: str) -> list[dict]:
        """``Network.requestWillBeSent`` events whose URL contains ``url_part``."""
        return [
            e["params"] for e in self.events if e["method"] == "Network.requestWillBeSent" and url_part in e["params"]["request"]["url"]
        ]

    def response_status(self, request_id: str) -> int | None:
        for e in self.events:
            if e["method"] == "Network.responseReceived" and e["params"]["requestId"] == request_id:
                return int(e["params"]["response"]["status"])
        return None

    def post_data(self, request_id: str) -> str:
        return self.send("Network.getRequestPostData", requestId=request_id).get("postData", "")

    def page_errors(self) -> list[str]:
        """JavaScript errors of the page so far, as their descriptions: uncaught exceptions (``Runtime.exceptionThrown``)
        and exceptions that a React error boundary caught (OHIF logs those as "Route ... Error Boundary", then shows
        "Something went wrong" instead of the viewer)."""
        self.evaluate("0")  # collect the events that arrived since the last command
        errors = []
        for e in self.events:
            if e["method"] == "Runtime.exceptionThrown":
                details = e["params"]["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            elif e["method"] == "Runtime.consoleAPICalled":
                texts = [str(a.get("value", a.get("description", ""))) for a in e["params"].get("args", [])]
                if texts and "Error Boundary" in texts[0]:
                    errors.append(" ".join(texts[:2]))
        return errors

    def throttle_cpu(self, rate: float) -> None:
        """Slow the page's CPU down ``rate`` times (1: no throttling), as on a busy machine."""
        self.send("Emulation.setCPUThrottlingRate", rate=rate)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path
