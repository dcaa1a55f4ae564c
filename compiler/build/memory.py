"""How much memory a layer's weights will take, known before Keras allocates them.

`units: 1e12` passes validation (it is a whole number) and, built for real,
asks TensorFlow for terabytes: a raw OOM after many seconds. Before each node's
layer is called, a copy of it (from its config) is built on the same input
shapes inside a `keras.StatelessScope(initialize_variables=False)`: Keras then
creates its variables with their shapes and dtypes but defers their values, so
nothing is allocated. The sum of those shapes, node after node, is checked
against a limit (a quarter of physical memory: training also keeps gradients
and optimizer state of the same size), and the node that crosses it is named at
its spec line with the bytes it would need. `KSPEC_MAX_WEIGHT_BYTES` overrides
the limit (e.g. `4e9`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

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


def weight_bytes(layer: Any, args: list) -> int | None:
    """Bytes of the weights `layer` creates when called on `args` (KerasTensors), without allocating
    them; None when it cannot be told (a layer without a config round trip: the real build decides)."""
    # the deferred-variable list Keras keeps; the clone is called as the real layer will be
    from keras.src.backend.common import global_state

    from .graph import _call

    saved = list(global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True))
    try:
        clone = type(layer).from_config(layer.get_config())
        with keras.StatelessScope(initialize_variables=False):
            _call(clone, args)
        return sum(int(np.prod(v.shape, dtype=np.float64)) * np.dtype(v.dtype).itemsize for v in clone.weights)
    except Exception:   # noqa: BLE001 - an estimate only; building the real layer reports real errors
        return None
    finally:
        global_state.set_global_attribute("uninitialized_variables", saved)


@dataclass
class WeightBudget:
    """Weights of the nodes built so far, against `limit`."""

    limit: int = field(default_factory=weight_limit)
    used: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)

    def check(self, node: NodeSpec, layer: Any, args: list) -> Diagnostic | None:
        """None if `node`'s weights fit; else the located error (and nothing was allocated)."""
        size = weight_bytes(layer, args)
        if size is None:
            return None
        self.used += size
        self.largest = sorted(self.largest + [(size, node.name)], reverse=True)[:3]
        if self.used <= self.limit:
            return None
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
