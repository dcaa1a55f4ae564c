"""Loss against labels and output units, checked before training (issue 13).

Keras finds a loss that does not fit its labels only inside `fit`, seconds in, with a raw
ValueError and no location (or not at all: softmax + binary_crossentropy on 3 classes trains
and means nothing). Here, per output, before any epoch:

- class ids (0..C-1) with a categorical (one-hot) loss -> sparse_categorical_crossentropy;
- one-hot labels with a sparse loss -> categorical_crossentropy;
- binary_crossentropy with more than two classes, or several units on class ids -> the
  sparse categorical loss (softmax, one unit per class);
- a categorical loss on a single unit (softmax over one unit is always 1) -> binary_crossentropy;
- accuracy on a regression target: a warning.

Each error is a SpecError at `train.loss` (exit 2), saying which loss fits. `kspec train` runs it
before TensorFlow starts when the spec's output layers say their units (a Dense with `units`);
run.py runs it again on the built model, before the first epoch. No TensorFlow here.
"""

from __future__ import annotations

import sys
from typing import Mapping

import numpy as np

from ..errors import Diagnostic, SpecError

SPARSE = {"sparsecategoricalcrossentropy"}
CATEGORICAL = {"categoricalcrossentropy", "categoricalfocalcrossentropy"}
BINARY = {"binarycrossentropy", "binaryfocalcrossentropy"}
ACCURACY = {"accuracy", "acc", "binaryaccuracy", "categoricalaccuracy", "sparsecategoricalaccuracy",
            "topkcategoricalaccuracy", "sparsetopkcategoricalaccuracy"}


def _canonical(name: str) -> str:
    return str(name).replace("_", "").lower()


def spec_output_units(spec) -> dict[str, int]:
    """The units of each output whose layer states them (a Dense with an integer `units`), from the spec
    alone: enough to check the losses before TensorFlow starts."""
    nodes = {n.name: n for n in spec.model.nodes}
    out = {}
    for name in spec.model.outputs:
        node = nodes.get(name)
        units = node.args.get("units") if node is not None and node.layer == "Dense" else None
        if isinstance(units, int) and not isinstance(units, bool):
            out[name] = units
    return out


def check_losses(spec, splits, units: Mapping[str, int], warn: bool = True) -> None:
    """Raise SpecError (every mismatch at once) when a loss does not fit its output's labels and units."""
    from ..data.split import target_text
    from ..data.table import is_one_hot, labels_of

    parts = list(splits.splits().values())
    problems: list[Diagnostic] = []
    for output, k in units.items():
        component = spec.train.losses.get(output)
        if component is None or not parts or output not in parts[0].y:
            continue
        y = np.concatenate([p.y[output] for p in parts])
        task = splits.tasks.get(output)
        loss = _canonical(component.name)
        where = target_text(splits, output)
        loc = component.loc or spec.train.loc
        if warn and task == "regression":
            _warn_accuracy(spec, output, where)
        if task != "classification" or not len(y):
            continue
        one_hot = is_one_hot(y)
        names = (splits.class_names or {}).get(output)
        classes = len(names) if names else (y.shape[1] if one_hot else int(labels_of(y).max()) + 1)
        message, fits = _mismatch(loss, component.name, one_hot, classes, k, output, where)
        if message:
            problems.append(Diagnostic(message, loc, "train.loss", hint=fits))
    if problems:
        raise SpecError(problems)


def _mismatch(loss: str, written: str, one_hot: bool, classes: int, units: int, output: str,
              where: str) -> tuple[str, str]:
    unit_text = f"output {output!r} has {units} unit{'s' * (units != 1)}"
    if one_hot and loss in SPARSE:
        return (f"train.loss {written} expects class ids (0, 1, 2, ...), but {where} is one-hot ({classes} columns)",
                "use `loss: categorical_crossentropy` for one-hot labels")
    if not one_hot and loss in CATEGORICAL:
        fits = ("use `loss: sparse_categorical_crossentropy` for class ids" if units > 1 else
                "use `loss: binary_crossentropy` with one sigmoid unit for two classes")
        return (f"train.loss {written} expects one-hot labels, but {where} holds class ids (0..{classes - 1})", fits)
    if loss in BINARY and not one_hot and (classes > 2 or units > 1):
        if classes > 2:
            return (f"train.loss {written} scores each unit as its own yes/no question, but {where} holds "
                    f"{classes} classes ({unit_text}): one class per example is a categorical problem",
                    f"use `loss: sparse_categorical_crossentropy` with {classes} softmax units on output {output!r}")
        return (f"train.loss {written} on class ids needs one sigmoid unit, but {unit_text}",
                f"use `loss: sparse_categorical_crossentropy` (softmax), or give output {output!r} 1 unit "
                "with activation sigmoid")
    if units == 1 and (loss in SPARSE or loss in CATEGORICAL):
        return (f"train.loss {written} needs one unit per class, but {unit_text} (a softmax over one unit is "
                f"always 1, so nothing is learnt)",
                f"use `loss: binary_crossentropy` with activation sigmoid for two classes, or give output "
                f"{output!r} {max(classes, 2)} units")
    return "", ""


def _warn_accuracy(spec, output: str, where: str) -> None:
    for metric in spec.train.metrics.get(output, ()):
        if _canonical(metric.name) in ACCURACY:
            loc = f"{metric.loc}: " if metric.loc else ""
            print(f"{loc}warning: metric {metric.name} on output {output!r}, a regression target ({where}): "
                  "accuracy counts exact matches of real numbers, which means nothing here (at train.metrics)\n"
                  "  hint: use mae or mse (or RootMeanSquaredError) for a regression target",
                  file=sys.stderr, flush=True)
