"""
Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol on a pipe, for the status page's tests.

``--remote-debugging-pipe`` makes Chromium read DevTools commands from fd 3 and write replies and events to fd 4,
each a JSON text ended by a NUL byte: no port, no websocket, nothing to discover.  Every wait has a deadline
(L{Browser.call}, L{Page.waitFor}); the browser is stopped by its PID at the end, whatever happened.

    with Browser() as browser:
        page = browser.open("http://127.0.0.1:9901/")
        page.waitFor("document.body.dataset.updates >= 2", timeout=10)
        assert page.problems() == []   # console errors, uncaught exceptions, failed loads
"""

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BASH = shutil.which("bash") or "/bin/bash"


class BrowserError(Exception):
    """The browser did not answer in time, exited, or a DevTools command failed."""


class Browser:
    """One headless Chromium process with a fresh profile; a context manager that always stops it."""

    def __init__(self, width=1280, height=800, timeout=20.0):
        self.timeout = timeout
        self.events = []  # DevTools events as they came: {"method", "params", "sessionId"}
        self._nextId = 0
        self._buffer = b""
        self._profile = tempfile.mkdtemp(prefix="txmesh-chromium-")
        commandsRead, self._commands = os.pipe()
        self._replies, repliesWrite = os.pipe()
        # above 9, so that putting them on 3 and 4 cannot overwrite one with the other (pytest's capture holds
        # low fds: a pipe end may itself be 3 or 4)
        commandsRead, repliesWrite = self._high(commandsRead), self._high(repliesWrite)
        args = [CHROMIUM, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--mute-audio",
                "--user-data-dir=" + self._profile, "--window-size=%d,%d" % (width, height), "about:blank"]
        # fd 3 and fd 4 of the child are the two pipe ends (bash puts them there before exec: dash's redirections
        # take one-digit fds only)
        self._proc = subprocess.Popen(
            [BASH, "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (commandsRead, repliesWrite)] + args,
            pass_fds=(commandsRead, repliesWrite), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(commandsRead)
        os.close(repliesWrite)

    @staticmethod
    def _high(fd):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Ask the browser to close, then end it by PID if it is still there; remove its profile."""
        try:
            if self._proc.poll() is None:
                try:
                    self.call("Browser.close", timeout=3)
                except (BrowserError, OSError):
                    pass
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(5)
        finally:
            for fd in (self._commands, self._replies):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method, params=None, sessionId=None, timeout=None):
        """Send one command and return its result; events that arrive meanwhile go to ``events``."""
        self._nextId += 1
        message = {"id": self._nextId, "method": method, "params": params or {}}
        if sessionId:
            message["sessionId"] = sessionId
        os.write(self._commands, json.dumps(message).encode("utf-8") + b"\0")
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self._nextId:
                    if "error" in reply:
                        raise BrowserError("%s failed: %s" % (method, reply["error"]))
                    return reply.get("result", {})

    def pump(self, seconds):
        """Collect the events of the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read(deadline, untilDeadline=True)

    def _read(self, deadline, untilDeadline=False):
        """The replies (messages with an id) read before ``deadline``; events are kept in ``events``."""
        replies = []
        while not replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if untilDeadline:
                    return replies
                raise BrowserError("no answer from chromium in time")
            ready, _, _ = select.select([self._replies], [], [], remaining)
            if not ready:
                continue
            data = os.read(self._replies, 1 << 20)
            if not data:
                raise BrowserError("chromium exited (code %r)" % (self._proc.poll(),))
            self._buffer += data
            while b"\0" in self._buffer:
                text, _, self._buffer = self._buffer.partition(b"\0")
                message = json.loads(text)
                if "id" in message:
                    replies.append(message)
                else:
                    self.events.append(message)
            if untilDeadline:
                return replies
        return replies

    def open(self, url, width=1280, height=800):
        """A new tab on ``url`` with console, log and page events on, once its load event fired: a L{Page}."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(domain + ".enable")
        page.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page.call("Page.navigate", {"url": url})
        page.waitForEvent("Page.loadEventFired")
        return page


class Page:
    """One tab of a L{Browser}, attached by a flat DevTools session."""

    def __init__(self, browser, sessionId):
        self.browser = browser
        self.sessionId = sessionId

    def call(self, method, params=None, timeout=None):
        return self.browser.call(method, params, self.sessionId, timeout)

    def _events(self):
        return [e for e in self.browser.events if e.get("sessionId") == self.sessionId]

    def waitForEvent(self, method, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not any(e["method"] == method for e in self._events()):
            if time.monotonic() >= deadline:
                raise BrowserError("no %s within %.0f s" % (method, timeout))
            self.browser.pump(min(0.2, deadline - time.monotonic()))

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError("%s raised %s" % (expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def waitFor(self, expression, timeout=10.0, interval=0.1):
        """Poll ``expression`` until it is truthy; return its value.  @raise BrowserError: not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError("%r still false after %.0f s" % (expression, timeout))
            self.browser.pump(interval)

    def problems(self):
        """What a developer console would show in red: console errors, uncaught exceptions, failed requests."""
        out = []
        for e in self._events():
            method, params = e["method"], e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console.%s: %s" % (params["type"], [a.get("value", a.get("description"))
                                                                   for a in params.get("args", ())]))
            elif method == "Runtime.exceptionThrown":
                out.append("exception: %s" % (params.get("exceptionDetails", {}).get("text"),))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append("log (%s): %s %s" % (entry.get("source"), entry.get("text"), entry.get("url", "")))
            elif method == "Network.loadingFailed":
                out.append("load failed: %s" % (params.get("errorText"),))
            elif method == "Network.responseReceived" and params.get("response", {}).get("status", 200) >= 400:
                out.append("HTTP %d: %s" % (params["response"]["status"], params["response"].get("url")))
        return out

    def screenshot(self, path):
        """Save a PNG of the page as it is now."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
