"""Train / validation / test splits: a seeded shuffle, then fractions, stratified for classification.

Sizes follow scikit-learn's convention (ceil(fraction * n) for the held-out
splits) whether or not the split is stratified, so switching `stratify` never
changes how many examples each split holds. The same seed always gives the same
splits; the training split is the only one any statistic is fitted on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from ..spec.types import DataSpec
from .table import Table, is_one_hot, labels_of


@dataclass(frozen=True)
class Arrays:
    """One split: model input name -> array and model output name -> targets (first axis = examples)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    origin: np.ndarray | None = None        # each example's position in the loaded data set (for errors)

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if self.x else 0

    def take(self, index: np.ndarray) -> "Arrays":
        return Arrays({k: v[index] for k, v in self.x.items()}, {k: v[index] for k, v in self.y.items()},
                      self.origin[index] if self.origin is not None else None)

    def sample(self, n: int) -> "Arrays":
        """The first `n` examples (as `Stream.sample` gives them, decoded, for a streamed split)."""
        return self.take(np.arange(min(n, len(self))))


class Streamed(Protocol):
    """A split whose examples a tf.data pipeline reads only when asked (`stream.Stream`,
    `csvstream.CsvStream`, `tfrecord.RecordStream`): what `Arrays` offers but `x`, plus the pipeline
    itself and, after a failed epoch, a DataError naming the file (and line) that broke it."""

    @property
    def y(self) -> dict[str, np.ndarray]: ...

    @property
    def origin(self) -> np.ndarray | None: ...

    def __len__(self) -> int: ...

    def take(self, index: np.ndarray) -> "Streamed": ...

    def sample(self, n: int) -> Arrays: ...

    def dataset(self, batch_size: int, shuffle: bool, seed: int, targets: bool = True, cache: bool = True): ...

    def find_bad_file(self) -> None: ...


Examples = Arrays | Streamed      # one split, in memory or streamed


@dataclass(frozen=True)
class Splits:
    """The data set, split, with what later stages need to know about it."""

    train: Examples                         # Arrays, or a streamed split for streamed sources
    validation: Examples | None             # None when the fraction is 0
    test: Examples | None
    task: str                               # of the first output
    tasks: dict[str, str]
    class_names: dict[str, list[str]]       # classification outputs only
    feature_names: dict[str, list[str]]     # input -> column names, where known
    source: str
    targets: dict[str, str] = field(default_factory=dict)   # output -> target as the user names it
    file: str | None = None                 # the data file (or image folder), when there is one
    lines: tuple[int, ...] | None = None    # the file line of each example (CSV), for errors
    notes: tuple[str, ...] = ()             # said in the run's log and kept in data.json (the cache chosen)
    skipped: tuple[tuple[str, str], ...] = ()   # (file, why) left out under `data.on_bad_file: skip`

    def splits(self) -> dict[str, Examples]:
        """The splits that exist, by name."""
        named = {"train": self.train, "validation": self.validation, "test": self.test}
        return {k: v for k, v in named.items() if v is not None}


def split_table(table: Table, data: DataSpec, seed: int) -> Splits:
    """Shuffle with `seed`, hold out `test` then `validation` (fractions of the whole data set)."""
    n = len(Arrays(table.x, table.y))
    everything = Arrays(table.x, table.y, table.rows if table.rows is not None else np.arange(n))
    n_test, n_val = _count(data.test, n), _count(data.validation, n)
    if data.test < 0 or data.validation < 0 or n - n_test - n_val < 1:
        raise DataError(Diagnostic(
            f"split leaves no training examples: {n} examples, test {data.test} ({n_test}), "
            f"validation {data.validation} ({n_val})", data.loc, "data.split"))
    order = np.random.default_rng(seed).permutation(n)
    labels = _strata(table, data)
    hold_out = _hold_out if table.reader is None else _hold_out_quick
    rest, test = hold_out(order, n_test, labels, seed)
    train, val = hold_out(rest, n_val, labels, seed + 1)
    first = next(iter(table.y), None)
    return Splits(
        train=everything.take(train),
        validation=everything.take(val) if n_val else None,
        test=everything.take(test) if n_test else None,
        task=table.tasks.get(first, "regression") if first else "regression",
        tasks=dict(table.tasks), class_names=dict(table.class_names),
        feature_names=dict(table.feature_names), source=table.source, targets=dict(table.y_from),
        file=table.file, lines=table.lines)


def _count(fraction: float, n: int) -> int:
    return math.ceil(fraction * n - 1e-9) if fraction > 0 else 0


def _strata(table: Table, data: DataSpec) -> np.ndarray | None:
    """Class labels of the first classification output, unless `stratify: false`."""
    if data.stratify is False:
        return None
    for name, task in table.tasks.items():
        if task == "classification":
            return labels_of(table.y[name])
    return None


def _hold_out(index: np.ndarray, count: int, labels: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `index` into (kept, held out) with `count` held out, stratified when possible.

    Stratification needs every class at least twice and room for one example of
    each class on both sides; when the data can't give that, an ordinary split
    of the (already shuffled) order is taken instead, without complaint.
    """
    if count == 0:
        return index, index[:0]
    if labels is not None:
        from .stratify import train_test_split  # scikit-learn's split, without importing it

        try:
            kept, held = train_test_split(index, test_size=count, stratify=labels[index],
                                          random_state=seed % 2 ** 32)
            return np.asarray(kept), np.asarray(held)
        except ValueError:
            pass
    return index[count:], index[:count]


def _hold_out_quick(index: np.ndarray, count: int, labels: np.ndarray | None,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`_hold_out` in numpy, for file lists: no scikit-learn import (2 s) before streaming starts.

    Each class gives its share of `count` (largest remainders settle the rounding), taken
    from the already shuffled `index`, so the split is seeded and stratified."""
    if count == 0:
        return index, index[:0]
    if labels is None:
        return index[count:], index[:count]
    classes, per = np.unique(labels[index], return_counts=True)
    if len(classes) < 2 or per.min() < 2 or count < len(classes) or len(index) - count < len(classes):
        return index[count:], index[:count]
    exact = per * count / len(index)
    quota = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - quota), kind="stable")[:count - quota.sum()]:
        quota[k] += 1
    held = np.zeros(len(index), dtype=bool)
    position = {c: i for i, c in enumerate(classes)}
    taken = np.zeros(len(classes), dtype=int)
    for i, label in enumerate(labels[index]):
        k = position[label]
        if taken[k] < quota[k]:
            held[i], taken[k] = True, taken[k] + 1
    return index[~held], index[held]


def check_labels(splits: Splits, output_units: dict[str, int]) -> None:
    """Raise if a classification target doesn't fit its output layer (the builder knows the units).

    Sparse labels must be < units (a single sigmoid unit takes labels 0 and 1);
    one-hot targets must have exactly `units` columns; regression targets must
    have `units` values per example (Keras would otherwise broadcast silently).
    The error names the data file, the column or array, and (CSV) the line of the
    first offending example.
    """
    parts = list(splits.splits().values())
    for output, units in output_units.items():
        if not parts or output not in parts[0].y:
            continue
        y = np.concatenate([p.y[output] for p in parts])
        origin = (np.concatenate([p.origin for p in parts]) if all(p.origin is not None for p in parts)
                  else None)
        where = target_text(splits, output)
        plural = "s" * (units != 1)
        if splits.tasks.get(output) == "classification" and not is_one_hot(y):
            labels = labels_of(y)
            top, low = int(labels.max()), int(labels.min())
            if low < 0:
                _label_error(splits, output, f"labels in {where} go down to {low}, but class labels start at 0",
                             first=_first(origin, labels < 0),
                             hint="number the classes 0, 1, 2, ... (or give the labels as text)")
            if top >= max(units, 2):
                names = splits.class_names.get(output) or []
                if names and names != [str(i) for i in range(len(names))]:
                    _label_error(splits, output, f"{where} holds {len(names)} classes ({_names(names)}) but "
                                 f"output {output!r} has {units} unit{plural}",
                                 hint=f"give output {output!r} {len(names)} units")
                hint = (f"give output {output!r} {top + 1} units" if units > 1 else
                        "a single sigmoid unit fits only labels 0 and 1")
                if low > 0:
                    hint += f" (the labels start at {low}; label k is class k, so classes below {low} go unused)"
                _label_error(splits, output, f"labels in {where} go up to {top} but output {output!r} has {units} "
                             f"unit{plural}", first=_first(origin, labels >= max(units, 2)), hint=hint)
        else:
            width = y.shape[-1] if y.ndim > 1 else 1
            if width != units:
                kind = "one-hot columns" if is_one_hot(y) else f"value{'s' * (width != 1)} per example"
                _label_error(splits, output, f"{where} has {width} {kind} but output {output!r} has {units} "
                             f"unit{plural}", hint=f"give output {output!r} {width} units, or change the target")


def target_text(splits: Splits, output: str) -> str:
    """The target of `output` as the user knows it: "column 'species' of iris.csv", "array 'y' of d.npz"."""
    target = splits.targets.get(output, output)
    if not splits.file:
        return f"target {target!r}"
    base = os.path.basename(str(splits.file).rstrip("/")) or str(splits.file)
    if splits.lines is not None:
        return f"columns {target} of {base}" if ", " in target else f"column {target!r} of {base}"
    if os.path.isdir(splits.file):
        return f"the class folders of {base}"
    return f"array {target!r} of {base}"


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _first(origin: np.ndarray | None, bad: np.ndarray) -> int | None:
    """The position in the loaded data set of the first offending example."""
    if origin is None or not bad.any():
        return None
    return int(origin[bad].min())


def _label_error(splits: Splits, output: str, message: str, first: int | None = None, hint: str = "") -> None:
    if splits.file:
        line = 0
        if first is not None and splits.lines is not None and first < len(splits.lines):
            line = splits.lines[first]
            message += f" (the first on line {line})"
        elif first is not None:
            message += f" (the first at example {first}, counting from 0)"
        raise DataError(Diagnostic(message, Loc(str(splits.file), line, 1 if line else 0), hint=hint))
    raise DataError(Diagnostic(message, path=f"model.outputs.{output}", hint=hint))
