"""How much memory a layer's weights will take, known before Keras allocates them.

`units: 1e12` passes validation (it is a whole number) and, built for real,
asks TensorFlow for terabytes: a raw OOM after many seconds. So each node's
layer is built on its input shapes inside a
`keras.StatelessScope(initialize_variables=False)` before it is called: Keras
then creates its variables with their shapes and dtypes but defers their values,
so nothing is allocated yet. The sum of those sizes, node after node, is checked
against a limit (a quarter of physical memory: training also keeps gradients and
optimizer state of the same size); the node that crosses it is named at its spec
line with the bytes it would need, and its variables are dropped. Within the
limit the values are created at once (what leaving a plain `StatelessScope`
does) and the layer is called as usual: it is built once, so this costs nothing
measurable. A layer taking several inputs is sized on a copy (from its config)
called on the same tensors; a layer whose build cannot run deferred is replaced
by a fresh copy and built the ordinary way, unsized. `KSPEC_MAX_WEIGHT_BYTES`
overrides the limit (e.g. `4e9`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .. import keras_compat
from ..errors import Diagnostic
from ..spec.types import NodeSpec
from . import errors as build_errors

ENV_LIMIT = "KSPEC_MAX_WEIGHT_BYTES"
RAM_FRACTION = 0.25


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def weight_limit() -> int:
    """The most bytes of weights a model may have: KSPEC_MAX_WEIGHT_BYTES, else a quarter of RAM."""
    value = os.environ.get(ENV_LIMIT, "").strip()
    if value:
        try:
            return int(float(value))
        except ValueError:
            pass
    ram = physical_memory()
    return int(ram * RAM_FRACTION) if ram else 1 << 62


def size_text(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _pending() -> list:
    """Keras's list of variables created in a stateless scope and not yet given values."""
    return keras_compat.deferred_variables()


def _set_pending(variables: list) -> None:
    keras_compat.set_deferred_variables(variables)


def _bytes(variables) -> int:
    return sum(int(np.prod(v.shape, dtype=np.float64)) * np.dtype(v.dtype).itemsize for v in variables)


def _single_input(layer: Any, args: list) -> bool:
    return (len(args) == 1 and not isinstance(args[0], (list, tuple)) and not layer.built
            and type(layer).build is not keras.layers.Layer.build)


def build_deferred(layer: Any, args: list) -> tuple[Any, int | None]:
    """Build `layer` (one input) on the input's shape with its variables deferred.

    Returns the layer (a fresh copy if its build cannot run deferred) and the bytes of its weights,
    or None when they could not be told. The caller then calls `initialize()` or `drop()`."""
    saved = _pending()
    try:
        with keras.StatelessScope(initialize_variables=False):
            layer.build(tuple(args[0].shape))
        return layer, _bytes(layer.weights)
    except Exception:   # noqa: BLE001 - e.g. a weight made from an array: build it the ordinary way
        _set_pending(saved)
        try:
            return type(layer).from_config(layer.get_config()), None
        except Exception:   # noqa: BLE001
            return layer, None


def clone_bytes(layer: Any, args: list) -> int | None:
    """Bytes of the weights a copy of `layer` (from its config) creates when called on `args`; None if
    that cannot be told. Nothing is allocated, and the real layer is left untouched."""
    from .graph import _call

    saved = _pending()
    try:
        clone = type(layer).from_config(layer.get_config())
        with keras.StatelessScope(initialize_variables=False):
            _call(clone, args)
        return _bytes(clone.weights)
    except Exception:   # noqa: BLE001 - an estimate only; building the real layer reports real errors
        return None
    finally:
        _set_pending(saved)


@dataclass
class WeightBudget:
    """Weights of the nodes built so far, against `limit`."""

    limit: int = field(default_factory=weight_limit)
    used: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)

    def check(self, node: NodeSpec, layer: Any, args: list) -> tuple[Any, Diagnostic | None]:
        """(the layer to call, None) if `node`'s weights fit, their values then created; else
        (layer, the located error), with nothing allocated."""
        if _single_input(layer, args):
            saved = _pending()
            layer, size = build_deferred(layer, args)
            if size is not None and self._over(node, size):
                _set_pending(saved)          # never given values: nothing is allocated
                return layer, self._error(node, size)
            with keras.StatelessScope():     # leaving it gives the deferred variables their values
                pass
            return layer, None
        size = clone_bytes(layer, args) if len(args) > 1 else None
        if size is not None and self._over(node, size):
            return layer, self._error(node, size)
        return layer, None

    def _over(self, node: NodeSpec, size: int) -> bool:
        self.used += size
        self.largest = sorted(self.largest + [(size, node.name)], reverse=True)[:3]
        return self.used > self.limit

    def _error(self, node: NodeSpec, size: int) -> Diagnostic:
        where = (f"{node.layer} '{node.name}' needs {size_text(size)} of weights"
                 + (f", {size_text(self.used)} for the model so far" if self.used != size else ""))
        others = ", ".join(f"'{name}' {size_text(s)}" for s, name in self.largest if name != node.name)
        return build_errors.node_error(
            node, f"{where}: more than the {size_text(self.limit)} allowed"
                  + (f" (largest: {others})" if others else ""),
            hint="make the layer smaller; " + (f"the limit is {ENV_LIMIT}" if os.environ.get(ENV_LIMIT, "").strip()
                                               else f"the limit is a quarter of this machine's memory "
                                                    f"({size_text(physical_memory())}); set {ENV_LIMIT}=BYTES "
                                                    "to change it"))
