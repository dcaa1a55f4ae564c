"""Every layer class the registry offers builds through `build_model` from plain arguments.

Generated from `registry.names("layers")`: the required constructor arguments
are filled from a small table by argument name, the input shape comes from a
few rules (1D/2D/3D in the class name, recurrent layers, image preprocessing,
merge layers take two inputs...). Each test builds a one-layer model, calls it
on random data, and round-trips the layer through get_config/from_config.
A layer that genuinely cannot be built that way is in SKIP, with the reason.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest

from compiler import registry
from compiler.builder import build_model
from compiler.errors import Loc
from compiler.spec.types import InputSpec, ModelSpec, NodeSpec

# Required constructor arguments, by argument name.
ARGS = {
    "units": 2, "filters": 2, "kernel_size": 3, "rate": 0.5, "stddev": 0.1, "num_heads": 2, "key_dim": 4,
    "input_dim": 10, "output_dim": 4, "layer": {"Dense": {"units": 2}}, "activation": "relu",
    "pool_size": 2, "output_size": 2, "height": 4, "width": 4, "factor": 0.2, "height_factor": 0.2,
    "width_factor": 0.2, "n": 2, "scale": 0.5, "axes": 1, "num_bins": 4, "num_units": 2,
    "head_dim": 4, "num_query_heads": 2, "num_key_value_heads": 1,
    "equation": "ab,bc->ac", "output_shape": 3, "target_shape": [2, 2], "dims": [2, 1],
}
# Where the argument table does not fit one class.
OVERRIDES = {
    "Bidirectional": {"layer": {"GRU": {"units": 2}}},
    "Discretization": {"bin_boundaries": [0.0, 0.5]},
    "IntegerLookup": {"vocabulary": [1, 2, 3]},
    "CategoryEncoding": {"num_tokens": 4},
    "GroupNormalization": {"groups": 2},
    "AppPreprocess": {"application": "MobileNetV2"},
    "RandomPosterization": {"factor": 4},
    "MelSpectrogram": {"fft_length": 64, "sequence_length": 64, "sequence_stride": 32, "num_mel_bins": 8},
    "Expression": {"expr": "tanh(x) * 2.0"},
    "TokenAndPositionEmbedding": {"vocabulary_size": 10, "sequence_length": 5, "embedding_dim": 4},
    "PositionEmbedding": {"sequence_length": 5},
}

SKIP = {
    "StringLookup": "takes string tensors; kspec inputs are numeric (the data stage encodes text)",
    "TextVectorization": "takes string tensors; kspec inputs are numeric (the data stage encodes text)",
    "MaxNumBoundingBoxes": "operates on bounding-box dicts, not on a tensor",
    "Equalization": "Keras returns the input tensor itself when it is built symbolically: a cycle in any "
                    "Functional model (build_model reports it; see test_build)",
    "GRUCell": "a cell is the `cell` argument of an RNN layer, not a graph node (returns (output, states))",
    "LSTMCell": "a cell is the `cell` argument of an RNN layer, not a graph node (returns (output, states))",
    "SimpleRNNCell": "a cell is the `cell` argument of an RNN layer, not a graph node (returns (output, states))",
}


def _is(cls, module_path: str, name: str) -> bool:
    import importlib

    try:
        base = getattr(importlib.import_module(module_path), name)
    except (ImportError, AttributeError):
        return False
    return issubclass(cls, base)


def input_shapes(name: str, cls) -> list[tuple]:
    """The (batch-less) shapes of the inputs a layer is tried on."""
    from keras.src.layers.merging.base_merge import Merge

    if issubclass(cls, Merge):
        return [(4,), (4,)]
    if name in ("Attention", "AdditiveAttention", "MultiHeadAttention", "GroupQueryAttention"):
        return [(5, 4), (5, 4)]
    if name == "HashedCrossing":
        return [(1,), (1,)]
    if name.startswith("ConvLSTM"):
        return [{"1D": (3, 8, 2), "2D": (3, 6, 6, 2), "3D": (2, 4, 4, 4, 1)}[name[-2:]]]
    if _is(cls, "keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer",
           "BaseImagePreprocessingLayer") or name in ("Resizing", "RandomFlip", "RandomRotation"):
        return [(8, 8, 3)]
    if name in ("MelSpectrogram",):
        return [(256,)]
    if name in ("PositionEmbedding", "SinePositionEncoding"):
        return [(5, 4)]
    if name == "TokenAndPositionEmbedding":
        return [(5,)]
    if name in ("STFTSpectrogram",):
        return [(256, 1)]
    for dims, shape in (("1D", (8, 3)), ("2D", (8, 8, 3)), ("3D", (4, 4, 4, 3))):
        if name.endswith(dims) or f"{dims}Transpose" in name:
            return [shape]
    if _is(cls, "keras.src.layers.rnn.rnn", "RNN") or name in ("Bidirectional", "TimeDistributed", "Permute",
                                                                "Masking", "RMSNormalization"):
        return [(5, 3)]
    return [(4,)]


def input_dtype(name: str) -> str:
    if name in ("Embedding", "ReversibleEmbedding", "CategoryEncoding", "IntegerLookup", "Hashing",
                "HashedCrossing", "TokenAndPositionEmbedding"):
        return "int32"
    return "float32"


def node_args(name: str, cls) -> dict:
    params = inspect.signature(cls.__init__).parameters.values()
    required = [p.name for p in params
                if p.name != "self" and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [r for r in required if r not in ARGS and r not in OVERRIDES.get(name, {})]
    assert not missing, f"{name}: add {missing} to ARGS or OVERRIDES"
    return {**{r: ARGS[r] for r in required if r in ARGS}, **OVERRIDES.get(name, {})}


def sample(shape: tuple, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "int32":
        return rng.integers(1, 4, size=(2, *shape)).astype("int32")
    return rng.uniform(0, 1, size=(2, *shape)).astype("float32")


CLASSES = [n for n in registry.names("layers") if inspect.isclass(registry.lookup("layers", n))]


def test_skips_are_real_layer_names():
    assert set(SKIP) <= set(CLASSES)
    assert set(OVERRIDES) <= set(CLASSES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.skip(reason=SKIP[n])) if n in SKIP else n
                                  for n in CLASSES])
def test_layer_builds_calls_and_round_trips(name):
    cls = registry.lookup("layers", name)
    args = node_args(name, cls)
    shapes = input_shapes(name, cls)
    dtype = input_dtype(name)
    inputs = tuple(InputSpec(f"in_{i}", shape, dtype) for i, shape in enumerate(shapes))
    node = NodeSpec(name="layer", layer=name, args=args, inputs=tuple(i.name for i in inputs),
                    loc=Loc("conformance.yaml", 1, 1), path="model.layers[0]")
    model = build_model(ModelSpec(inputs=inputs, nodes=(node,), outputs=("layer",)), name=f"one_{name}")

    layer = model.get_layer("layer")
    assert isinstance(layer, cls)
    data = [sample(i.shape, dtype) for i in inputs]
    out = model(data[0] if len(data) == 1 else data, training=False)
    for tensor in keras.tree.flatten(out):
        assert tensor.shape[0] == 2

    config = layer.get_config()
    clone = cls.from_config(structural_copy(config))     # some from_config pop keys from their argument
    assert without_build_config(clone.get_config()) == without_build_config(config)


def structural_copy(config):
    if isinstance(config, dict):
        return {k: structural_copy(v) for k, v in config.items()}
    if isinstance(config, list):
        return [structural_copy(v) for v in config]
    return config


def without_build_config(config):
    """A wrapped layer's config records its build shape; a fresh clone is not built yet."""
    if isinstance(config, dict):
        return {k: without_build_config(v) for k, v in config.items() if k != "build_config"}
    if isinstance(config, (list, tuple)):
        return [without_build_config(v) for v in config]
    return config
