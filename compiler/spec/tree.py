"""Positioned YAML values: plain dicts and lists that remember where they came from.

`Map` and `Seq` are ordinary `dict` / `list` subclasses (so jsonschema, json and
every other consumer treat them as such) that also carry the source location of
the container, of each key and of each value. Scalars stay plain Python values;
their location lives in the parent. Every stage after loading keeps these
containers, so any error can still point at file:line:col.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import Loc


class Map(dict):
    """A mapping with `loc` (its own position), `key_locs`, `value_locs` and `via`."""

    __slots__ = ("loc", "key_locs", "value_locs", "via", "source_path")

    def __init__(self, items=(), loc: Loc | None = None, via: tuple[Loc, ...] = ()):
        super().__init__(items)
        self.loc = loc
        # Keys are text, but for `--set train.0=...` on a mapping: validation then reports key 0 as unknown.
        self.key_locs: dict[str | int, Loc | None] = {}   # None only in a map that has no location itself
        self.value_locs: dict[str | int, Loc | None] = {}
        self.via = via
        self.source_path: tuple | None = None   # where an expanded node was written (see expand.py)

    def set(self, key: str | int, value: Any, key_loc: Loc | None = None, value_loc: Loc | None = None) -> None:
        """Set `key`, recording its locations (defaulting to the map's own)."""
        self[key] = value
        self.key_locs[key] = key_loc or self.key_locs.get(key) or self.loc
        self.value_locs[key] = value_loc or _own_loc(value) or self.key_locs[key]

    def key_loc(self, key: str) -> Loc | None:
        return self.key_locs.get(key, self.loc)

    def value_loc(self, key: str) -> Loc | None:
        return self.value_locs.get(key, self.key_loc(key))


class Seq(list):
    """A list with `loc` (its own position) and `item_locs` (one per item)."""

    __slots__ = ("loc", "item_locs", "via")

    def __init__(self, items: Iterable = (), loc: Loc | None = None, item_locs: Iterable[Loc | None] = (),
                 via: tuple[Loc, ...] = ()):
        super().__init__(items)
        self.loc = loc
        self.item_locs: list[Loc | None] = list(item_locs)
        self.via = via

    def add(self, value: Any, loc: Loc | None = None) -> None:
        self.append(value)
        self.item_locs.append(loc or _own_loc(value) or self.loc)

    def item_loc(self, index: int) -> Loc | None:
        if 0 <= index < len(self.item_locs) and self.item_locs[index] is not None:
            return self.item_locs[index]
        return self.loc


def _own_loc(value: Any) -> Loc | None:
    return getattr(value, "loc", None) if isinstance(value, (Map, Seq)) else None


def loc_of(value: Any) -> Loc | None:
    """The location of a container value, or None for a scalar."""
    return _own_loc(value)


def via_of(value: Any) -> tuple[Loc, ...]:
    return getattr(value, "via", ()) if isinstance(value, (Map, Seq)) else ()


def locate(root: Any, path: Iterable, key: bool = False) -> tuple[Loc | None, tuple[Loc, ...]]:
    """Location (and use-site chain) of the value at `path` below `root`.

    With `key=True` the last step points at the mapping key rather than its
    value (better for "unknown key" errors). Walks as far as the path exists.
    """
    node, loc, via = root, loc_of(root), via_of(root)
    steps = list(path)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(node, Map) and step in node:
            loc = node.key_loc(step) if (last and key) else node.value_loc(step)
        elif isinstance(node, Seq) and isinstance(step, int) and 0 <= step < len(node):
            loc = node.item_loc(step)
        else:
            break
        node = node[step]
        via = via_of(node) or via
    return loc, via


def format_path(path: Iterable) -> str:
    """`('model', 'layers', 3, 'Conv2D')` -> `model.layers[3].Conv2D`."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += ("." if out else "") + str(step)
    return out


def plain(value: Any) -> Any:
    """A deep copy as plain dicts and lists (for printing and for Keras)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def copy(value: Any, via: tuple[Loc, ...] | None = None) -> Any:
    """A deep copy keeping every location; `via`, if given, replaces the use-site chain."""
    if isinstance(value, Map):
        out = Map(loc=value.loc, via=value.via if via is None else via)
        out.source_path = value.source_path
        for k, v in value.items():
            out.set(k, copy(v, via), value.key_locs.get(k), value.value_locs.get(k))
        return out
    if isinstance(value, Seq):
        return Seq((copy(v, via) for v in value), value.loc, value.item_locs,
                   value.via if via is None else via)
    return value
