"""Helpers for tests/test_serve.py and bench/serve_load.py: tiny runs to serve, and a real server process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

IMAGE_SPEC = """\
kspec: 1
name: shades
seed: 0
data:
  source: {images: %(path)s}
  split: {validation: 0.25}
model:
  inputs:
    img: {shape: [8, 8, 3]}
  layers:
    - Rescaling: {scale: 0.00392156862745098}
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
    - Flatten: {}
    - Dense: {units: 2, activation: softmax}
      name: shade
  outputs: [shade]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  batch_size: 4
  epochs: 1
"""

MULTI_SPEC = """\
kspec: 1
name: two-in
seed: 0
data:
  source: {npz: %(path)s}
  split: {validation: 0.25}
model:
  inputs:
    a: {shape: [3]}
    b: {shape: [2, 2]}
  layers:
    - Flatten: {}
      name: b_flat
      inputs: [b]
    - Concatenate: {}
      name: both
      inputs: [a, b_flat]
    - Dense: {units: 3, activation: softmax}
      name: kind
      inputs: [both]
    - Dense: {units: 1}
      name: size
      inputs: [both]
  outputs: [kind, size]
train:
  optimizer: adam
  loss: {kind: sparse_categorical_crossentropy, size: mse}
  batch_size: 8
  epochs: 1
"""


def write_images(root: Path, size=(12, 10), per_class: int = 4) -> Path:
    """Two classes of flat-colour PNGs (dark, light), larger than the model's 8x8: resizing matters."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = 40 + 150 * k
            pixels = np.clip(base + rng.integers(-30, 30, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def write_multi(path: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(n, 2, 2)).astype(np.float32)
    np.savez(path, a=a, b=b, kind=rng.integers(0, 3, n), size=rng.normal(size=(n, 1)).astype(np.float32))
    return path


def kspec_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "compiler", *map(str, args)]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")


def train_runs(root: Path, which=("iris", "images", "multi"), epochs: int = 2) -> dict[str, Path]:
    """Train the tiny runs side by side (separate `kspec train` processes); name -> run directory."""
    jobs = {}
    for name in which:
        run = root / f"run-{name}"
        if name == "iris":
            args = ["train", ROOT / "examples" / "iris_mlp.yaml", "--set", f"train.epochs={epochs}"]
        elif name == "digits":
            args = ["train", ROOT / "examples" / "digits_cnn.yaml", "--set", f"train.epochs={epochs}"]
        elif name == "images":
            spec = root / "shades.yaml"
            spec.write_text(IMAGE_SPEC % {"path": write_images(root / "shades")})
            args = ["train", spec]
        else:
            spec = root / "two_in.yaml"
            spec.write_text(MULTI_SPEC % {"path": write_multi(root / "two_in.npz")})
            args = ["train", spec]
        jobs[name] = (run, subprocess.Popen(kspec_cmd(*args, "--run-dir", run, "--verbose", "0"), cwd=root,
                                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for name, (run, proc) in jobs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"training {name} failed:\n{out}"
    return {name: run for name, (run, _) in jobs.items()}


class Server:
    """`kspec serve RUN --port 0 ...` as a real process; `url` once it listens."""

    def __init__(self, run: Path, *args: str):
        self.proc = subprocess.Popen(kspec_cmd("serve", run, "--port", "0", *args), env=env(), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            found = re.search(r"on (http://\S+?)/ ", line)
            if found:
                self.url = found.group(1)
                self._listening.set()

    def listening(self, timeout: float = 120) -> str:
        if not self._listening.wait(timeout):
            raise AssertionError(f"the server did not start: {''.join(self.lines + self.errors)}")
        return self.url

    def ready(self, timeout: float = 180) -> str:
        import httpx

        url = self.listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}): {''.join(self.errors)}")
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not become ready")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
