"""A loaded data set before it is split, and the label helpers every stage shares.

Every source (sklearn, csv, npz, images, synthetic) produces one `Table` whose
arrays are already keyed by the model's input and output names, so binding,
splitting and preprocessing never need to know where the data came from. The
`x_from` / `y_from` descriptions ("column 'age'", "array 'x'") exist only so
later errors can still name what the user wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from ..spec.types import DataSpec
from ..suggest import did_you_mean  # noqa: F401 - the one implementation, re-exported for compiler/data/

# An integer target with at most this many distinct values is a classification target.
MAX_CLASSES = 50
# Integer class labels are class indices (label k is class k), so the class list runs up to the largest
# label: a mistyped 100000000 must be an error before a list of 10^8 class names is built.
MAX_LABEL = 100_000


class LabelTooLarge(ValueError):
    """An integer class label >= MAX_LABEL, at position `index` of the target."""

    def __init__(self, value: int, index: int, distinct: int):
        super().__init__(f"class label {value} >= {MAX_LABEL}")
        self.value, self.index, self.distinct = value, index, distinct


@dataclass(frozen=True)
class Table:
    """All examples of a data set, keyed by model input / output name (first axis = examples)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    tasks: dict[str, str]                       # output -> "classification" | "regression"
    class_names: dict[str, list[str]]           # classification outputs only
    source: str                                 # "sklearn:iris", a file path...
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    x_from: dict[str, str] = field(default_factory=dict)   # input -> "array 'x'", "columns a, b"
    y_from: dict[str, str] = field(default_factory=dict)   # output -> "column 'species'"
    file: str | None = None                     # the file errors point at, when there is one
    lines: tuple[int, ...] | None = None        # the file line of each example (CSV), for errors
    rows: np.ndarray | None = None              # each example's position in the source (None: 0..n-1)
    reader: Any = None                          # streamed sources: x holds file paths, read by this (images)
    skipped: tuple[tuple[str, str], ...] = ()   # (file, why) left out under `data.on_bad_file: skip`


def source_error(data: DataSpec, message: str, hint: str = "") -> DataError:
    """An error about the `data.source` section of the spec."""
    return DataError(Diagnostic(message, data.loc, "data.source", hint=hint))


def file_error(file: str, message: str, line: int = 0, col: int = 0, hint: str = "") -> DataError:
    """An error about a data file, at a line when known (CSV)."""
    return DataError(Diagnostic(message, Loc(file, line, col if line else 0), hint=hint))


def check_params(data: DataSpec, allowed: Iterable[str], what: str) -> None:
    """Reject parameters a source does not take (a typo would otherwise be ignored)."""
    allowed = list(allowed)
    for key in data.params:
        if key not in allowed:
            raise source_error(
                data, f"unknown parameter {key!r} for {what}{did_you_mean(key, allowed)} "
                f"(parameters: {', '.join(allowed)})")


def assign(names: tuple[str, ...], array: np.ndarray, what: str, source: str, data: DataSpec) -> dict[str, np.ndarray]:
    """Give a source's single feature matrix (or target) to the model's single input (or output)."""
    if len(names) != 1:
        raise source_error(
            data, f"the model has {len(names)} {what}s ({', '.join(names)}) but {source} "
            f"yields a single {'feature matrix' if what == 'input' else 'target'}",
            hint="use an npz file with one array per model input and output, named after them")
    return {names[0]: array}


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Class indices (int32) and class names for a classification target.

    Strings and booleans become indices into their sorted distinct values.
    Non-negative integers are kept as they are (label k is class k, so the
    labels a user sees in their file are the ones the model predicts), with
    names "0".."max"; negative integers (-1/1) are re-indexed like strings.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iu" and (values.size == 0 or values.min() >= 0):
        top = int(values.max()) + 1 if values.size else 0
        if top > MAX_LABEL:
            flat = values.reshape(-1)
            raise LabelTooLarge(int(flat.max()), int(np.argmax(flat)) // max(1, values.size // len(values)),
                                len(np.unique(flat)))
        return values.astype(np.int32), [str(i) for i in range(top)]
    classes, index = np.unique(values, return_inverse=True)
    return index.reshape(values.shape).astype(np.int32), [str(c) for c in classes]


def is_one_hot(y: np.ndarray) -> bool:
    """Rows of 0/1 that each hold exactly one 1 (a one-hot encoded target)."""
    return (y.ndim == 2 and y.shape[1] > 1 and y.dtype.kind in "biuf"
            and bool(np.all((y == 0) | (y == 1))) and bool(np.all(y.sum(axis=1) == 1)))


def detect_task(y: np.ndarray) -> str:
    """Classification for strings, booleans, one-hot rows and integers with few distinct values."""
    if y.dtype.kind in "USOb" or is_one_hot(y):
        return "classification"
    if y.dtype.kind in "iu" and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return "classification" if len(np.unique(y)) <= MAX_CLASSES else "regression"
    return "regression"


def labels_of(y: np.ndarray) -> np.ndarray:
    """The integer class of each example, whether `y` is (n,), (n, 1) or one-hot (n, k)."""
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1).astype(np.int64)
    return np.asarray(y).reshape(len(y)).astype(np.int64)
