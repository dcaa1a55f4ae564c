"""Fit a loaded `Table` to the model's declared inputs: reshape, shape, dtype, length, NaN checks.

This is where data and model first meet, so every mismatch is reported here in
the user's terms (the input's name, the shape they declared, the reshape that
would fix it) instead of as a Keras shape error halfway into `fit`.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from ..spec.types import DataSpec, InputSpec, ModelSpec
from .table import Table


def bind(table: Table, data: DataSpec, model: ModelSpec) -> Table:
    """The table with each input reshaped/cast as the model expects, after checking everything fits."""
    _check_lengths(table, data)
    if data.reshape and len(model.inputs) != 1:
        raise DataError(Diagnostic(
            f"`reshape` applies to a single-input model, but this one has {len(model.inputs)} inputs "
            f"({', '.join(i.name for i in model.inputs)})", data.loc, "data.reshape",
            hint="store each input in its final shape (one npz array per input)"))
    x = {}
    for spec in model.inputs:
        array = table.x[spec.name]
        if data.reshape:
            array = _reshape(array, data)
        elif array.ndim == 1 and len(spec.shape) == 1 and spec.shape[0] in (1, None):
            array = array[:, None]
        _check_shape(spec, array, data, table)
        x[spec.name] = _cast(spec, array, table, data)
    for name, array in x.items():
        _check_finite(array, f"input {name!r} ({table.x_from.get(name, 'x')})", table, data)
    for name, array in table.y.items():
        _check_finite(array, f"target {table.y_from.get(name, name)!r} of output {name!r}", table, data)
    return replace(table, x=x)


def shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_lengths(table: Table, data: DataSpec) -> None:
    counts = {f"input {k!r}": len(v) for k, v in table.x.items()}
    counts.update({f"output {k!r}": len(v) for k, v in table.y.items()})
    if len(set(counts.values())) > 1:
        raise _error(table, data, "inputs and targets have different numbers of examples: "
                     + ", ".join(f"{k}: {n}" for k, n in counts.items()))
    if not next(iter(counts.values()), 0):
        raise _error(table, data, f"{table.source} has no examples")


def _reshape(array: np.ndarray, data: DataSpec) -> np.ndarray:
    assert data.reshape is not None, "called only for a spec with `reshape`"
    target = tuple(data.reshape)
    try:
        return array.reshape((len(array), *target))
    except ValueError:
        size = math.prod(array.shape[1:])
        raise DataError(Diagnostic(
            f"cannot reshape examples of shape {shape_text(array.shape[1:])} ({size} values) into "
            f"{shape_text(target)}", data.loc, "data.reshape")) from None


def data_origin(table: Table, name: str) -> str:
    """Where input `name`'s data came from, for messages: "array 'x' of d.npz", "sklearn:digits features"."""
    origin = table.x_from.get(name)
    if table.file:
        base = os.path.basename(str(table.file).rstrip("/")) or str(table.file)
        if not origin or origin == base:
            return base
        return origin if base in origin else f"{origin} of {base}"
    if not origin or origin == "x":
        return table.source
    return origin


def _check_shape(spec: InputSpec, array: np.ndarray, data: DataSpec, table: Table) -> None:
    have, want = array.shape[1:], tuple(spec.shape)
    if len(have) == len(want) and all(w is None or w == h for w, h in zip(want, have)):
        return
    message = (f"input {spec.name!r} expects shape {shape_text(want)} per example but the data "
               f"({data_origin(table, spec.name)}) has shape {shape_text(have)}")
    sizes = [w for w in want if w is not None]
    if len(sizes) == len(want) and math.prod(sizes) == math.prod(have) and not data.reshape:
        message += f"; add `reshape: [{', '.join(map(str, want))}]` under data"
    raise DataError(Diagnostic(message, spec.loc or data.loc, f"model.inputs.{spec.name}"))


def _cast(spec: InputSpec, array: np.ndarray, table: Table, data: DataSpec) -> np.ndarray:
    """The input's declared dtype; integer inputs (token ids) must hold whole numbers."""
    if spec.dtype == "string":
        return array
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:            # bfloat16 and friends: Keras casts float32 itself
        dtype = np.dtype(np.float32)
    if array.dtype.kind in "USO":
        raise _error(table, data, f"input {spec.name!r} is {spec.dtype} but "
                     f"{table.x_from.get(spec.name, 'its data')} holds text")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        bad = np.flatnonzero((np.mod(array, 1) != 0).reshape(len(array), -1).any(axis=1))
        if len(bad):
            raise _error(table, data, f"input {spec.name!r} is {spec.dtype} but example {bad[0]} "
                         "(counting from 0) holds non-integer values")
    return array.astype(dtype, copy=False)


def _check_finite(array: np.ndarray, what: str, table: Table, data: DataSpec) -> None:
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(array[i]).any() else "an infinite value"
        row = int(table.rows[i]) if table.rows is not None else i       # its position in the file
        raise _error(table, data, f"{what} has {kind} at example {row} (counting from 0) in {table.source}",
                     hint="missing values are not allowed; fill or drop them")


def _error(table: Table, data: DataSpec, message: str, hint: str = "") -> DataError:
    if table.file:
        return DataError(Diagnostic(message, Loc(table.file), hint=hint))
    return DataError(Diagnostic(message, data.loc, "data.source", hint=hint))
