"""Adapt the layers that learn their state from data (Normalization, TextVectorization, the lookups, Discretization).

A `- Normalization: {}` written in a spec is useless until `adapt()` has seen the
data: without it, it keeps mean 0 and variance 1 and trains silently as an
identity. So before training, every such layer that was not given its state in
the spec (`mean`/`variance`, `vocabulary`, `bin_boundaries`) is adapted on the
TRAINING split (never validation or test: no leakage), wherever it stands in the
graph: a sub-model from the model's inputs to the layer's input maps the
training inputs to what reaches the layer, and the layer adapts on that stream.
Layers are adapted in graph order, so a lookup after a Normalization sees
normalized values. The data stage's own per-input layers (`<input>.<name>`,
already adapted there) are left alone.
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from ..errors import Diagnostic, SpecError
from ..spec.types import ModelSpec

ADAPTABLE = ("Normalization", "TextVectorization", "StringLookup", "IntegerLookup", "Discretization")


def needs_adapting(layer: keras.layers.Layer) -> bool:
    """True for an adaptable layer whose state the spec did not give."""
    name = type(layer).__name__
    if name not in ADAPTABLE or not hasattr(layer, "adapt"):
        return False
    if name == "Normalization":
        return getattr(layer, "input_mean", None) is None
    if name == "Discretization":
        return getattr(layer, "bin_boundaries", None) is None
    return not getattr(layer, "_has_input_vocabulary", True)


def adapt_layers(model: keras.Model, inputs_dataset, log: Callable[[str], Any] = print,
                 spec_model: ModelSpec | None = None) -> list[str]:
    """Adapt every layer of `model` that needs it on `inputs_dataset` (a batched tf.data.Dataset of the
    model's inputs: a tensor, or a dict keyed by input name); returns the names adapted.

    Raises SpecError at the node of a layer that cannot be adapted so (used at several places in the graph,
    or its input cannot be computed from the model's inputs), rather than leave it an identity."""
    input_names = {t.name.split(":")[0] for t in model.inputs} | {
        layer.name for layer in model.layers if isinstance(layer, keras.layers.InputLayer)}
    adapted = []
    for layer in model.layers:
        if not needs_adapting(layer) or layer.name.split(".", 1)[0] in input_names and "." in layer.name:
            continue
        try:
            if len(layer._inbound_nodes) != 1:
                raise ValueError(f"it is applied at {len(layer._inbound_nodes)} places in the graph (share:), "
                                 "so no single input stream can adapt it")
            data = _stream_into(model, layer, inputs_dataset)
            layer.adapt(data)
        except Exception as exc:         # Keras raises ValueError, TypeError, tf errors...
            raise SpecError(_diagnostic(layer, exc, spec_model)) from None
        log(f"adapted {type(layer).__name__} '{layer.name}' on the training split{_state(layer)}")
        adapted.append(layer.name)
    return adapted


def adapt_on_arrays(model: keras.Model, x: dict, batch_size: int, log: Callable[[str], Any] = print,
                    spec_model: ModelSpec | None = None) -> list[str]:
    """`adapt_layers` on in-memory training inputs (input name -> array); nothing when no layer needs it."""
    if not any(needs_adapting(layer) for layer in model.layers):
        return []
    import tensorflow as tf

    inputs = next(iter(x.values())) if len(x) == 1 else dict(x)
    return adapt_layers(model, tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size), log, spec_model)


def adapt_on_split(model: keras.Model, train, batch_size: int, log: Callable[[str], Any] = print,
                   spec_model: ModelSpec | None = None) -> list[str]:
    """`adapt_on_arrays` for any training split: in-memory Arrays, or a streamed split (files read by
    tf.data), whose inputs `compiler.data.input_dataset` gives as a batched dataset."""
    if hasattr(train, "x"):
        return adapt_on_arrays(model, train.x, batch_size, log, spec_model)
    if not any(needs_adapting(layer) for layer in model.layers):
        return []
    from ..data import input_dataset

    return adapt_layers(model, input_dataset(train, batch_size), log, spec_model)


def _stream_into(model: keras.Model, layer, dataset):
    """`dataset` mapped to the tensor that reaches `layer` (through a sub-model of `model`)."""
    import tensorflow as tf

    target = layer.input
    if isinstance(target, (list, tuple)):
        raise ValueError("it takes several inputs")
    for i, x in enumerate(model.inputs):
        if x is target:                  # directly on a model input: select it, no sub-model
            name = model.input_names[i] if hasattr(model, "input_names") else x.name

            def pick(batch, i=i, name=name):
                if isinstance(batch, dict):
                    return batch[name]
                return batch[i] if isinstance(batch, (tuple, list)) else batch
            return dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE)
    sub = keras.Model(model.inputs, target)
    return dataset.map(lambda batch: sub(batch, training=False), num_parallel_calls=tf.data.AUTOTUNE)


def _state(layer) -> str:
    if type(layer).__name__ in ("StringLookup", "IntegerLookup", "TextVectorization"):
        return f" (vocabulary of {layer.vocabulary_size()})"
    if type(layer).__name__ == "Discretization":
        return f" ({len(layer.bin_boundaries)} bin boundaries)"
    return ""


def _diagnostic(layer, exc: Exception, spec_model: ModelSpec | None) -> Diagnostic:
    from .errors import keras_message

    node = next((n for n in (spec_model.nodes if spec_model else ()) if n.name == layer.name), None)
    message = (f"{type(layer).__name__} '{layer.name}' needs adapting on the training data, but cannot be "
               f"adapted where it stands: {keras_message(exc)}")
    hint = "give its state in the spec (Normalization: mean/variance; lookups: vocabulary; Discretization: " \
           "bin_boundaries), or place it where the model's inputs reach it directly"
    if node is None:
        return Diagnostic(message, hint=hint)
    return Diagnostic(message, node.loc, node.path, node.via, hint)
