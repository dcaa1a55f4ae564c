"""Does `kspec train` train as fast as the same model written by hand?

One run trains the same CNN twice, each in its own fresh Python process, timed end
to end from outside (interpreter start to exit):

  (a) `kspec train SPEC --run-dir ...` on an NPZ file this script writes;
  (b) a hand-written Keras script: the same data, the same layers, `model.fit`
      with batch 128, then what any script that reports its result does: evaluate
      on the training data and save the model (kspec evaluates each split for
      metrics.json and saves model.keras).

Data: 10,000 synthetic 28x28x1 images from a fixed numpy seed, 10 classes (no
split: both train on all of it). Model: Conv2D 32 3x3 relu, MaxPool, Conv2D 64 3x3
relu, MaxPool, Flatten, Dense 128 relu, Dense 10 softmax; Adam; 3 epochs.

Reported:
- end-to-end wall time ratio kspec / hand (target <= 1.15);
- steady-state samples/s ratio kspec / hand over epochs 2-3 (target >= 0.95), from
  each script's own per-epoch timings (kspec: history.csv's epoch_seconds; hand:
  the same measurement by a callback), and, as a cross-check that includes
  everything between epochs (kspec's checkpoints, history and TensorBoard writes),
  from the arrival times of each script's per-epoch output lines.

    .venv/bin/python bench/train_speed.py [--epochs 3] [--repeat 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N, CLASSES, BATCH = 10_000, 10, 128

SPEC = """\
# written by bench/train_speed.py
kspec: 1
name: bench-cnn
seed: 0
data:
  source: {npz: %(npz)s}
model:
  inputs:
    image: {shape: [28, 28, 1]}
  layers:
    - Conv2D: {filters: 32, kernel_size: 3, activation: relu}
    - MaxPooling2D: {}
    - Conv2D: {filters: 64, kernel_size: 3, activation: relu}
    - MaxPooling2D: {}
    - Flatten: {}
    - Dense: {units: 128, activation: relu}
    - Dense: {units: 10, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: %(batch)d
  epochs: %(epochs)d
"""

HAND = '''\
import sys, time
import numpy as np
import keras
from keras import layers

npz, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
with np.load(npz) as data:
    x, y = data["x"], data["y"]
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((28, 28, 1)),
    layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Conv2D(64, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Flatten(),
    layers.Dense(128, activation="relu"),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1}/{epochs}  loss {logs['loss']:.4f}  "
              f"{time.perf_counter() - self.start:.4f}s", flush=True)


model.fit(x, y, batch_size=%(batch)d, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
print("train:", model.evaluate(x, y, batch_size=%(batch)d, verbose=0, return_dict=True), flush=True)
model.save(out)
'''


def make_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, N).astype(np.int32)
    # Weakly learnable images: a class-dependent blob on noise (the speed does not depend on it).
    x = rng.random((N, 28, 28, 1), dtype=np.float32) * 0.5
    rows = (y % 5) * 5 + 2
    cols = (y // 5) * 12 + 4
    for i in range(N):
        x[i, rows[i]:rows[i] + 5, cols[i]:cols[i] + 8, 0] += 0.5
    np.savez(path, x=x, y=y)


def timed(cmd: list[str], cwd: Path) -> tuple[float, list[float], str]:
    """Run `cmd`; return (wall seconds, arrival time of each `epoch ...` stdout line, stdout)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arrivals, lines = [], []
    for line in process.stdout:
        if line.startswith("epoch "):
            arrivals.append(time.perf_counter() - start)
        lines.append(line)
    stderr = process.stderr.read()
    process.wait()
    wall = time.perf_counter() - start
    if process.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {process.returncode}):\n{''.join(lines)}\n{stderr}")
    return wall, arrivals, "".join(lines)


def own_epoch_seconds_kspec(run: Path) -> list[float]:
    with open(run / "history.csv", newline="") as f:
        return [float(r["epoch_seconds"]) for r in csv.DictReader(f)]


def own_epoch_seconds_hand(stdout: str) -> list[float]:
    return [float(l.rsplit(None, 1)[-1].rstrip("s")) for l in stdout.splitlines() if l.startswith("epoch ")]


def steady(seconds: list[float]) -> float:
    """samples/s over epochs 2.. (the first epoch traces and warms up)."""
    later = seconds[1:]
    return N * len(later) / sum(later)


def intervals(arrivals: list[float]) -> list[float]:
    return [b - a for a, b in zip(arrivals, arrivals[1:])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (medians reported)")
    p.add_argument("--keep", metavar="DIR", help="keep the data, spec and runs in DIR")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the steady state excludes the first epoch)")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kspec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    npz, spec, hand = work / "images.npz", work / "bench.yaml", work / "hand.py"
    make_data(npz)
    spec.write_text(SPEC % {"npz": npz, "batch": BATCH, "epochs": args.epochs})
    hand.write_text(HAND % {"batch": BATCH})

    results = {"kspec": [], "hand": []}
    for r in range(args.repeat):
        run = work / f"run-{r}"
        wall, arrivals, _ = timed([sys.executable, "-m", "compiler", "train", str(spec), "--run-dir", str(run),
                                   "--verbose", "2"], ROOT)
        results["kspec"].append((wall, own_epoch_seconds_kspec(run), arrivals))
        wall, arrivals, out = timed([sys.executable, str(hand), str(npz), str(work / f"hand-{r}.keras"),
                                     str(args.epochs)], work)
        results["hand"].append((wall, own_epoch_seconds_hand(out), arrivals))

    def med(values):
        return statistics.median(values)

    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "wall": med([w for w, _, _ in runs]),
            "steady": med([steady(s) for _, s, _ in runs]),
            "steady_lines": med([N / statistics.mean(intervals(a)) for _, _, a in runs]),
            "epochs": [round(x, 2) for x in runs[len(runs) // 2][1]],
        }
    k, h = summary["kspec"], summary["hand"]
    print(f"CNN on {N:,} synthetic 28x28x1 images, batch {BATCH}, {args.epochs} epochs, "
          f"{args.repeat} run(s) each, {os.cpu_count()} CPU(s)")
    print(f"{'':24}{'kspec':>12}{'hand':>12}{'ratio':>9}  target")
    print(f"{'end-to-end wall (s)':24}{k['wall']:12.2f}{h['wall']:12.2f}{k['wall'] / h['wall']:9.3f}  <= 1.15")
    print(f"{'steady samples/s':24}{k['steady']:12.0f}{h['steady']:12.0f}{k['steady'] / h['steady']:9.3f}  >= 0.95"
          "   (epochs 2.., each script's own epoch timings)")
    print(f"{'  incl. between epochs':24}{k['steady_lines']:12.0f}{h['steady_lines']:12.0f}"
          f"{k['steady_lines'] / h['steady_lines']:9.3f}           (from output line arrival times)")
    print(f"{'epoch seconds (median run)':28}kspec {k['epochs']}  hand {h['epochs']}")
    for name, runs in results.items():
        print(f"  {name:6} runs: wall " + ", ".join(f"{w:.1f}" for w, _, _ in runs)
              + "; steady samples/s " + ", ".join(f"{steady(s):.0f}" for _, s, _ in runs))
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine skews every number)")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
