"""The report in a real browser: headless Chromium opens index.html via file:// at a phone and a
desktop width; every image loads, nothing is logged as an error, nothing is fetched from outside,
the page does not overflow sideways on a phone; a full-page screenshot is saved for a human to look
at (into tmp_path and /tmp/resnet-cifar-report-screens/).

Chromium is driven over the DevTools protocol on --remote-debugging-pipe (fd 3 in, fd 4 out,
NUL-separated JSON), which needs only the standard library: no selenium, no websocket client.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from report_helpers import make_run_dir
from resnet_cifar.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOT_DIR = Path("/tmp/resnet-cifar-report-screens")
TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
              "os.execv(sys.argv[3], sys.argv[3:])")
VIEWPORTS = {"phone": (390, 844, True), "desktop": (1280, 900, False)}


def _browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, exe: str, profile: Path, log: Path, timeout: float = 30.0):
        self.timeout = timeout
        self.log = log
        cmd_r, self._cmd_w = os.pipe()    # we write commands, Chromium reads them on fd 3
        self._res_r, res_w = os.pipe()    # Chromium writes replies and events on fd 4
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        # A tiny Python trampoline moves the pipe ends to fds 3 and 4 and execs Chromium (no
        # preexec_fn, which is unsafe with threads; no sh, whose dash cannot redirect fds >= 10).
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(cmd_r), str(res_w), *args],
            pass_fds=(cmd_r, res_w), stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT)
        os.close(cmd_r)
        os.close(res_w)
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._res_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._messages.put(None)
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                self._messages.put(json.loads(m))

    def _next(self, deadline: float, what: str) -> dict:
        try:
            msg = self._messages.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {what} in {self.timeout}s; its log:\n"
                                 + self.log.read_text(errors="replace")[-2000:]) from None
        if msg is None:
            raise AssertionError(f"Chromium closed the pipe while waiting for {what}; its log:\n"
                                 + self.log.read_text(errors="replace")[-2000:])
        return msg

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._next(deadline, method)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)

    def close(self):
        try:
            self.send("Browser.close")
        except AssertionError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        self._log_file.close()


CHECK_JS = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  title: document.title,
})"""


def _problems(events) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                out.append(f"external request: {url}")
    return out


@pytest.mark.slow
def test_report_in_headless_chromium(tmp_path):
    exe = _browser()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; "
                    "scripts/test.sh installs it when run as root)")
    run, images = make_run_dir(tmp_path / "run")
    index = build_report(run, images=images)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    tools = DevTools(exe, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        for name, (width, height, mobile) in VIEWPORTS.items():
            tools.send("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
                       session=session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": index.resolve().as_uri()}, session=session)
            tools.wait_for("Page.loadEventFired")
            page = json.loads(tools.send("Runtime.evaluate", {"expression": CHECK_JS, "returnByValue": True},
                                         session=session)["result"]["value"])
            size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = tools.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
                session=session)
            png = base64.b64decode(shot["data"])
            (tmp_path / f"report-{name}.png").write_bytes(png)
            (SCREENSHOT_DIR / f"report-{name}.png").write_bytes(png)

            assert page["title"].startswith("Run report")
            assert len(page["images"]) == 7
            broken = [i["alt"] for i in page["images"] if not (i["complete"] and i["width"] > 0)]
            assert not broken, f"{name}: images not loaded: {broken}"
            assert page["scrollWidth"] <= page["innerWidth"], (
                f"{name}: the page is {page['scrollWidth']}px wide in a {page['innerWidth']}px viewport")
            problems = _problems(tools.events)
            assert not problems, f"{name}: {problems}"
            with Image.open(tmp_path / f"report-{name}.png") as im:
                assert im.size[0] == width and im.size[1] > height  # the whole page, not one screen
    finally:
        tools.close()
