"""Does `kspec train` on an image folder stream as fast, and in as little memory, as Keras by hand?

Each case trains the same model twice, each in its own fresh Python process, timed end to
end from outside (interpreter start to exit), peak RSS from `os.wait4` of that process:

  (a) `kspec train SPEC` on `{images: DIR}`, 10% validation (`data.cache: none`, like (b));
  (b) by hand: `keras.utils.image_dataset_from_directory(..., validation_split=0.1,
      subset="both")` + `prefetch`, the same layers, `fit`, then what kspec does after
      training (evaluate both splits, save the model).

Data: generated JPEGs (smooth random colour fields, 3 classes), written once per size.
Cases: a small convnet at 96 px on N1 and N2 images (data handling dominates; kspec's
peak RSS at N2 vs N1 is the flat-memory check), and MobileNetV3Small (weights: null,
frozen) + GlobalAveragePooling2D + Dense at 224 px. Batch 32, 1 epoch. The machine may
be loaded: the two scripts of a case run back to back, and the ratios are what matter.

    .venv/bin/python bench/image_folder.py [--small 1000 4000] [--mobilenet 600] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b", "c")

CONVNET = """\
    - Rescaling: {scale: 0.00392156862745098}
    - Conv2D: {filters: 16, kernel_size: 3, strides: 2, activation: relu}
    - Conv2D: {filters: 32, kernel_size: 3, strides: 2, activation: relu}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 3, activation: softmax}
      name: label"""

MOBILENET = """\
    - Backbone: {application: MobileNetV3Small, weights: null, include_top: false, trainable: false}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 3, activation: softmax}
      name: label"""

SPEC = """\
kspec: 1
name: bench-images
seed: 0
data:
  source: {images: %(dir)s}
  split: {validation: 0.1}
  cache: none
model:
  inputs:
    img: {shape: [%(px)d, %(px)d, 3]}
  layers:
%(layers)s
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 32
  epochs: 1
"""

HAND = """\
import sys
import keras
import tensorflow as tf

directory, px, kind, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
keras.utils.set_random_seed(0)
train, val = keras.utils.image_dataset_from_directory(directory, validation_split=0.1, subset="both", seed=0,
                                                      image_size=(px, px), batch_size=32)
train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)
inputs = keras.Input((px, px, 3))
if kind == "convnet":
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
else:
    base = keras.applications.MobileNetV3Small(input_shape=(px, px, 3), weights=None, include_top=False)
    base.trainable = False
    x = base(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(3, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, validation_data=val, epochs=1, verbose=0)
model.evaluate(train, verbose=0)
model.evaluate(val, verbose=0)
model.save(out)
"""


def write_images(directory: Path, n: int, px: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(CLASSES):
        (directory / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = i % len(CLASSES)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        small[..., k] = 255 - small[..., k] // 4                 # a class-coloured tint
        Image.fromarray(small).resize((px, px), Image.BILINEAR).save(directory / CLASSES[k] / f"{i:06d}.jpg",
                                                                      quality=90)


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def case(work: Path, n: int, px: int, kind: str) -> dict:
    directory = work / f"images_{n}_{px}"
    if not directory.exists():
        write_images(directory, n, px)
    spec = work / f"{kind}_{n}_{px}.yaml"
    spec.write_text(SPEC % {"dir": directory, "px": px, "layers": CONVNET if kind == "convnet" else MOBILENET})
    hand = work / "hand.py"
    hand.write_text(HAND)
    tag = f"{kind}_{n}_{px}_{time.monotonic_ns()}"
    k = run([sys.executable, "-m", "compiler", "train", str(spec), "--run-dir", str(work / f"run_{tag}"),
             "--verbose", "0"], ROOT)
    h = run([sys.executable, str(hand), str(directory), str(px), kind, str(work / f"hand_{tag}.keras")], ROOT)
    row = {"case": f"{kind} {px}px {n} images", "kspec_s": k[0], "hand_s": h[0], "kspec_mb": k[1], "hand_mb": h[1],
           "wall_ratio": k[0] / h[0], "rss_ratio": k[1] / h[1]}
    print(f"{row['case']:32s} wall kspec {k[0]:6.1f} s  hand {h[0]:6.1f} s  ratio {row['wall_ratio']:.2f}   "
          f"peak RSS kspec {k[1]:6.0f} MB  hand {h[1]:6.0f} MB  ratio {row['rss_ratio']:.2f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, nargs="*", default=[1000, 4000], help="image counts, 96 px convnet")
    parser.add_argument("--mobilenet", type=int, nargs="*", default=[600], help="image counts, 224 px MobileNet")
    parser.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [case(work, n, 96, "convnet") for n in args.small]
        rows += [case(work, n, 224, "mobilenet") for n in args.mobilenet]
    small = [r for r in rows if r["case"].startswith("convnet")]
    if len(small) >= 2:
        growth = small[-1]["kspec_mb"] / small[0]["kspec_mb"]
        print(f"kspec peak RSS at {args.small[-1]} vs {args.small[0]} images: x{growth:.2f} (target <= 1.15)")
    worst = max(r["wall_ratio"] for r in rows), max(r["rss_ratio"] for r in rows)
    print(f"worst wall ratio {worst[0]:.2f} (target <= 1.05), worst peak RSS ratio {worst[1]:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
