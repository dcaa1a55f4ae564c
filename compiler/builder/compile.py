"""TrainSpec -> optimizer, losses, metrics: `model.compile` as one would write it by hand.

- optimizer: `adam` or `{Adam: {learning_rate: {ExponentialDecay: {...}}, clipnorm: 5.0}}`,
  created through the registry (a schedule inside becomes a Keras schedule);
- losses and metrics: one per output. A single-output model gets the loss and a
  list of metrics; a multi-output model gets dicts keyed by output name (the
  output node's name, which is the Keras output name), and `loss_weights` too.
  Names Keras resolves itself (`mse`, `accuracy`) are passed as strings, so the
  compiled model serializes exactly like a hand-written one;
- `jit_compile: auto` lets Keras decide on a GPU and is off on a CPU (XLA
  compilation costs more than it saves for the small models kspec trains there).
"""

from __future__ import annotations

from typing import Any

import keras

from .. import registry
from ..errors import Diagnostic, SpecError
from ..spec.types import Component, ModelSpec, TrainSpec
from . import errors as build_errors
from .graph import _plain


def compile_model(model: keras.Model, train: TrainSpec, spec_model: ModelSpec) -> None:
    """Compile `model` (built from `spec_model`) for `train`. Raises SpecError at the
    optimizer, loss or metric Keras refuses."""
    diagnostics: list[Diagnostic] = []
    outputs = list(spec_model.outputs)
    single = len(outputs) == 1

    optimizer = _create(train.optimizer, "optimizer", diagnostics)

    losses = {}
    for output, component in train.losses.items():
        if not single and output not in outputs:
            diagnostics.append(_unknown_output(component, "loss", output, outputs))
            continue
        losses[output] = _create(component, "loss", diagnostics)
    metrics = {}
    for output, components in train.metrics.items():
        if not single and output not in outputs:
            for component in components[:1]:
                diagnostics.append(_unknown_output(component, "metric", output, outputs))
            continue
        metrics[output] = [_create(c, "metric", diagnostics) for c in components]

    if single and len(losses) > 1:
        diagnostics.append(Diagnostic(
            f"the model has one output ('{outputs[0]}') but {len(losses)} losses are given",
            train.loc, "train.loss"))
    if diagnostics:
        raise SpecError(diagnostics)

    weights = dict(train.loss_weights or {})
    # Keras takes a list for a single output, a mapping by output name for several.
    metric_list: list[Any] | dict[str, list[Any]] | None
    loss_weights: list[float] | dict[str, float] | None
    if single:
        loss = next(iter(losses.values()), None)
        metric_list = [m for ms in metrics.values() for m in ms]
        loss_weights = [float(next(iter(weights.values())))] if weights else None
    else:
        loss = {o: losses[o] for o in outputs if o in losses} or None
        metric_list = {o: metrics[o] for o in outputs if o in metrics} or None
        unknown = [o for o in weights if o not in outputs]
        if unknown:
            raise SpecError(Diagnostic(
                f"loss_weights names {', '.join(repr(u) for u in unknown)}, which is not a model output "
                f"(outputs: {', '.join(outputs)})", train.loc, "train.loss_weights"))
        loss_weights = {o: float(weights[o]) for o in outputs if o in weights} or None

    try:
        model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=metric_list,
                      jit_compile=_jit_compile(train.jit_compile),
                      steps_per_execution=int(train.steps_per_execution))
    except Exception as exc:
        raise SpecError(Diagnostic(f"the model cannot be compiled: {build_errors.keras_message(exc)}",
                                   train.loc, "train")) from None


def spec_value(component: Component) -> Any:
    """A Component back in its spec form, as `registry.create` takes it: `adam` or `{Adam: {...}}`."""
    if not component.args:
        return component.name
    return {component.name: _plain(component.args)}


def _create(component: Component, what: str, diagnostics: list[Diagnostic]) -> Any:
    try:
        return registry.create(component.kind, spec_value(component))
    except SpecError as exc:
        diagnostics.extend(exc.diagnostics)
    except Exception as exc:             # Keras ValueError/TypeError, UnknownComponent (a KeyError)
        diagnostics.append(build_errors.component_error(component, what, exc))
    return None


def _unknown_output(component: Component, what: str, output: str, outputs: list[str]) -> Diagnostic:
    return Diagnostic(f"the {what} for '{output}' names no model output (outputs: {', '.join(outputs)})",
                      component.loc, component.path)


def _jit_compile(value: bool | str) -> bool | str:
    if value == "auto":
        return "auto" if _has_gpu() else False
    return bool(value)


def _has_gpu() -> bool:
    if keras.config.backend() != "tensorflow":
        return True                      # let Keras decide on other backends
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
