"""Does `kspec train` stream a big CSV file as fast, in as little memory, as a hand-written tf.data pipeline?

One run writes a numeric CSV (ROWS rows x 20 feature columns + a 3-class label, unquoted;
kept in --keep DIR for the next run) and trains the same MLP on it twice, each in its own
fresh process, timed from outside, peak RSS from `os.wait4`:

  (a) `kspec train` on `{csv: FILE, target: label, stream: true}` (blocks of lines parsed by
      tf.io.decode_csv, shuffled by block and within each block, rebatched);
  (b) by hand, as TensorFlow's CSV guide advises for speed: `TextLineDataset(FILE).skip(1)`,
      `shuffle(16384)` of the lines, `batch(1024)`, a map of `tf.io.decode_csv` over the whole
      batch that stacks the columns, `prefetch`; `fit`.

Both: batch 1024, EPOCHS epochs, no held-out split. Reported: rows/s of the training
epochs (kspec: metrics.json's samples_per_second; hand: the same from a callback's epoch
times), the end-to-end wall ratio and the peak RSS of each.

    .venv/bin/python bench/csv_stream.py [--rows 5000000] [--epochs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 20

SPEC = """\
kspec: 1
name: bench-csv
seed: 0
data:
  source: {csv: %(csv)s, target: label, stream: true}
model:
  inputs:
    x: {shape: [%(cols)d]}
  layers:
    - Dense: {units: 64, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  batch_size: 1024
  epochs: %(epochs)d
"""

HAND = """\
import json, sys, time
import keras
import tensorflow as tf

path, cols, epochs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keras.utils.set_random_seed(0)
defaults = [tf.constant([], tf.float32)] * cols + [tf.constant([], tf.int32)]


def parse(lines):
    columns = tf.io.decode_csv(lines, defaults)
    return tf.stack(columns[:-1], axis=1), columns[-1]


ds = tf.data.TextLineDataset(path).skip(1).shuffle(16384, seed=0).batch(1024)
ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
inputs = keras.Input((cols,))
x = keras.layers.Dense(64, activation="relu")(inputs)
model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
model.compile("adam", "sparse_categorical_crossentropy")


class Times(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds.append(time.perf_counter() - self.t)


seconds = []
model.fit(ds, epochs=epochs, verbose=0, callbacks=[Times()])
model.save(out + ".keras")
json.dump({"seconds": seconds}, open(out, "w"))
"""


def write_csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(COLUMNS, 3))
    with open(path, "w") as fh:
        fh.write(",".join([f"f{i}" for i in range(COLUMNS)] + ["label"]) + "\n")
        for start in range(0, rows, 100_000):
            x = rng.normal(size=(min(100_000, rows - start), COLUMNS)).astype(np.float32)
            y = np.argmax(x @ w, axis=1)
            lines = [",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(x, y)]
            fh.write("\n".join(lines) + "\n")


def run(cmd: list[str]) -> tuple[float, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "kspec-bench-csv",
                        help="where the generated CSV is kept between runs (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work, scratch = args.keep, Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv = work / f"numbers_{args.rows}.csv"
        if not csv.exists():
            write_csv(work / f"numbers_{args.rows}.partial", args.rows)
            os.replace(work / f"numbers_{args.rows}.partial", csv)
        size = csv.stat().st_size / 2 ** 20
        spec = scratch / "csv.yaml"
        spec.write_text(SPEC % {"csv": csv, "cols": COLUMNS, "epochs": args.epochs})
        (scratch / "hand.py").write_text(HAND)
        tag = time.monotonic_ns()
        run_dir = scratch / f"run_{tag}"
        k = run([sys.executable, "-m", "compiler", "train", str(spec), "--run-dir", str(run_dir), "--verbose", "0"])
        h = run([sys.executable, str(scratch / "hand.py"), str(csv), str(COLUMNS), str(args.epochs),
                 str(scratch / f"hand_{tag}.json")])
        k_rate = json.loads((run_dir / "metrics.json").read_text())["samples_per_second"]
        h_rate = args.rows * args.epochs / sum(json.loads((scratch / f"hand_{tag}.json").read_text())["seconds"])
    print(f"CSV {args.rows:,} rows x {COLUMNS} columns ({size:.0f} MB), {args.epochs} epochs, batch 1024")
    print(f"rows/s     kspec {k_rate:10,.0f}  hand {h_rate:10,.0f}  ratio {k_rate / h_rate:.2f} (target >= 1.0)")
    print(f"wall       kspec {k[0]:8.1f} s  hand {h[0]:8.1f} s  ratio {k[0] / h[0]:.2f}")
    print(f"peak RSS   kspec {k[1]:8.0f} MB hand {h[1]:8.0f} MB ratio {k[1] / h[1]:.2f} (kspec target < 2048 MB)")


if __name__ == "__main__":
    main()
