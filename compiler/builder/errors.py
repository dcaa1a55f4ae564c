"""Keras exceptions raised while building or compiling, turned into diagnostics on the spec.

Keras reports a bad argument or an incompatible shape with a ValueError or a
TypeError whose text names Keras's own objects (`layer 'conv2d_3'`, `Input 0`)
and often carries a long "Arguments received by ..." tail. The user wrote a
spec, not that Python: each message here names the node, its layer class, the
nodes feeding it with their shapes, and keeps Keras's own explanation trimmed
to its first sentence(s). The Diagnostic carries the node's file:line:col,
its path in the spec and the block use sites it came through (`via`).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import Diagnostic, Loc
from ..registry import UnknownComponent
from ..spec.types import Component, NodeSpec

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPER = re.compile(r"Exception encountered when calling [\w.]+\(\)\.\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
_NDIM = re.compile(r"expected (min_|max_)?ndim=(\d+), found ndim=(\d+)")
_INPUT_INDEX = re.compile(r"^Input (\d+)\b")

MAX_CHARS = 300


def keras_message(exc: BaseException, max_chars: int = MAX_CHARS) -> str:
    """Keras's own explanation, without colour codes, wrappers and the argument dump,
    trimmed to the sentences that fit in `max_chars` (at least the first one)."""
    if isinstance(exc, UnknownComponent):
        return str(exc)
    text = _ANSI.sub("", str(exc))
    if isinstance(exc, KeyError) and text.startswith(("'", '"')) and text.endswith(("'", '"')):
        text = text[1:-1]
    text = _WRAPPER.sub("", text)
    text = text.split("Arguments received by")[0]
    text = " ".join(text.split())
    if not text:
        return type(exc).__name__
    if len(text) <= max_chars:
        return text
    kept = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{kept} {sentence}".strip()
        if kept and len(candidate) > max_chars:
            break
        kept = candidate
    if len(kept) > max_chars:
        kept = kept[: max_chars - 1].rstrip() + "…"
    return kept


def shape_text(tensor: Any) -> str:
    if isinstance(tensor, (list, tuple)):          # a layer with several outputs (return_state...)
        return "[" + ", ".join(shape_text(t) for t in tensor) + "]"
    shape = getattr(tensor, "shape", None)
    if shape is None:
        return "?"
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def inputs_text(names: Sequence[str], tensors: Sequence[Any]) -> str:
    """`'flatten' (shape (None, 64))`, or several joined with commas and 'and'."""
    parts = [f"'{n}' (shape {shape_text(t)})" for n, t in zip(names, tensors)]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _axes(layer_class: str, ndim: int, channels_first: bool) -> str:
    """Plain names for the axes a layer expects: (batch, height, width, channels)."""
    if ndim == 2:
        return "(batch, features)"
    recurrent = any(k in layer_class for k in ("LSTM", "GRU", "RNN", "Attention", "Bidirectional"))
    if ndim == 3:
        if recurrent:
            return "(batch, timesteps, features)"
        inner = ["steps"]
    elif ndim == 4:
        inner = ["height", "width"]
    elif ndim == 5:
        inner = ["time", "height", "width"] if "ConvLSTM" in layer_class else ["depth", "height", "width"]
    else:
        return ""
    axes = ["batch", "channels", *inner] if channels_first else ["batch", *inner, "channels"]
    return "(" + ", ".join(axes) + ")"


def construction_error(node: NodeSpec, exc: BaseException) -> Diagnostic:
    """A layer could not be created from the node's arguments (Dropout rate 1.5, an unknown keyword)."""
    if isinstance(exc, UnknownComponent) and exc.kind == "layers" and exc.name == node.layer:
        return Diagnostic(f"node '{node.name}': {str(exc)}", node.loc, node.path, via=node.via)
    return Diagnostic(
        f"{node.layer} '{node.name}' cannot be created from its arguments: {keras_message(exc)}",
        node.loc, node.path, via=node.via)


def call_error(node: NodeSpec, layer: Any, exc: BaseException,
               input_names: Sequence[str], input_tensors: Sequence[Any]) -> Diagnostic:
    """A layer could not take the tensors of its input nodes (Conv2D after Flatten, Add of mismatched shapes)."""
    message = keras_message(exc)
    cls = node.layer
    what = "its inputs" if len(input_names) > 1 else "its input"
    if layer is not None and len(input_names) == 1 and _is_merge(layer):
        return Diagnostic(
            f"{cls} '{node.name}' combines several inputs, but it is given one: "
            f"{inputs_text(input_names, input_tensors)}", node.loc, node.path, via=node.via,
            hint=f"list the nodes to combine under `inputs`, e.g. `inputs: [{input_names[0]}, OTHER]`")
    if layer is not None and len(input_names) > 1 and _takes_one_input(layer):
        return Diagnostic(
            f"{cls} '{node.name}' takes one input, but `inputs` lists {len(input_names)}: "
            f"{inputs_text(input_names, input_tensors)}", node.loc, node.path, via=node.via,
            hint="list one node under `inputs`, or combine them first (Concatenate, Add)")
    ndim = _NDIM.search(message)
    if ndim:
        bound, expected, found = ndim.group(1) or "", int(ndim.group(2)), int(ndim.group(3))
        index = _INPUT_INDEX.search(message)
        i = int(index.group(1)) if index and int(index.group(1)) < len(input_names) else 0
        channels_first = getattr(layer, "data_format", None) == "channels_first"
        axes = _axes(cls, expected, channels_first)
        if bound == "max_" and found > expected:
            expected_text = f"an input of at most {expected} dimensions"
        elif bound == "min_" and found > expected:
            expected_text = f"an input of at least {expected} dimensions"
        else:               # Conv2D says min_ndim=4: "a 4-D input" reads better
            expected_text = f"a {expected}-D input" + (f" {axes}" if axes else "")
        source = f"'{input_names[i]}'" if input_names else "its input"
        if found < expected:
            hint = "add a Reshape or check the order of layers"
        else:
            hint = "add a Flatten, a global pooling layer or a Reshape before it, or check the order of layers"
        shape = shape_text(input_tensors[i]) if input_tensors else "?"
        text = f"{cls} '{node.name}' cannot take {what}: expected {expected_text} but {source} gives shape {shape} — {hint}"
        return Diagnostic(text, node.loc, node.path, via=node.via)
    hint = ""
    if "must be fully-defined" in message:
        hint = ("a dimension the layer's weights depend on (usually the last) is unknown (null): "
                "give it a size in model.inputs")
    if input_names:
        text = f"{cls} '{node.name}' cannot take {what} {inputs_text(input_names, input_tensors)}: {message}"
    else:
        text = f"{cls} '{node.name}' failed: {message}"
    return Diagnostic(text, node.loc, node.path, via=node.via, hint=hint)


def _is_merge(layer: Any) -> bool:
    from ..keras_compat import merge_base_class

    return isinstance(layer, merge_base_class())


def _takes_one_input(layer: Any) -> bool:
    """A Keras layer (not a plugin's) that is neither a merge nor an attention layer: one tensor in."""
    cls = type(layer)
    return (cls.__module__.startswith("keras.") and not _is_merge(layer)
            and "Attention" not in cls.__name__)


def node_error(node: NodeSpec, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(message, node.loc, node.path, via=node.via, hint=hint)


def component_error(component: Component | None, what: str, exc: BaseException,
                    loc: Loc | None = None, path: str = "") -> Diagnostic:
    """An optimizer, loss or metric Keras refused (`train.optimizer`, `train.loss`)."""
    name = component.name if component is not None else what
    return Diagnostic(f"{what} '{name}' cannot be created: {keras_message(exc)}",
                      (component.loc if component is not None else None) or loc,
                      (component.path if component is not None else "") or path)
