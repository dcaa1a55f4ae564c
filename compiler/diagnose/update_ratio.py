"""The ratio of update norm to weight norm, per layer: ||dW|| / ||W|| (about 1e-3 is healthy).

    UpdateRatio(log_path, every=1, warn_low=1e-5, warn_high=1e-1, every_batches=None)

An opt-in Keras callback. In each logged epoch (every `every`-th) it measures
the update of the epoch's first training step — and, with `every_batches=N`,
of every N-th step too — for each layer with trainable weights: the norm of
the change of all the layer's trainable weights over that one step, divided by
their norm before it. The epoch's ratio per layer (the mean over its measured
steps) goes to a CSV, `epoch,layer,ratio`, rewritten atomically after each
logged epoch (a resumed run keeps the rows of the epochs before it and
replaces the rest).

Reading it: ~1e-3 is healthy. Far below (< warn_low, 1e-5) the layer barely
learns (learning rate too low, vanishing gradients, a frozen-in-effect
layer); far above (> warn_high, 1e-1) each step rewrites a large part of the
weights (learning rate too high). A layer outside the range gets one printed
warning line, the first time it is.

A spec turns it on with `train.diagnostics: {update_ratio: true}`: see
`diagnostic_callbacks(spec, run_dir)`, which the training driver calls.
Note: with `steps_per_execution: K` Keras calls batch hooks every K steps, so
a measured "step" is K optimizer steps.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..rundir import UPDATE_RATIOS

FILENAME = UPDATE_RATIOS

try:                                       # a real Keras callback when Keras is there (it always is at train time)
    import keras

    _Base: Any = keras.callbacks.Callback   # Any: a base class chosen at import time, which mypy cannot follow
except Exception:                          # pragma: no cover
    _Base = object


def _groups(model) -> list[tuple[str, list]]:
    """(layer name, its trainable variables) for each layer with any; nested models are opened up."""
    import keras

    out = []

    def visit(layer, prefix: str) -> None:
        for child in layer.layers:
            name = f"{prefix}{child.name}"
            if isinstance(child, keras.Model):
                visit(child, f"{name}/")
            elif child.trainable_weights:
                out.append((name, list(child.trainable_weights)))

    visit(model, "")
    return out


class UpdateRatio(_Base):
    """Log ||dW|| / ||W|| per layer and epoch to `log_path` (CSV: epoch, layer, ratio); warn outside
    [warn_low, warn_high]."""

    def __init__(self, log_path: str | os.PathLike, every: int = 1, warn_low: float = 1e-5,
                 warn_high: float = 1e-1, every_batches: int | None = None, verbose: int = 1):
        super().__init__()
        if every < 1 or (every_batches is not None and every_batches < 1):
            raise ValueError("UpdateRatio: `every` and `every_batches` must be at least 1")
        self.log_path = Path(log_path)
        self.every, self.every_batches = int(every), every_batches
        self.warn_low, self.warn_high = float(warn_low), float(warn_high)
        self.verbose = verbose
        self.rows: list[dict[str, Any]] = []
        self.warned: set[tuple[str, str]] = set()
        self._epoch: int | None = None
        self._first_epoch = True
        self._before: list[list[np.ndarray]] | None = None
        self._sums: dict[str, list[float]] = {}

    # -- hooks ----------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:                  # a resumed run: keep the epochs before this one
            self.rows = [r for r in _read(self.log_path) if int(r["epoch"]) < epoch]
            self._first_epoch = False
        self._epoch = epoch if epoch % self.every == 0 else None
        self._sums = {}

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch is None:
            return
        if batch == 0 or (self.every_batches and batch % self.every_batches == 0):
            self._before = [[_numpy(v) for v in variables] for _, variables in _groups(self.model)]

    def on_train_batch_end(self, batch, logs=None):
        if self._before is None:
            return
        for (name, variables), before in zip(_groups(self.model), self._before):
            after = [_numpy(v) for v in variables]
            delta = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before)))
            norm = math.sqrt(sum(float(np.sum(b ** 2)) for b in before)) or \
                math.sqrt(sum(float(np.sum(a ** 2)) for a in after))
            ratio = delta / norm if norm > 0 else 0.0
            self._sums.setdefault(name, []).append(ratio)
        self._before = None

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch is None or not self._sums:
            return
        for name, ratios in self._sums.items():
            ratio = float(np.mean(ratios))
            self.rows.append({"epoch": epoch, "layer": name, "ratio": ratio})
            self._warn(epoch, name, ratio)
        _write(self.log_path, self.rows)

    # -- output -----------------------------------------------------------------------------------
    def _warn(self, epoch: int, name: str, ratio: float) -> None:
        if ratio < self.warn_low and (name, "low") not in self.warned:
            self.warned.add((name, "low"))
            why = ("the layer barely learns: the learning rate is too low, its gradients vanish, "
                   "or its inputs are tiny")
        elif ratio > self.warn_high and (name, "high") not in self.warned:
            self.warned.add((name, "high"))
            why = "each step rewrites much of the layer: the learning rate is too high"
        else:
            return
        if self.verbose:
            print(f"kspec: update ratio of layer '{name}' at epoch {epoch}: ||dW||/||W|| = {ratio:.2g} "
                  f"(healthy is about 1e-3; outside [{self.warn_low:g}, {self.warn_high:g}]): {why}",
                  file=sys.stdout, flush=True)


def _numpy(variable) -> np.ndarray:
    value = variable.numpy() if hasattr(variable, "numpy") else np.asarray(variable)
    return np.array(value, dtype=np.float64, copy=True)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="") as f:
            return [{"epoch": int(r["epoch"]), "layer": r["layer"], "ratio": float(r["ratio"])}
                    for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return []


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", "layer", "ratio"])
    for r in rows:
        writer.writerow([r["epoch"], r["layer"], repr(float(r["ratio"]))])
    from ..rundir import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, out.getvalue())


# -- the spec's switch --------------------------------------------------------------------------

def spec_diagnostics(spec) -> Mapping[str, Any]:
    """`train.diagnostics` of a spec (`{update_ratio: true, gradient_check: true}`)."""
    train = getattr(spec, "train", None)
    return dict(getattr(train, "diagnostics", None) or {})


def diagnostic_callbacks(spec, run_dir: str | os.PathLike, verbose: int = 1) -> list:
    """The callbacks `train.diagnostics` turns on (today: `update_ratio: true` -> UpdateRatio writing
    RUN/update_ratio.csv)."""
    options = spec_diagnostics(spec)
    callbacks = []
    if options.get("update_ratio"):
        callbacks.append(UpdateRatio(Path(run_dir) / FILENAME, verbose=verbose))
    return callbacks
