"""`data.classes`: keep the examples of some classes only, renumbered in the order listed.

    data:
      source: {sklearn: digits}
      classes: [5, 6, 7, 8, 9]      # digit 5 becomes class 0, ..., digit 9 class 4

This is how one data set gives two disjoint tasks (pretrain on digits 0-4, transfer
to 5-9) without writing new files. Classes are matched by name, as the source
names them ("5" for the integer label 5, "setosa" for a text label), so a label
the data does not hold is an error naming the classes it does hold.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import DataError, Diagnostic
from ..spec.types import DataSpec
from .table import Table, did_you_mean, is_one_hot, labels_of


def keep_classes(table: Table, data: DataSpec) -> Table:
    """The examples of `data.classes` only, their labels renumbered 0..k-1 in the listed order."""
    if data.classes is None:
        return table
    outputs = [o for o in table.y if table.tasks.get(o) == "classification"]
    if len(outputs) != 1:
        what = "no classification target" if not outputs else f"{len(outputs)} ({', '.join(outputs)})"
        raise _error(data, f"`classes` selects examples by the class of one classification target, "
                           f"but the data has {what}")
    output = outputs[0]
    names = list(table.class_names.get(output) or [])
    for name in data.classes:
        if name not in names:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise _error(data, f"class {name!r} is not in {table.source}{did_you_mean(name, names)} "
                               f"(its classes: {shown})")
    y = table.y[output]
    labels = labels_of(y)
    wanted = np.array([names.index(c) for c in data.classes])
    keep = np.isin(labels, wanted)
    if not keep.any():
        raise _error(data, f"{table.source} has no examples of the classes {', '.join(data.classes)}")
    renumber = np.full(len(names), -1, dtype=np.int32)
    renumber[wanted] = np.arange(len(wanted), dtype=np.int32)
    new = renumber[labels[keep]]
    if is_one_hot(y):
        new = np.eye(len(wanted), dtype=y.dtype)[new]
    else:
        new = new.reshape((-1,) + y.shape[1:]).astype(y.dtype if y.dtype.kind in "iu" else np.int32)
    rows = (table.rows if table.rows is not None else np.arange(len(y)))[keep]
    return replace(table, x={k: v[keep] for k, v in table.x.items()}, y={**{k: v[keep] for k, v in table.y.items()}, output: new},
                   class_names={**table.class_names, output: list(data.classes)}, rows=rows)


def _error(data: DataSpec, message: str) -> DataError:
    return DataError(Diagnostic(message, data.classes_loc or data.loc, "data.classes"))
