"""Numerical gradient checks for custom layers (`kspec check SPEC --gradients [--all]`).

For each layer checked, a float64 copy is made (`from_config` with `dtype:
float64`, the original's weights copied in), a random input of the shape the
layer receives in the model is drawn, and the scalar f = sum(output * R) (R a
fixed random tensor, so no two gradient entries can cancel) is differentiated
two ways (the numerical one differences the outputs before summing, to keep
round-off small):
- analytically, with `tf.GradientTape` (what training uses: the layer's ops, or
  its `tf.custom_gradient`);
- numerically, by central differences (f(v + h) - f(v - h)) / 2h, h = 1e-5, on
  up to `samples` randomly chosen entries of each input and each trainable weight.

The relative error of each entry is |a - n| / max(|a|, |n|, floor), where the
floor is 1e5 x the expected round-off of a central difference (float64 eps x
the largest output x sqrt(number of outputs) / 2h), so entries whose gradient
is ~0 cannot fail on round-off alone; a layer passes when the largest one is below `tolerance` (1e-4). Layers are
called with training=False (dropout and noise off, batch statistics frozen).

Which layers: those whose class comes from a `--plugin` module or kspec's own
layers (compiler/layers: Maxout, Log1p, AppPreprocess) — the ones whose
gradients nobody else has tested — or, with `all_layers`, every layer with
trainable weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-4
STEP = 1e-5


@dataclass(frozen=True)
class LayerCheck:
    layer: str                 # the layer's name in the model
    cls: str                   # its class name
    max_error: float           # the largest relative error (nan when skipped)
    worst: str = ""            # where: "input", "input[1]", or a weight's name
    checked: int = 0           # how many gradient entries were compared
    skipped: str = ""          # why the layer was not checked ("" when it was)
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or self.max_error < self.tolerance

    def line(self) -> str:
        name = f"{self.layer} ({self.cls})"
        if self.skipped:
            return f"  skipped  {name}: {self.skipped}"
        verdict = "ok    " if self.passed else "FAILED"
        return (f"  {verdict}   {name}: max relative error {self.max_error:.2g}"
                f"{f' (in {self.worst})' if not self.passed else ''} over {self.checked} gradient entries")


def plugin_classes() -> set[type]:
    """The layer classes of kspec's own layers and of every loaded `--plugin` module."""
    from .. import registry

    registry.lookup("layers", "Dense")          # fills the layer table, kspec's own layers included
    return set(registry._plugins.values())


def layers_to_check(model, all_layers: bool = False) -> list:
    """The plugin/kspec layers of `model` (at any depth), or every layer with trainable weights."""
    import keras

    from ..keras_compat import all_layers as every_layer

    chosen, plugins = [], plugin_classes()
    for layer in every_layer(model):
        if isinstance(layer, keras.Model):
            continue
        if type(layer) in plugins or (all_layers and layer.trainable_weights):
            chosen.append(layer)
    return chosen


def check_gradients(model, all_layers: bool = False, tolerance: float = TOLERANCE, samples: int = 32,
                    seed: int = 0) -> list[LayerCheck]:
    """Check the gradients of the layers `layers_to_check` picks; one LayerCheck per layer."""
    return [check_layer(layer, tolerance=tolerance, samples=samples, seed=seed + i)
            for i, layer in enumerate(layers_to_check(model, all_layers))]


def check_layer(layer, input_shape=None, tolerance: float = TOLERANCE, samples: int = 32,
                seed: int = 0) -> LayerCheck:
    """Gradient check of one layer; `input_shape` defaults to the shape it receives in its model."""
    import keras
    import tensorflow as tf

    name, cls = layer.name, type(layer).__name__

    def skip(why: str) -> LayerCheck:
        return LayerCheck(name, cls, math.nan, skipped=why, tolerance=tolerance)

    specs = _input_specs(layer, input_shape)
    if specs is None:
        return skip("its input shape is unknown (the layer is not called in the model)")
    try:
        config = layer.get_config()
        config["dtype"] = "float64"
        clone = type(layer).from_config(config)
    except Exception as exc:
        return skip(f"cannot make a float64 copy from its config: {type(exc).__name__}: {exc}")

    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in specs:
        concrete = tuple(2 if d is None and i == 0 else (3 if d is None else int(d)) for i, d in enumerate(shape))
        if dtype.startswith(("int", "uint", "bool")):
            arrays.append(rng.integers(0, 2, concrete).astype(dtype))
        else:
            arrays.append(rng.standard_normal(concrete))
    single = len(arrays) == 1
    differentiable = [i for i, (_, dtype) in enumerate(specs) if dtype.startswith(("float", "bfloat"))]

    def call(values):
        tensors = [tf.constant(v) for v in values]
        return clone(tensors[0] if single else tensors, training=False)

    try:
        call(arrays)                                    # builds the copy
        _copy_weights(layer, clone)
    except Exception as exc:
        return skip(f"the float64 copy cannot be run: {type(exc).__name__}: {exc}")
    out = call(arrays)
    outs = [o for o in (out if isinstance(out, (list, tuple)) else [out])]
    projections = [rng.standard_normal(tuple(o.shape)) for o in outs]

    def outputs(values) -> list[np.ndarray]:
        result = call(values)
        results = result if isinstance(result, (list, tuple)) else [result]
        return [keras.ops.convert_to_numpy(r).astype(np.float64) for r in results]

    def difference(plus: list[np.ndarray], minus: list[np.ndarray]) -> float:
        # f(v+h) - f(v-h) as sum((out+ - out-) * R): differencing the outputs before summing
        # avoids the cancellation of two large, nearly equal sums.
        return float(sum(np.sum((a - b) * p) for a, b, p in zip(plus, minus, projections)))

    weights = list(clone.trainable_weights)
    tensors = [tf.constant(v) for v in arrays]
    with tf.GradientTape() as tape:
        for i in differentiable:
            tape.watch(tensors[i])
        result = clone(tensors[0] if single else tensors, training=False)
        results = result if isinstance(result, (list, tuple)) else [result]
        value = tf.add_n([tf.reduce_sum(tf.cast(r, tf.float64) * p) for r, p in zip(results, projections)])
    grads = tape.gradient(value, [tensors[i] for i in differentiable] + weights)
    # Round-off of a central difference: about eps * |out| per output entry, sqrt(N) of them summed.
    reference = outputs(arrays)
    largest = max((float(np.max(np.abs(r))) for r in reference if r.size), default=1.0)
    count = sum(r.size for r in reference)
    scale = max(1e-12, 1e5 * np.finfo(np.float64).eps * max(1.0, largest) * math.sqrt(count) / (2 * STEP))

    worst, where, checked = 0.0, "", 0
    targets = [("input" if single else f"input[{i}]", i) for i in differentiable] + \
              [(w.path if hasattr(w, "path") else w.name, w) for w in weights]
    for (label, target), grad in zip(targets, grads):
        if isinstance(target, int):
            base = arrays[target]
        else:
            base = np.array(target.numpy(), dtype=np.float64)
        analytic = np.zeros(base.shape) if grad is None else np.asarray(tf.convert_to_tensor(grad), np.float64)
        size = base.size
        if size == 0:
            continue
        picks = rng.choice(size, min(samples, size), replace=False)
        for flat in picks:
            index = np.unravel_index(flat, base.shape)
            numeric = _central_difference(outputs, difference, arrays, target, base, index)
            a = float(analytic[index])
            error = abs(a - numeric) / max(abs(a), abs(numeric), scale)
            checked += 1
            if not error <= worst:              # catches NaN too
                worst, where = error, label
    if not (weights or differentiable):
        return skip("it has no trainable weights and no floating-point input")
    return LayerCheck(name, cls, worst, where, checked, tolerance=tolerance)


def _central_difference(outputs, difference, arrays, target, base: np.ndarray, index) -> float:
    def at(delta: float) -> list[np.ndarray]:
        moved = base.copy()
        moved[index] += delta
        if isinstance(target, int):
            values = list(arrays)
            values[target] = moved
            return outputs(values)
        target.assign(moved)
        try:
            return outputs(arrays)
        finally:
            target.assign(base)

    return difference(at(STEP), at(-STEP)) / (2 * STEP)


def _input_specs(layer, input_shape=None) -> list[tuple[tuple, str]] | None:
    """[(shape, dtype)] of the layer's input(s), from `input_shape` or from the layer's first call."""
    if input_shape is not None:
        shapes = input_shape if input_shape and isinstance(input_shape[0], (list, tuple)) else [input_shape]
        return [(tuple(s), "float64") for s in shapes]
    try:
        received = layer.input
    except Exception:
        return None
    received = list(received) if isinstance(received, (list, tuple)) else [received]
    specs = []
    for tensor in received:
        dtype = str(getattr(tensor, "dtype", "float32"))
        specs.append((tuple(tensor.shape), "float64" if dtype.startswith(("float", "bfloat")) else dtype))
    return specs


def _copy_weights(source, clone) -> None:
    src, dst = source.weights, clone.weights
    if len(src) != len(dst):
        raise ValueError(f"the copy has {len(dst)} weights, the layer {len(src)}")
    for s, d in zip(src, dst):
        value = np.asarray(s.numpy() if hasattr(s, "numpy") else s)
        if tuple(value.shape) != tuple(d.shape):
            raise ValueError(f"weight {getattr(s, 'name', '?')} has shape {value.shape}, the copy's {tuple(d.shape)}")
        d.assign(value.astype(d.dtype) if np.issubdtype(value.dtype, np.floating) else value)


def check_before_training(spec, model, verbose: int = 1) -> None:
    """`train.diagnostics: {gradient_check: true}`: check the plugin/kspec layers before training;
    raise TrainingError (exit 1) naming the first layer whose gradient is wrong."""
    from ..errors import Diagnostic, TrainingError
    from .update_ratio import spec_diagnostics

    if not spec_diagnostics(spec).get("gradient_check"):
        return
    results = check_gradients(model, seed=spec.seed)
    if verbose:
        for r in results:
            print(r.line(), flush=True)
    failed = [r for r in results if not r.passed]
    if failed:
        r = failed[0]
        raise TrainingError(Diagnostic(
            f"gradient check failed for layer '{r.layer}' ({r.cls}): max relative error {r.max_error:.2g} "
            f"in {r.worst} (tolerance {r.tolerance:g})",
            hint="its analytic gradient (a tf.custom_gradient, or a non-differentiable op in call) disagrees "
                 "with finite differences"))
