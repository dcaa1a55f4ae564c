"""A real headless Chromium driven over the DevTools protocol (a websocket): open a page, run
JavaScript in it, pick a file in a file input. For tests/test_serve.py's page test."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*"]


class Browser:
    def __init__(self, executable: str, profile: Path | None = None, timeout: float = 60):
        self.executable, self.timeout = executable, timeout
        self.profile = Path(profile or tempfile.mkdtemp(prefix="kspec-chromium-"))
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._id = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Browser":
        from websockets.sync.client import connect

        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found: dict = {}
        done = threading.Event()

        def read():
            for line in self.proc.stderr:
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    found["ws"] = m.group(1)
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(self.timeout) or "ws" not in found:
            self.close()
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        with connect(found["ws"], max_size=None, open_timeout=self.timeout) as browser:
            target = self._call(browser, "Target.createTarget", {"url": "about:blank"})["targetId"]
        port = re.search(r":(\d+)/", found["ws"]).group(1)
        self.ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}/devtools/page/{target}", max_size=None, open_timeout=self.timeout))
        self.send("Runtime.enable")
        self.send("DOM.enable")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _call(self, ws, method: str, params: dict | None = None) -> dict:
        self._id += 1
        ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(ws.recv(timeout=self.timeout))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self._call(self.ws, method, params)

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'")

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait(self, condition: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            if self.eval(f"Boolean({condition})"):
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {condition}; page text: {self.eval('document.body.innerText')}")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path)]})
