"""Drive `brainseg serve`'s page in headless Chromium over the DevTools protocol (CDP); a local server thread.

    python benchmarks/serve_browser.py -c RUN SCAN [--screenshot PNG]

Starts the server on 127.0.0.1 (a free port) in this process, opens the page in Debian's
``chromium`` (no browser download; ``--remote-debugging-port`` and a websocket), chooses SCAN in
the page's file input as a person would, waits for the overlay, and prints the page's own timings
(chosen → accepted → segmented → first overlay drawn). `Chromium` and `ServerThread` are what the
browser test (tests/serve/test_serve_browser.py) and benchmarks/serve_speed.py use.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--remote-allow-origins=*",
    "--window-size=1280,1100",
)


def _report_browser() -> Any:
    spec = importlib.util.spec_from_file_location("report_browser", Path(__file__).with_name("report_browser.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


find_chromium = _report_browser().find_chromium  # one search for the browser, shared with the report check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a background thread (a context manager)."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class Chromium:
    """One headless Chromium with one page, driven over CDP (a context manager)."""

    def __init__(self, exe: str | None = None, timeout: float = 60.0) -> None:
        self.exe = exe or find_chromium()
        if self.exe is None:
            raise RuntimeError("Chromium not found (apt-get install -y chromium)")
        self.timeout = timeout
        self._id = 0

    def __enter__(self) -> Chromium:
        import websocket

        self._tmp = tempfile.TemporaryDirectory(prefix="brainseg-cdp-", ignore_cleanup_errors=True)
        port = free_port()
        self.proc = subprocess.Popen(
            [self.exe, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={self._tmp.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() - t0 > self.timeout or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True)
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=1100, deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self._tmp.cleanup()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events met meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll `expression` until it is truthy; returns its value."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < (timeout or self.timeout):
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout or self.timeout} s for {expression}")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def choose_file(self, selector: str, path: str | Path) -> None:
        """Set a file input's file, as the file dialog would (fires its change event)."""
        doc = self.call("DOM.getDocument")
        node = self.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector=selector)
        self.call("DOM.setFileInputFiles", files=[str(Path(path).resolve())], nodeId=node["nodeId"])

    def rect(self, selector: str) -> dict[str, float]:
        return self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                         ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])


def open_scan(browser: Chromium, url: str, scan: str | Path, timeout: float = 60.0) -> dict[str, float]:
    """Open the page, choose `scan`, wait until the first overlay is drawn; the page's timings (ms)."""
    browser.goto(url + "/")
    browser.wait_for("document.getElementById('model-line').textContent.startsWith('model:')")
    browser.choose_file("#file", scan)
    browser.wait_for("document.body.dataset.state === 'error' || !!window.brainseg.times.firstOverlay", timeout)
    if browser.eval("document.body.dataset.state") == "error":
        message = browser.eval("document.getElementById('error').textContent")
        raise RuntimeError(f"the page says: {message}")
    t = browser.eval("window.brainseg.times")
    return {k: round(v - t["chosen"], 1) for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scan", help="a zip of a patient, a NIfTI volume or a slice")
    ap.add_argument("-c", "--checkpoint", action="append", required=True, help="checkpoint or run folder")
    ap.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the page with the overlay")
    ap.add_argument("--channel", type=int, default=1, help="channel to show (default 1: FLAIR)")
    args = ap.parse_args(argv)
    if find_chromium() is None:
        print("serve_browser: skipped — Chromium is not installed (apt-get install -y chromium)")
        return 0
    from brainseg.serve.app import create_app
    from brainseg.serve.jobs import JobStore
    from brainseg.serve.segment import Segmenter

    with tempfile.TemporaryDirectory(prefix="brainseg-serve-") as work:
        store = JobStore(Path(work), Segmenter(args.checkpoint))
        with ServerThread(create_app(store)) as srv, Chromium() as browser:
            times = open_scan(browser, srv.url, args.scan)
            print("page timings (ms since the file was chosen): " + ", ".join(f"{k} {v}" for k, v in times.items()))
            if args.screenshot:
                browser.eval("window.scrollTo(0, 0)")
                Path(args.screenshot).write_bytes(browser.screenshot())
                print(f"screenshot: {args.screenshot}")
        store.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
