"""ModelSpec -> keras.Model: the Functional model a careful engineer would write by hand.

One `keras.Input` per declared input (then the data stage's preprocessing
layers, if any), then one Keras layer per node, in order, named after the node
and called on the tensors of its input nodes. Nothing is wrapped: the result
holds exactly the layers of the spec, so it trains as fast as the hand-written
model, saves as `.keras` and loads in plain Keras.

How a node with several inputs is called (`inputs: [a, b]`) is read from the
layer class itself, not from a table of names:
- merge layers (subclasses of Keras's `Merge`: Add, Concatenate, Dot...) and any
  layer whose `call` has a single required argument (Attention, a plugin's
  layer taking a list) get a list: `Add()([a, b])`;
- a layer whose `call` has several required arguments gets them positionally:
  `MultiHeadAttention(...)(query, value)`, `(query, value, key)` with three.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Mapping, Sequence

import keras

from .. import registry
from ..errors import Diagnostic, SpecError
from ..spec.types import InputSpec, ModelSpec, NodeSpec
from . import errors as build_errors
from .memory import WeightBudget

BACKBONE = "Backbone"


def build_model(model: ModelSpec, name: str = "model",
                input_layers: Mapping[str, Sequence[Any]] | None = None) -> keras.Model:
    """Build the Functional model of `model` (uncompiled).

    `input_layers` maps an input name to Keras layers to apply right after its
    `Input`, in order (an adapted Normalization, augmentation layers...): they
    become part of the model, named `<input>.<layer name>`.

    Raises SpecError listing every layer that cannot be created from its
    arguments, and the first layer that cannot take its inputs (the shapes of
    every later layer depend on it), each at its node's file:line:col.
    """
    diagnostics: list[Diagnostic] = []
    tensors: dict[str, Any] = {}
    built: dict[str, Any] = {}          # node name -> its layer object (None: could not be created)

    inputs = []
    for spec in model.inputs:
        x = keras.Input(shape=tuple(spec.shape), dtype=spec.dtype, name=spec.name)
        inputs.append(x)
        y = _preprocess(spec, x, (input_layers or {}).get(spec.name, ()), diagnostics)
        if y is not None:
            tensors[spec.name] = y
    known = {spec.name for spec in model.inputs}

    calling = True                       # False after the first layer that cannot take its inputs
    weights = WeightBudget()             # weight bytes, checked before each layer allocates its own
    float32_outputs = set(model.outputs) if _mixed_precision() else set()
    for node in model.nodes:
        is_backbone = node.layer == BACKBONE and not node.shares
        layer = None if is_backbone else _layer(node, built, diagnostics, float32=node.name in float32_outputs)
        built[node.name] = layer
        known.add(node.name)
        if not calling or (layer is None and not is_backbone):
            continue
        if not node.inputs:
            diagnostics.append(build_errors.node_error(node, f"{node.layer} '{node.name}' has no inputs"))
            continue
        missing = [i for i in node.inputs if i not in tensors]
        if missing:
            unknown = [i for i in missing if i not in known]
            if unknown:
                names = ", ".join(repr(u) for u in unknown)
                diagnostics.append(build_errors.node_error(
                    node, f"{node.layer} '{node.name}' has no input named {names} defined before it"))
            continue                     # an input node failed: already reported
        args = [tensors[i] for i in node.inputs]
        try:
            if layer is None:
                built[node.name], out = _backbone(node, args[0] if len(args) == 1 else args)
            else:
                if not node.shares:      # sized (and built) before its weights are allocated
                    layer, too_big = weights.check(node, layer, args)
                    built[node.name] = layer
                    if too_big is not None:
                        diagnostics.append(too_big)
                        calling = False
                        continue
                out = _call(layer, args)
        except SpecError as exc:
            diagnostics.extend(exc.diagnostics)
            calling = False
            continue
        except Exception as exc:         # Keras raises ValueError, TypeError, NotImplementedError...
            diagnostics.append(build_errors.call_error(node, layer, exc, node.inputs, args))
            calling = False
            continue
        if any(out is a for a in args):
            # Keras records a call by writing its history on the output tensor; when a layer hands back
            # its input itself (Equalization does when built symbolically), the graph gets a cycle.
            diagnostics.append(build_errors.node_error(
                node, f"{node.layer} '{node.name}' returns its input unchanged when the model is built, which "
                      f"Keras cannot record in a Functional model (a Keras limitation)",
                hint="apply this layer to the data (data.augment) instead of in the model"))
            calling = False
            continue
        tensors[node.name] = out

    if diagnostics:
        raise SpecError(diagnostics)

    missing_outputs = [o for o in model.outputs if o not in tensors]
    if missing_outputs or not model.outputs:
        raise SpecError(Diagnostic(
            f"model output {', '.join(repr(o) for o in missing_outputs)} names no node or input"
            if missing_outputs else "the model declares no outputs", _outputs_loc(model), "model.outputs"))
    outputs = [tensors[o] for o in model.outputs]
    try:
        return keras.Model(inputs=inputs[0] if len(inputs) == 1 else inputs,
                           outputs=outputs[0] if len(outputs) == 1 else outputs, name=name)
    except Exception as exc:
        raise SpecError(Diagnostic(f"the model cannot be assembled: {build_errors.keras_message(exc)}",
                                   _outputs_loc(model), "model.outputs")) from None


def _outputs_loc(model: ModelSpec):
    """Where to point an error about the outputs: the last output's node, else the last node, else an input."""
    by_name = {n.name: n for n in model.nodes}
    for name in reversed(model.outputs):
        if name in by_name and by_name[name].loc:
            return by_name[name].loc
    candidates: list[NodeSpec | InputSpec] = [*reversed(model.nodes), *model.inputs]
    for spec in candidates:
        if spec.loc:
            return spec.loc
    return None


def _plain(value: Any) -> Any:
    """Read-only mappings from the typed spec -> dicts, as the registry and Keras expect."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _mixed_precision() -> bool:
    """A mixed dtype policy is in force (train.mixed_precision): float16/bfloat16 compute, float32 variables."""
    policy = keras.config.dtype_policy()
    return policy.compute_dtype != policy.variable_dtype


def _layer(node: NodeSpec, built: dict[str, Any], diagnostics: list[Diagnostic], float32: bool = False):
    """The Keras layer of `node`: a new one, or for `shares` the very layer of the shared node.

    `float32`: the node is a model output under mixed precision; unless the spec gives its `dtype`, the
    layer computes in float32 (the Keras mixed-precision guide's advice: a softmax or a loss in float16
    loses precision, and the model's outputs stay float32)."""
    if node.shares:
        if node.shares not in built:
            diagnostics.append(build_errors.node_error(
                node, f"'{node.name}' shares the layer of '{node.shares}', which is not defined before it"))
            return None
        return built[node.shares]        # None if the shared node failed: already reported
    try:
        cls = registry.lookup("layers", node.layer)
        args = {**_plain(node.args), "name": node.name}
        if float32 and "dtype" not in args:
            args["dtype"] = "float32"
        return registry.instantiate(cls, args)
    except SpecError as exc:
        diagnostics.extend(exc.diagnostics)
    except Exception as exc:             # ValueError / TypeError from Keras, UnknownComponent (a KeyError)
        diagnostics.append(build_errors.construction_error(node, exc))
    return None


def _call(layer, args: list):
    if len(args) == 1:
        return layer(args[0])
    kind: type = type(layer)        # not inferred: mypy finds type[Any] unhashable for the cache
    if _takes_list(kind):
        return layer(list(args))
    return layer(*args)


@lru_cache(maxsize=None)
def _takes_list(cls: type[keras.layers.Layer]) -> bool:
    """True if the layer takes several tensors as one list (`Add()([a, b])`),
    False if as positional arguments (`MultiHeadAttention()(query, value)`)."""
    from ..keras_compat import merge_base_class

    if issubclass(cls, merge_base_class()):
        return True
    try:
        params = list(inspect.signature(cls.call).parameters.values())[1:]   # drop self
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is p.empty]
    return len(required) <= 1


def _preprocess(spec: InputSpec, x, layers: Sequence[Any], diagnostics: list[Diagnostic]):
    """Apply the data stage's layers for one input (Normalization, augmentation), named `<input>.<name>`."""
    for layer in layers:
        if not layer.name.startswith(f"{spec.name}."):
            layer.name = f"{spec.name}.{layer.name}"
        try:
            x = layer(x)
        except Exception as exc:
            diagnostics.append(Diagnostic(
                f"the preprocessing layer {type(layer).__name__} '{layer.name}' cannot take input "
                f"'{spec.name}' (shape {build_errors.shape_text(x)}): {build_errors.keras_message(exc)}",
                spec.loc, f"model.inputs.{spec.name}"))
            return None
    return x


def _backbone(node: NodeSpec, tensor):
    """A pretrained network used as a layer (`Backbone: {application: MobileNetV2, ...}`): (its model, its output).

    The model is kept as the node's layer, so `- share: NAME` applies the same backbone again (backbone.py).
    """
    from .backbone import apply_backbone

    return apply_backbone(node, tensor)
