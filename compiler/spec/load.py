"""Read a YAML file into a positioned tree, safely.

PyYAML's event stream is turned into `Map`/`Seq`/scalars by a small iterative
builder (no recursion, so deep nesting cannot overflow the stack) that:

- reads scalars the YAML 1.2 way, as editors do: `1e-4` is a float, `on`/`yes`
  are strings, only `true`/`false` are booleans;
- refuses every tag that would build a Python object (`!!python/...`, custom `!tags`);
- rejects duplicate keys (PyYAML silently keeps the last one);
- bounds document size, nesting depth and alias expansion (an alias bomb
  fails in microseconds instead of eating memory).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import Collector, Diagnostic, Loc, SpecError
from .tree import Map, Seq

MAX_BYTES = 2_000_000      # a 300-layer spec is ~20 kB
MAX_DEPTH = 100            # real specs nest < 15 deep
MAX_NODES = 500_000        # nodes after alias expansion: the alias-bomb bound

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution).
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq")} | {"!"}


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar under the YAML 1.2 core schema."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def _tagged(text: str, tag: str) -> Any:
    """A scalar with an explicit core tag (`!!str 1`, `!!float 3`)."""
    kind = tag[len(_CORE):] if tag.startswith(_CORE) else "str"
    if kind in ("str", "map", "seq") or tag == "!":
        return text
    value = resolve_plain(text)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "bool": bool, "null": type(None)}[kind]
    if not isinstance(value, expected) or (kind == "int" and isinstance(value, bool)):
        raise ValueError(f"'{text}' is not a valid !!{kind}")
    return value


def _loc(file: str, mark) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


class _Frame:
    __slots__ = ("container", "anchor", "key", "key_loc", "size")

    def __init__(self, container, anchor):
        self.container, self.anchor, self.key, self.key_loc, self.size = container, anchor, None, None, 1


def load_text(text: str, file: str = "<string>") -> Any:
    """Parse YAML text into a positioned tree. Raises SpecError listing every problem."""
    if len(text) > MAX_BYTES:
        raise SpecError(Diagnostic(f"file is {len(text):,} bytes; a spec may be at most {MAX_BYTES:,}",
                                   Loc(file, 1, 1)))
    errors = Collector()
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, node count)
    stack: list[_Frame] = []
    documents: list[Any] = []
    total = 0

    def attach(value: Any, loc: Loc, size: int) -> None:
        nonlocal total
        total += size
        if total > MAX_NODES:
            raise SpecError(Diagnostic(
                f"document expands to more than {MAX_NODES:,} values (an alias bomb?)", loc))
        if not stack:
            documents.append(value)
            return
        frame = stack[-1]
        frame.size += size
        box = frame.container
        if isinstance(box, Seq):
            box.add(value, loc)
        elif frame.key is None and frame.key_loc is None:  # this value is a key
            if isinstance(value, (Map, Seq)):
                errors.add("a mapping key must be a plain scalar", loc)
                frame.key, frame.key_loc = "<complex key>", loc
            else:
                frame.key, frame.key_loc = _key_text(value), loc
        else:
            key, key_loc = frame.key, frame.key_loc
            frame.key = frame.key_loc = None
            if key in box:
                first = box.key_locs[key]
                errors.add(f"duplicate key '{key}' (first defined at line {first.line})", key_loc)
            else:
                box.set(key, value, key_loc, loc)

    try:
        for event in yaml.parse(text, Loader=_Parser):
            kind = type(event).__name__
            if kind in ("StreamStartEvent", "StreamEndEvent", "DocumentEndEvent"):
                continue
            loc = _loc(file, event.start_mark)
            if kind == "DocumentStartEvent":
                if documents:
                    errors.add("a spec file holds one YAML document; found a second '---'", loc)
                    break
                continue
            tag = getattr(event, "tag", None)
            if tag is not None and tag not in _ALLOWED_TAGS:
                errors.add(f"YAML tag '{tag}' is not allowed: a spec is plain data and no tag may "
                           "build an object", loc, hint="remove the tag")
                tag = None
            if kind == "AliasEvent":
                if event.anchor not in anchors:
                    errors.add(f"unknown alias '*{event.anchor}'", loc)
                    attach(None, loc, 1)
                else:
                    value, size = anchors[event.anchor]
                    attach(value, loc, size)
            elif kind == "ScalarEvent":
                if tag is not None:
                    try:
                        value = _tagged(event.value, tag)
                    except ValueError as exc:
                        errors.add(str(exc), loc)
                        value = event.value
                elif event.implicit[0]:  # plain (unquoted) scalar
                    value = resolve_plain(event.value)
                else:
                    value = event.value
                if event.anchor:
                    anchors[event.anchor] = (value, 1)
                attach(value, loc, 1)
            elif kind in ("MappingStartEvent", "SequenceStartEvent"):
                if len(stack) >= MAX_DEPTH:
                    raise SpecError(Diagnostic(f"nesting deeper than {MAX_DEPTH} levels", loc))
                container = Map(loc=loc) if kind == "MappingStartEvent" else Seq(loc=loc)
                stack.append(_Frame(container, event.anchor))
            elif kind in ("MappingEndEvent", "SequenceEndEvent"):
                frame = stack.pop()
                if frame.anchor:
                    anchors[frame.anchor] = (frame.container, frame.size)
                total -= frame.size - 1  # children were already counted
                attach(frame.container, frame.container.loc, frame.size)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _loc(file, mark) if mark else Loc(file)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        errors.add(f"invalid YAML: {problem}", where)
    except yaml.YAMLError as exc:  # e.g. a reader error on a control character
        errors.add(f"invalid YAML: {exc}", Loc(file, 1, 1))
    errors.raise_if_any()
    return documents[0] if documents else None


def _key_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def load_file(path: str | Path, display: str | None = None) -> Any:
    """Load a spec file; `display` is the name used in messages (default: the path as given)."""
    path = Path(path)
    name = display or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(Diagnostic(f"no such file: {name}")) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise SpecError(Diagnostic(f"cannot read {name}: {exc.strerror}")) from None
    if len(raw) > MAX_BYTES:
        raise SpecError(Diagnostic(f"file is {len(raw):,} bytes; a spec may be at most {MAX_BYTES:,}",
                                   Loc(name, 1, 1)))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(Diagnostic("file is not valid UTF-8", Loc(name, line, 1))) from None
    return load_text(text, name)
