"""Preprocessing: target encodings applied to the arrays, input transformations that travel with the model.

Input steps (`standardize`, `log1p`, `rescale`) and augmentation become Keras
layers that the builder places right after each `Input`, so the saved model
takes raw data: `kspec predict` and anyone loading `model.keras` need no separate
preprocessing code, and statistics can never be refitted on the wrong data.
`standardize` is a `Normalization` layer adapted on the TRAINING split only
(after the steps written before it), so validation and test stay unseen.

`one_hot` is the one target step: it turns class indices into one-hot rows for
`categorical_crossentropy`, before splitting.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import DataError, Diagnostic, SpecError
from ..spec.types import Component, DataSpec, ModelSpec
from .split import Arrays, Examples
from .table import Table, did_you_mean, labels_of

INPUT_STEPS = ("standardize", "log1p", "rescale")
TARGET_STEPS = ("one_hot",)
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")


def check_steps(data: DataSpec) -> None:
    """Unknown preprocessing names fail before anything is loaded."""
    known = INPUT_STEPS + TARGET_STEPS
    for step in data.preprocess:
        if step.name not in known:
            raise SpecError(Diagnostic(f"unknown preprocessing step {step.name!r}{did_you_mean(step.name, known)} "
                                       f"(known: {', '.join(known)})", step.loc, step.path))


def encode_targets(table: Table, data: DataSpec) -> Table:
    """Apply `one_hot` (to every classification output, or to `outputs: [...]`)."""
    ys = dict(table.y)
    for step in data.preprocess:
        if step.name != "one_hot":
            continue
        chosen = step.args.get("outputs") or [o for o, t in table.tasks.items() if t == "classification"]
        if not chosen:
            raise DataError(Diagnostic(
                "one_hot applies to classification targets, but every target here is regression "
                f"({', '.join(f'{o}: {t}' for o, t in table.tasks.items())})", step.loc, step.path))
        for output in chosen:
            if table.tasks.get(output) != "classification":
                raise DataError(Diagnostic(
                    f"one_hot applies to classification targets, but output {output!r} is "
                    f"{table.tasks.get(output, 'not a model output')}", step.loc, step.path))
            y = ys[output]
            if y.ndim == 2 and y.shape[1] > 1:
                continue        # already one-hot
            classes = max(len(table.class_names.get(output, ())), int(labels_of(y).max()) + 1)
            labels = labels_of(y)
            ys[output] = np.zeros((len(labels), classes), dtype=np.float32)     # not np.eye: classes^2
            ys[output][np.arange(len(labels)), labels] = 1.0
    return replace(table, y=ys)


def input_layers(data: DataSpec, model: ModelSpec, train: Examples) -> dict[str, list[Any]]:
    """Per model input, the layers to apply right after it: preprocessing (in order), then augmentation.

    `train` may be a streamed split: `standardize` then adapts on one streaming pass over it."""
    check_steps(data)
    if not isinstance(train, Arrays):
        try:
            return _input_layers(data, model, train)
        except (SpecError, DataError):
            raise
        except Exception:
            train.find_bad_file()         # a streamed file that fails to parse: name it (line, column)
            raise
    return _input_layers(data, model, train)


def _input_layers(data: DataSpec, model: ModelSpec, train) -> dict[str, list[Any]]:
    layers: dict[str, list[Any]] = {i.name: [] for i in model.inputs}
    for step in data.preprocess:
        if step.name in INPUT_STEPS:
            for name in _inputs_of(step, model):
                seen = train.x[name] if isinstance(train, Arrays) else _streamed_input(train, name, len(model.inputs))
                layers[name].append(_preprocess_layer(step, _unique(layers, name, step.name), layers[name], seen))
    for step in data.augment:
        for name in _inputs_of(step, model):
            layers[name].append(_augment_layer(step, _unique(layers, name, step.name.lower())))
    return layers


def _streamed_input(train, name: str, inputs: int):
    """One input of a streamed training split, as a batched dataset (one streaming pass per use)."""
    from .pipeline import input_dataset

    ds = input_dataset(train)
    return ds if inputs == 1 else ds.map(lambda x: x[name])


def _inputs_of(step: Component, model: ModelSpec) -> list[str]:
    """`inputs: [...]` if given, else every floating-point input (token-id inputs are left alone)."""
    names = [i.name for i in model.inputs]
    chosen = step.args.get("inputs")
    if chosen is None:
        chosen = [i.name for i in model.inputs if i.dtype in FLOAT_DTYPES]
        if not chosen:
            raise SpecError(Diagnostic(f"{step.name} has no floating-point model input to apply to "
                                       f"(inputs: {', '.join(names)})", step.loc, step.path))
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    for name in chosen:
        if name not in names:
            raise SpecError(Diagnostic(f"{step.name} names {name!r}, which is not a model input"
                                       f"{did_you_mean(name, names)} (inputs: {', '.join(names)})",
                                       step.loc, step.path))
    return chosen


def _unique(layers: dict[str, list[Any]], input_name: str, step: str) -> str:
    base = f"{input_name}_{step}"
    taken = {layer.name for group in layers.values() for layer in group}
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _kwargs(step: Component) -> dict[str, Any]:
    return {k: v for k, v in step.args.items() if k != "inputs"}


def _preprocess_layer(step: Component, name: str, before: list[Any], train_x: np.ndarray):
    import keras

    from ..layers import Log1p

    kwargs = _kwargs(step)
    try:
        if step.name == "log1p":
            return Log1p(name=name, **kwargs)
        if step.name == "rescale":
            return keras.layers.Rescaling(**{"scale": 1.0, **kwargs}, name=name)
        layer = keras.layers.Normalization(**kwargs, name=name)
    except (TypeError, ValueError) as exc:
        raise SpecError(Diagnostic(f"{step.name}: {exc}", step.loc, step.path)) from None
    if not isinstance(train_x, np.ndarray):           # a streamed split: a dataset of float32 batches
        import tensorflow as tf

        ds = train_x
        for earlier in before:
            ds = ds.map(earlier)
        layer.adapt(ds.map(lambda b: tf.cast(b, tf.float32)))
        _keep_constant_features_finite(layer)
        return layer
    seen = train_x
    for earlier in before:              # fit on what the layer will actually receive
        seen = keras.ops.convert_to_numpy(earlier(seen))
    layer.adapt(np.asarray(seen, dtype=np.float32))
    _keep_constant_features_finite(layer)
    return layer


def _keep_constant_features_finite(layer) -> None:
    """A feature constant on the training split (a blank digits pixel) has variance 0, and
    Normalization would divide it by ~1e-7 on data where it varies. Centre it, don't scale it."""
    variance = np.asarray(layer.adapt_variance)
    if (variance < 1e-12).any():
        layer.adapt_variance.assign(np.where(variance < 1e-12, 1.0, variance).astype(variance.dtype))
        layer.finalize_state()


def _augment_layer(step: Component, name: str):
    import keras

    cls = getattr(keras.layers, step.name, None)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        known = [n for n in dir(keras.layers) if n.startswith(("Random", "Gaussian"))]
        raise SpecError(Diagnostic(f"unknown augmentation layer {step.name!r}{did_you_mean(step.name, known)} "
                                   f"(e.g. {', '.join(known[:8])})", step.loc, step.path))
    try:
        return cls(**_kwargs(step), name=name)
    except (TypeError, ValueError) as exc:
        raise SpecError(Diagnostic(f"{step.name}: {exc}", step.loc, step.path)) from None
