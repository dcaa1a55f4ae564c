"""Does `kspec train` with its defaults train as fast as the same model written by hand, and how close
to the machine's limit?

Three cases, each trained by (a) `kspec train SPEC` with kspec's defaults (so `mixed_precision: auto`,
the checkpoint policy, TensorBoard, plots, diagnosis...) and (b) a hand-written Keras script as a user
writes it: float32, numpy arrays into `model.fit`, then evaluate and save. Each run is a fresh Python
process timed from outside (interpreter start to exit); kspec and hand alternate, --repeat times,
and medians are reported, because the machine is shared:

- cnn: 10,000 synthetic 28x28x1 images, Conv2D 32 / MaxPool / Conv2D 64 / MaxPool / Dense 128 / 10;
- mobilenet: 2,000 synthetic 64x64x3 images, a MobileNetV3Small (weights: null, pooling avg) + Dense 10;
- iris: examples/iris_mlp.yaml as shipped (50 epochs), the hand version loading iris with scikit-learn.

Reported per case: end-to-end wall ratio kspec / hand; steady-state samples/s (epochs 2.., each
script's own epoch timings) ratio; the dtype policy kspec chose; kspec's achieved training GFLOP/s
(3 x the forward FLOPs of the convolutions and dense layers, counted from the saved model, times
samples/s) and its share of the matmul peak measured here (tf.linalg.matmul 4096^3 in float32 and
bfloat16); and the start-up: seconds from process start to the end of the first training step
(kspec: metrics.json's first_step_seconds), against the seconds from process start to the end of a
bare `import tensorflow, keras`, measured alternately in the same run.

Goals (issue 16): steady state >= 1.7x hand on the cnn; end to end <= 0.9x hand on the cnn and on
iris; first step <= TensorFlow import + 1.0 s on iris.

    PYTHONPATH=$PWD .venv/bin/python bench/train_speed.py [--repeat 3] [--only cnn] [--epochs 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10

CNN_LAYERS = """\
    - Conv2D: {filters: 32, kernel_size: 3, activation: relu}
    - MaxPooling2D: {}
    - Conv2D: {filters: 64, kernel_size: 3, activation: relu}
    - MaxPooling2D: {}
    - Flatten: {}
    - Dense: {units: 128, activation: relu}
"""
MOBILENET_LAYERS = """\
    - Backbone: {application: MobileNetV3Small, weights: null, include_top: false, pooling: avg}
"""
SPEC = """\
# written by bench/train_speed.py
kspec: 1
name: bench-%(name)s
seed: 0
data:
  source: {npz: %(npz)s}
model:
  inputs:
    image: {shape: %(shape)s}
  layers:
%(layers)s    - Dense: {units: 10, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: %(batch)d
  epochs: %(epochs)d
"""

HAND_MODELS = {
    "cnn": """[
    keras.Input((28, 28, 1)),
    layers.Conv2D(32, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Conv2D(64, 3, activation="relu"),
    layers.MaxPooling2D(),
    layers.Flatten(),
    layers.Dense(128, activation="relu"),
    layers.Dense(10, activation="softmax"),
]""",
    "mobilenet": """[
    keras.Input((64, 64, 3)),
    keras.applications.MobileNetV3Small(input_shape=(64, 64, 3), include_top=False, weights=None, pooling="avg"),
    layers.Dense(10, activation="softmax"),
]""",
}

HAND_IMAGES = '''\
import sys, time
T0 = time.time()
import numpy as np
import keras
from keras import layers

npz, out, epochs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with np.load(npz) as data:
    x, y = data["x"], data["y"]
keras.utils.set_random_seed(0)
model = keras.Sequential(%(model)s)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
%(timer)s
model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[Timer()])
print("train:", model.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True), flush=True)
model.save(out)
'''

HAND_IRIS = '''\
import sys, time
T0 = time.time()
import numpy as np
import keras
from keras import layers
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

out, epochs, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x, y = load_iris(return_X_y=True)
x = x.astype("float32")
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.25, stratify=y_train,
                                                  random_state=0)
mean, std = x_train.mean(0), x_train.std(0)
x_train, x_val, x_test = [(a - mean) / std for a in (x_train, x_val, x_test)]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), layers.Dense(16, activation="relu"),
                          layers.Dense(16, activation="relu"), layers.Dense(3, activation="softmax")])
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
%(timer)s
model.fit(x_train, y_train, validation_data=(x_val, y_val), batch_size=batch, epochs=epochs, verbose=0,
          callbacks=[Timer()])
print("test:", model.evaluate(x_test, y_test, verbose=0, return_dict=True), flush=True)
model.save(out)
'''

TIMER = '''\
class Timer(keras.callbacks.Callback):
    first = None

    def on_train_batch_end(self, batch, logs=None):
        if Timer.first is None:
            Timer.first = time.time()
            print(f"first_step_at {Timer.first}", flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1}/{epochs}  {time.perf_counter() - self.start:.4f}s", flush=True)
'''

CASES = {
    # name: (samples, image shape or None, batch, default epochs)
    "cnn": (10_000, (28, 28, 1), 128, 4),
    "mobilenet": (2_000, (64, 64, 3), 64, 3),
    "iris": (90, None, 16, 50),
}


def make_images(path: Path, n: int, shape: tuple[int, ...]) -> None:
    """Weakly learnable images: a class-dependent bright patch on noise (the speed does not depend on it)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = rng.random((n, *shape), dtype=np.float32) * 0.5
    h, w = shape[0], shape[1]
    rows, cols = (y % 5) * (h // 6) + 1, (y // 5) * (w // 2) + 2
    for i in range(n):
        x[i, rows[i]:rows[i] + h // 6, cols[i]:cols[i] + w // 4, ...] += 0.5
    if shape[-1] == 3:
        x *= 255.0                  # MobileNetV3 rescales 0..255 itself
    np.savez(path, x=x, y=y)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run `cmd`; return (wall seconds, the Unix time it was started, stdout)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    launched = time.time()
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return wall, launched, result.stdout


def steady(seconds: list[float], n: int) -> float:
    """samples/s over epochs 2.. (the first epoch traces and warms up)."""
    later = seconds[1:]
    return n * len(later) / sum(later)


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the convolutions and dense layers for one example (nested models included)."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
            continue
        name = type(layer).__name__
        try:
            out = layer.output.shape
            inp = layer.input.shape
        except (AttributeError, ValueError):
            continue
        if name in ("Conv2D", "Conv1D"):
            k = int(np.prod(layer.kernel_size))
            total += 2.0 * np.prod(out[1:]) * k * inp[-1] / layer.groups
        elif name == "DepthwiseConv2D":
            total += 2.0 * np.prod(out[1:]) * int(np.prod(layer.kernel_size))
        elif name == "Dense":
            total += 2.0 * np.prod(out[1:]) * inp[-1]
    return float(total)


def matmul_peak(dtype: str, n: int = 4096, seconds: float = 2.0) -> float:
    """GFLOP/s of tf.linalg.matmul on n x n matrices (best of a few timed repetitions)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    b = tf.identity(a)
    (a @ b).numpy()
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        (a @ b).numpy()
        took = time.perf_counter() - start
        spent += took
        best = max(best, 2.0 * n ** 3 / took / 1e9)
    return best


def run_case(name: str, work: Path, repeat: int, epochs: int | None) -> dict:
    n, shape, batch, default_epochs = CASES[name]
    epochs = epochs or default_epochs
    hand = work / f"hand_{name}.py"
    if name == "iris":
        spec, data = ROOT / "examples" / "iris_mlp.yaml", "-"
        hand.write_text(HAND_IRIS % {"timer": TIMER})
        overrides = ["--set", f"train.epochs={epochs}"]
    else:
        data = work / f"{name}.npz"
        make_images(data, n, shape)
        spec = work / f"{name}.yaml"
        spec.write_text(SPEC % {"name": name, "npz": data, "shape": list(shape), "batch": batch, "epochs": epochs,
                                "layers": CNN_LAYERS if name == "cnn" else MOBILENET_LAYERS})
        hand.write_text(HAND_IMAGES % {"model": HAND_MODELS[name], "timer": TIMER})
        overrides = []
    out: dict = {"kspec": [], "hand": [], "import": [], "epochs": epochs, "n": n}
    for r in range(repeat):
        run = work / f"run-{name}-{r}"
        wall, _, _ = timed([sys.executable, "-m", "compiler", "train", str(spec), "--run-dir", str(run),
                            "--verbose", "0", *overrides], ROOT)
        metrics = json.loads((run / "metrics.json").read_text())
        with open(run / "history.csv", newline="") as f:
            seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
        out["kspec"].append({"wall": wall, "steady": steady(seconds, n), "first": metrics.get("first_step_seconds"),
                             "precision": metrics.get("precision", {}).get("policy"), "run": run})
        wall, launched, stdout = timed([sys.executable, str(hand), str(data), str(work / f"hand-{name}-{r}.keras"),
                                        str(epochs), str(batch)], work)
        lines = stdout.splitlines()
        seconds = [float(line.rsplit(None, 1)[-1].rstrip("s")) for line in lines if line.startswith("epoch ")]
        first = next(float(line.split()[1]) for line in lines if line.startswith("first_step_at"))
        out["hand"].append({"wall": wall, "steady": steady(seconds, n), "first": first - launched})
        if name == "iris":
            # The import's end as the child sees it (a bare process's wall time would add TensorFlow's slow exit).
            _, launched, stdout = timed([sys.executable, "-c", "import tensorflow, keras, time; print(time.time())"],
                                        ROOT)
            out["import"].append(float(stdout.split()[-1]) - launched)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (medians reported)")
    p.add_argument("--only", action="append", choices=list(CASES), help="run only these cases")
    p.add_argument("--epochs", type=int, help="epochs of the image cases (default: cnn 4, mobilenet 3)")
    p.add_argument("--keep", metavar="DIR", help="keep the data, specs and runs in DIR")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 2:
        p.error("--epochs must be at least 2 (the steady state excludes the first epoch)")

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kspec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {name: run_case(name, work, args.repeat, args.epochs if name != "iris" else None)
               for name in (args.only or list(CASES))}

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from compiler.cli import import_tensorflow

    import_tensorflow()
    import keras

    peak = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    med = statistics.median
    print(f"{os.cpu_count()} CPU(s), {args.repeat} interleaved run(s) per case, medians; matmul peak "
          f"float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s")
    print(f"{'case':10}{'precision':>16}{'wall k/h':>10}{'steady k/h':>12}{'kspec GFLOP/s':>15}{'% of peak':>11}"
          f"{'first step k / h (s)':>24}")
    for name, res in results.items():
        k, h = res["kspec"], res["hand"]
        wall = med([a["wall"] for a in k]) / med([a["wall"] for a in h])
        steady_ratio = med([a["steady"] for a in k]) / med([a["steady"] for a in h])
        precision = k[0]["precision"] or "?"
        model = keras.saving.load_model(k[0]["run"] / "model.keras", compile=False)
        gflops = 3 * forward_flops(model) * med([a["steady"] for a in k]) / 1e9
        share = gflops / peak["bfloat16" if "bfloat16" in precision else "float32"]
        firsts = [a["first"] for a in k if a["first"] is not None]
        first_k = med(firsts) if firsts else float("nan")
        print(f"{name:10}{precision:>16}{wall:10.3f}{steady_ratio:12.3f}{gflops:15.1f}{share * 100:10.1f}%"
              f"{first_k:12.2f} / {med([a['first'] for a in h]):.2f}")
        def series(runs, key, digits):
            return ", ".join(f"{run[key]:.{digits}f}" for run in runs)

        print(f"{'':10}runs: kspec wall {series(k, 'wall', 1)}; hand wall {series(h, 'wall', 1)}; "
              f"steady samples/s kspec {series(k, 'steady', 0)}, hand {series(h, 'steady', 0)}")
        if res["import"]:
            imp = med(res["import"])
            print(f"{'':10}start-up: `import tensorflow, keras` {imp:.2f} s; kspec's first step "
                  f"{first_k:.2f} s = import + {first_k - imp:.2f} s (goal: + 1.0 s)")
    print("goals: cnn steady >= 1.7, cnn and iris wall <= 0.9, iris first step <= import + 1.0 s")
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine skews every number)")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
