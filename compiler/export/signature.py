"""A model's inputs and outputs as the export formats see them, and a muffler for converter chatter.

Inputs are always taken in `keras.tree.flatten(model.input)` order and named by
their Input layers (`measurements`, `pixels`), so every runtime is fed by name;
outputs in `keras.tree.flatten(model.output)` order, named after the output
layers where those names are usable.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from typing import Iterator

import numpy as np

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def flat_inputs(model) -> list:
    import keras

    return list(keras.tree.flatten(model.input))


def input_names(model) -> list[str]:
    names = [_clean(t.name) for t in flat_inputs(model)]
    return names if _usable(names) else [f"input_{i}" for i in range(len(names))]


def output_names(model) -> list[str]:
    import keras

    n = len(keras.tree.flatten(model.output))
    names = [_clean(str(name)) for name in getattr(model, "output_names", [])]
    return names if len(names) == n and _usable(names) else [f"output_{i}" for i in range(n)]


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _usable(names: list[str]) -> bool:
    return len(set(names)) == len(names) and all(_NAME.match(n) for n in names)


def input_specs(model, batch: int | None = None) -> list:
    """One tf.TensorSpec per flat input, batch dimension `batch` (None: any), named as in input_names."""
    import tensorflow as tf

    return [tf.TensorSpec((batch,) + tuple(t.shape[1:]), tf.as_dtype(str(t.dtype)), name=name)
            for t, name in zip(flat_inputs(model), input_names(model))]


def pack(model, flat: list):
    """Flat inputs -> the structure the model is called with (a tensor, a list or a dict)."""
    import keras

    return keras.tree.pack_sequence_as(model.input, list(flat))


def flat_call(model):
    """`f(*flat_inputs) -> [outputs...]`: the model in inference mode with flat, positional inputs."""
    import keras

    def call(*flat):
        return list(keras.tree.flatten(model(pack(model, flat), training=False)))

    return call


def keras_outputs(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import keras

    outputs = model(pack(model, [keras.ops.convert_to_tensor(x) for x in inputs]), training=False)
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def has_recurrent_layer(model) -> bool:
    """True if any layer (nested models and wrappers such as Bidirectional included) is an RNN."""
    import keras

    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.RNN) or hasattr(layer, "cell"):
            return True
        stack.extend(getattr(layer, "layers", None) or [])
        for attr in ("layer", "forward_layer", "backward_layer"):
            inner = getattr(layer, attr, None)
            if isinstance(inner, keras.layers.Layer):
                stack.append(inner)
    return False


@contextlib.contextmanager
def quiet() -> Iterator[list[str]]:
    """Mute the converters' C++ logging, TensorFlow deprecation notices and Python warnings.

    Yields a list that receives what was written to stderr (for error messages).
    KSPEC_DEBUG=1 lets everything through.
    """
    captured: list[str] = []
    if os.environ.get("KSPEC_DEBUG"):
        yield captured
        return
    import logging
    import sys

    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tf_logger.setLevel(level)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))
