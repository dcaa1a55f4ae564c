"""How much does kspec add to building a model? build_model + compile_model vs the same Keras code by hand.

One process, a ~50-layer residual CNN, several interleaved repetitions of each
(the session is cleared before every repetition, outside the timed region),
min and median reported. Target: kspec / hand <= 1.10 on the median.

    .venv/bin/python bench/build_overhead.py [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
from keras import layers  # noqa: E402

from compiler.builder import build_model, compile_model  # noqa: E402
from compiler.errors import Loc  # noqa: E402
from compiler.spec.types import Component, InputSpec, ModelSpec, NodeSpec, TrainSpec  # noqa: E402

BLOCKS = 6        # 3 stem layers + 6 blocks x 7 layers + 3 head layers + input = 49 layers


def spec() -> tuple[ModelSpec, TrainSpec]:
    line = iter(range(1, 1000))

    def node(name, layer, inputs, **args):
        return NodeSpec(name, layer, args, tuple(inputs), Loc("bench.yaml", next(line), 5), "model.layers")

    nodes = [node("stem", "Conv2D", ["image"], filters=16, kernel_size=3, padding="same", use_bias=False,
                  kernel_initializer="he_normal"),
             node("stem_bn", "BatchNormalization", ["stem"]),
             node("stem_relu", "Activation", ["stem_bn"], activation="relu")]
    prev = "stem_relu"
    for i in range(BLOCKS):
        b = f"res_{i}"
        nodes += [
            node(f"{b}.conv_a", "Conv2D", [prev], filters=16, kernel_size=3, padding="same", use_bias=False,
                 kernel_initializer="he_normal", kernel_regularizer={"L2": {"l2": 1e-4}}),
            node(f"{b}.bn_a", "BatchNormalization", [f"{b}.conv_a"]),
            node(f"{b}.relu_a", "Activation", [f"{b}.bn_a"], activation="relu"),
            node(f"{b}.conv_b", "Conv2D", [f"{b}.relu_a"], filters=16, kernel_size=3, padding="same",
                 use_bias=False, kernel_initializer="he_normal", kernel_regularizer={"L2": {"l2": 1e-4}}),
            node(f"{b}.bn_b", "BatchNormalization", [f"{b}.conv_b"]),
            node(f"{b}.add", "Add", [prev, f"{b}.bn_b"]),
            node(f"{b}.relu", "Activation", [f"{b}.add"], activation="relu"),
        ]
        prev = f"{b}.relu"
    nodes += [node("pool", "GlobalAveragePooling2D", [prev]), node("drop", "Dropout", ["pool"], rate=0.2),
              node("label", "Dense", ["drop"], units=10, activation="softmax")]
    model = ModelSpec((InputSpec("image", (32, 32, 3)),), tuple(nodes), ("label",))
    train = TrainSpec(optimizer=Component("optimizers", "Adam", {"learning_rate": 1e-3, "clipnorm": 5.0}),
                      losses={"label": Component("losses", "sparse_categorical_crossentropy")},
                      metrics={"label": (Component("metrics", "accuracy"),)})
    return model, train


def with_kspec(model_spec: ModelSpec, train: TrainSpec) -> keras.Model:
    model = build_model(model_spec, name="bench")
    compile_model(model, train, model_spec)
    return model


def by_hand() -> keras.Model:
    x = keras.Input((32, 32, 3), name="image")
    y = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem")(x)
    y = layers.BatchNormalization(name="stem_bn")(y)
    y = layers.Activation("relu", name="stem_relu")(y)
    for i in range(BLOCKS):
        b = f"res_{i}"
        skip = y
        y = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                          kernel_regularizer=keras.regularizers.L2(1e-4), name=f"{b}.conv_a")(y)
        y = layers.BatchNormalization(name=f"{b}.bn_a")(y)
        y = layers.Activation("relu", name=f"{b}.relu_a")(y)
        y = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                          kernel_regularizer=keras.regularizers.L2(1e-4), name=f"{b}.conv_b")(y)
        y = layers.BatchNormalization(name=f"{b}.bn_b")(y)
        y = layers.Add(name=f"{b}.add")([skip, y])
        y = layers.Activation("relu", name=f"{b}.relu")(y)
    y = layers.GlobalAveragePooling2D(name="pool")(y)
    y = layers.Dropout(0.2, name="drop")(y)
    y = layers.Dense(10, activation="softmax", name="label")(y)
    model = keras.Model(x, y, name="bench")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3, clipnorm=5.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    reps = parser.parse_args().reps
    model_spec, train = spec()

    # Warm up both paths (imports, registry tables, tf.function machinery) outside the measurement.
    a, b = with_kspec(model_spec, train), by_hand()
    assert len(a.layers) == len(b.layers) and a.count_params() == b.count_params()
    assert [type(layer) for layer in a.layers] == [type(layer) for layer in b.layers]

    times = {"kspec": [], "hand": []}
    for rep in range(reps):
        order = (("kspec", lambda: with_kspec(model_spec, train)), ("hand", by_hand))
        for label, make in (order if rep % 2 == 0 else order[::-1]):
            keras.backend.clear_session()
            start = time.perf_counter()
            make()
            times[label].append(time.perf_counter() - start)

    print(f"model: {len(a.layers)} layers, {a.count_params():,} parameters; {reps} repetitions each, interleaved")
    for label in ("hand", "kspec"):
        t = times[label]
        print(f"{label:>6}: min {min(t) * 1e3:7.1f} ms   median {statistics.median(t) * 1e3:7.1f} ms")
    ratio_min = min(times["kspec"]) / min(times["hand"])
    ratio_median = statistics.median(times["kspec"]) / statistics.median(times["hand"])
    verdict = "ok" if ratio_median <= 1.10 else "OVER TARGET"
    print(f" ratio: min {ratio_min:.3f}   median {ratio_median:.3f}   (target <= 1.10: {verdict})")


if __name__ == "__main__":
    main()
