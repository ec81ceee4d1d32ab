"""The HTML report in a real headless browser: Chromium opens it from disk, and every image must
load and nothing may log an error to the console.

Chromium is driven through the DevTools protocol (a websocket, ``websocket-client``) rather than
read from ``--dump-dom``, because only a live page can say whether an image decoded
(``naturalWidth``) and which console messages were errors. ``.ci/run`` installs Chromium from the
system packages where it is missing; without a binary the tests skip and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from tests.report_pages import markdown_html

#: Debian's chromium and chromium-headless-shell, Ubuntu's snap wrapper, Google's builds.
ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next(filter(None, map(shutil.which, BROWSERS)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); .ci/run installs the "
                            "Debian package chromium-headless-shell where apt can")
TIMEOUT_S = 60


class DevTools:
    """One page of a headless Chromium, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path):
        # No sandbox: the page is this project's own file, and Chromium's sandbox cannot start as
        # root or in most containers. No GPU and no /dev/shm: neither exists on a CI machine.
        self.log = profile.parent / "chromium.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        # Port 0: Chromium picks a free port and writes it to DevToolsActivePort (no race with other tests).
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{BROWSER} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        # suppress_origin: Chromium refuses DevTools connections that send an Origin header.
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=TIMEOUT_S,
                                                  suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def drain(self, quiet_s: float = 0.5) -> None:
        """Collect what arrives until nothing has for ``quiet_s`` (late console messages)."""
        self.socket.settimeout(quiet_s)
        try:
            while True:
                self.events.append(json.loads(self.socket.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.socket.settimeout(TIMEOUT_S)

    def close(self) -> None:
        """Stop the browser and every process it started. Debian's /usr/bin/chromium* are shell
        scripts that run the browser as a child: signalling the script alone would orphan it, so
        the whole session (its own process group, started above) is signalled."""
        if getattr(self, "socket", None):
            self.socket.close()
        group, deadline = self.process.pid, time.monotonic() + 10
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
            while time.monotonic() < deadline:  # until the group is empty (signal 0 only asks)
                self.process.poll()  # reaps the script, else it stays in the group as a zombie
                os.killpg(group, 0)
                time.sleep(0.05)
            os.killpg(group, signal.SIGKILL)
        self.process.wait()


def open_in_chromium(page: Path, profile: Path) -> tuple[list[dict], list[str]]:
    """Load ``page`` (a file) in headless Chromium; returns its images (src, complete,
    naturalWidth) once the load event fired, and every console error, uncaught exception and
    failed resource load, as text."""
    browser = DevTools(profile)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        navigation = browser.call("Page.navigate", url=page.resolve().as_uri())
        assert "errorText" not in navigation, navigation
        browser.wait_for("Page.loadEventFired")  # every <img> has loaded or failed by then
        images = browser.call("Runtime.evaluate", returnByValue=True, expression=(
            "Array.from(document.images, i => ({src: i.getAttribute('src'), complete: i.complete, "
            "naturalWidth: i.naturalWidth}))"))["result"]["value"]
        browser.drain()
    finally:
        browser.close()
    errors = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append("console." + params["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append("exception: " + details.get("exception", {}).get("description", details["text"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":  # e.g. an image not found
            errors.append(f"{params['entry']['source']}: {params['entry']['text']} {params['entry'].get('url', '')}")
    return images, errors


@pytest.mark.parametrize("which", ["rendered from the committed metrics", "committed"])
def test_the_report_loads_with_every_image_and_no_console_error(which, rendered_report, tmp_path):
    folder = rendered_report if which.startswith("rendered") else ROOT / "reports"
    images, errors = open_in_chromium(folder / "index.html", tmp_path / "profile")
    assert errors == []
    expected = sorted([*(f"figures/{p.name}" for p in (folder / "figures").glob("*.png")), "tuning/noise_sweep.png"])
    assert sorted(i["src"] for i in images) == expected
    assert [i for i in images if not (i["complete"] and i["naturalWidth"] > 0)] == []


def test_readme_images_load_from_where_the_readme_is(rendered_report, tmp_path):
    """README.md rendered to HTML beside it, as a repository browser shows it: its relative image
    links resolve from the reports folder."""
    page = tmp_path / "README.html"  # <base>: links resolve from the reports folder, as on GitHub
    page.write_text(f"<!doctype html><meta charset='utf-8'><base href='{rendered_report.as_uri()}/'>"
                    + markdown_html((rendered_report / "README.md").read_text()))
    images, errors = open_in_chromium(page, tmp_path / "profile")
    assert errors == [] and len(images) >= 8
    assert [i for i in images if not (i["complete"] and i["naturalWidth"] > 0)] == []


def test_the_check_catches_a_broken_image_and_console_errors(rendered_report, tmp_path):
    """The check can fail: the same report with one figure gone and a script that logs an error and
    throws shows a broken image and all three errors."""
    broken = tmp_path / "report"
    shutil.copytree(rendered_report, broken)
    (broken / "figures" / "fig4_left.png").unlink()
    page = broken / "index.html"
    page.write_text(page.read_text().replace("</body>", "<script>console.error('planted'); no_such();</script></body>"))
    images, errors = open_in_chromium(page, tmp_path / "profile")
    assert [i["src"] for i in images if i["naturalWidth"] == 0] == ["figures/fig4_left.png"]
    assert len(errors) == 3, errors
    assert any("ERR_FILE_NOT_FOUND" in e and "fig4_left.png" in e for e in errors), errors
    assert "console.error: planted" in errors and any("no_such is not defined" in e for e in errors), errors
