"""`--set PATH=VALUE`: command-line overrides on dotted paths.

`train.epochs=5`, `train.optimizer.Adam.learning_rate=0.01`, `model.layers[2].Dense.units=64`
(or `model.layers.2...`). VALUE is read as YAML, so `5` is a number, `[8, 8, 1]`
a list and `{Adam: {}}` a mapping. Missing mapping keys are created.
"""

from __future__ import annotations

import re

from ..errors import Collector, Loc
from .load import load_text
from .tree import Map, Seq

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for name, index in _STEP.findall(path):
        steps.append(int(index) if index else (int(name) if name.isdigit() else name))
    return steps


def apply_overrides(tree: Map, overrides: list[str], errors: Collector) -> None:
    """Apply each `PATH=VALUE` to `tree` in place; problems go to `errors`."""
    for text in overrides:
        where = Loc(f"--set {text}")
        path, sep, raw = text.partition("=")
        steps = parse_path(path.strip())
        if not sep or not steps:
            errors.add("an override is written PATH=VALUE, e.g. train.epochs=5", where)
            continue
        try:
            value = load_text(raw, f"--set {text}")
        except Exception as exc:  # a SpecError from the YAML reader
            errors.add(f"cannot read the value: {exc}", where)
            continue
        node: Map | Seq = tree
        for i, step in enumerate(steps[:-1]):
            child = node.get(str(step)) if isinstance(node, Map) else (
                node[step] if isinstance(node, Seq) and isinstance(step, int) and step < len(node) else None)
            if child is None and isinstance(node, Map):
                child = Map(loc=where)
                node.set(str(step), child, where, where)
            if not isinstance(child, (Map, Seq)):
                errors.add(f"cannot set '{path}': '{_show(steps[:i + 1])}' is not a mapping or list", where)
                break
            node = child
        else:
            last = steps[-1]
            if isinstance(node, Map):
                node.set(str(last), value, where, where)   # a mapping's keys are text, also `class_weight.1`
            elif isinstance(node, Seq) and isinstance(last, int) and last < len(node):
                node[last] = value
                node.item_locs[last] = where
            else:
                errors.add(f"cannot set '{path}': no item {last!r} there", where)


def _show(steps) -> str:
    return ".".join(str(s) for s in steps)
