"""Read a YAML file into a positioned tree, safely.

PyYAML's event stream is turned into `Map`/`Seq`/scalars by a small iterative
builder (no recursion, so deep nesting cannot overflow the stack) that:

- reads scalars the YAML 1.2 way, as editors do: `1e-4` is a float, `on`/`yes`
  are strings, only `true`/`false` are booleans;
- refuses every tag that would build a Python object (`!!python/...`, custom `!tags`);
- rejects duplicate keys (PyYAML silently keeps the last one);
- bounds document size, nesting depth, the length of one value, and what
  aliases expand to, in values and in characters (an alias bomb, or one long
  string aliased 50,000 times, fails in microseconds instead of eating memory);
  the node and character budgets can be shared by every file one spec loads
  (`LoadBudget`), so `extends`/`include` fan-out is bounded as a whole;
- refuses numbers Python cannot hold as written (a 5,000-digit integer, `1e309`)
  and the `<<` merge key, each with its location;
- reads regular files only, with a bounded read (a FIFO or `/dev/zero` named as
  a spec is refused, never waited on or read forever).
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import Collector, Diagnostic, Loc, SpecError
from .tree import Map, Seq

MAX_BYTES = 2_000_000      # a 300-layer spec is ~20 kB
MAX_DEPTH = 100            # real specs nest < 15 deep
MAX_NODES = 500_000        # nodes after alias expansion: the alias-bomb bound
MAX_CHARS = 10_000_000     # characters after alias expansion (keys and scalars)
MAX_SCALAR_CHARS = 65_536  # one value (a description, a path) is far shorter
MAX_INT_DIGITS = 40        # int64 has 19; Python refuses to parse > 4,300
MAX_LOADS = 200            # files one spec may load through extends/include (each once per naming)

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


@dataclass
class LoadBudget:
    """What every file of one spec may add up to: loads, values and characters after aliases.

    One budget is passed through `extends` and `include`, so nine 2-line files each naming the
    next ten times (10^9 loads) stop at MAX_LOADS instead of running for hours."""

    loads: int = MAX_LOADS
    nodes: int = MAX_NODES
    chars: int = MAX_CHARS

    def take_load(self, name: str, at: Loc | None) -> None:
        self.loads -= 1
        if self.loads < 0:
            raise SpecError(Diagnostic(f"the spec loads more than {MAX_LOADS} files through 'extends' and "
                                       f"'include' ({name} once more here)", at,
                                       hint="a file named several times is loaded each time: name it once"))


def resolve_plain(text: str) -> Any:
    """The value of an untagged plain scalar under the YAML 1.2 core schema.

    Raises ValueError (with a message for the user) for numbers that cannot be held as written."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text) or _OCT.match(text) or _HEX.match(text):
        digits = len(text.lstrip("+-"))
        if digits > MAX_INT_DIGITS:
            raise ValueError(f"an integer of {digits:,} digits is too large (at most {MAX_INT_DIGITS} digits)")
        if _INT.match(text):
            return int(text)
        return int(text[2:], 8 if _OCT.match(text) else 16)
    if _FLOAT.match(text):
        value = float(text)
        if math.isinf(value):
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise ValueError(f"{shown} is out of range for a number (the largest is about 1.8e308)")
        return value
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
    __slots__ = ("container", "anchor", "key", "key_loc", "size", "chars")

    def __init__(self, container, anchor):
        self.container, self.anchor, self.key, self.key_loc, self.size = container, anchor, None, None, 1
        self.chars = 0


def _chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else 1


def load_text(text: str, file: str = "<string>", budget: LoadBudget | None = None) -> Any:
    """Parse YAML text into a positioned tree. Raises SpecError listing every problem.

    `budget` (shared by the files of one spec) bounds values and characters after alias expansion."""
    if len(text) > MAX_BYTES:
        raise SpecError(Diagnostic(f"file is {len(text):,} bytes; a spec may be at most {MAX_BYTES:,}",
                                   Loc(file, 1, 1)))
    budget = budget or LoadBudget()
    errors = Collector()
    anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, node count, characters)
    stack: list[_Frame] = []
    documents: list[Any] = []

    def attach(value: Any, loc: Loc, size: int, chars: int) -> None:
        budget.nodes -= size
        budget.chars -= chars
        if budget.nodes < 0:
            raise SpecError(Diagnostic(
                f"the document expands to more than {MAX_NODES:,} values (an alias bomb?)", loc))
        if budget.chars < 0:
            raise SpecError(Diagnostic(
                f"the document expands to more than {MAX_CHARS:,} characters (a long value aliased many times?)", loc))
        if not stack:
            documents.append(value)
            return
        frame = stack[-1]
        frame.size += size
        frame.chars += chars
        box = frame.container
        if isinstance(box, Seq):
            box.add(value, loc)
        elif frame.key is None and frame.key_loc is None:  # this value is a key
            if isinstance(value, (Map, Seq)):
                errors.add("a mapping key must be a plain scalar", loc)
                frame.key, frame.key_loc = "<complex key>", loc
            else:
                frame.key, frame.key_loc = _key_text(value), loc
                if frame.key == "<<" and isinstance(box, Map):
                    errors.add("'<<' merge keys are not supported", loc,
                               hint="to reuse settings, put them in a file named by `extends:`, or make the "
                                    "layers a block (`model.blocks`) with parameters")
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
                    attach(None, loc, 1, 1)
                else:
                    value, size, chars = anchors[event.anchor]
                    attach(value, loc, size, chars)
            elif kind == "ScalarEvent":
                if len(event.value) > MAX_SCALAR_CHARS:
                    errors.add(f"a value of {len(event.value):,} characters; a spec value may be at most "
                               f"{MAX_SCALAR_CHARS:,}", loc)
                    value = ""
                elif tag is not None:
                    try:
                        value = _tagged(event.value, tag)
                    except ValueError as exc:
                        errors.add(str(exc), loc)
                        value = event.value
                elif event.implicit[0]:  # plain (unquoted) scalar
                    try:
                        value = resolve_plain(event.value)
                    except ValueError as exc:
                        errors.add(str(exc), loc)
                        value = None
                else:
                    value = event.value
                if event.anchor:
                    anchors[event.anchor] = (value, 1, _chars(value))
                attach(value, loc, 1, _chars(value))
            elif kind in ("MappingStartEvent", "SequenceStartEvent"):
                if len(stack) >= MAX_DEPTH:
                    raise SpecError(Diagnostic(f"nesting deeper than {MAX_DEPTH} levels", loc))
                container = Map(loc=loc) if kind == "MappingStartEvent" else Seq(loc=loc)
                stack.append(_Frame(container, event.anchor))
            elif kind in ("MappingEndEvent", "SequenceEndEvent"):
                frame = stack.pop()
                if frame.anchor:
                    anchors[frame.anchor] = (frame.container, frame.size, frame.chars)
                budget.nodes += frame.size - 1  # children were already counted
                budget.chars += frame.chars
                attach(frame.container, frame.container.loc, frame.size, frame.chars)
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


def read_regular(path: Path, name: str, limit: int, at: Loc | None = None, what: str = "file") -> bytes:
    """The bytes of a regular file, at most `limit` + 1 of them (the caller reports "too large").

    `os.stat` first, then an O_NONBLOCK open checked again with `fstat` (the path may be swapped in
    between): a FIFO, a device such as /dev/zero or a socket is refused by name, never waited on
    or read without end."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(Diagnostic(f"no such {what}: {name}", at)) from None
    except OSError as exc:
        raise SpecError(Diagnostic(f"cannot read {name}: {exc.strerror}", at)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
        raise SpecError(Diagnostic(f"{name} is {kind}; a spec is read from a regular file", at))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SpecError(Diagnostic(f"cannot read {name}: {exc.strerror}", at)) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError(Diagnostic(f"{name} is not a regular file; a spec is read from a regular file", at))
        return handle.read(limit + 1)


def load_file(path: str | Path, display: str | None = None, budget: LoadBudget | None = None,
              at: Loc | None = None) -> Any:
    """Load a spec file; `display` is the name used in messages (default: the path as given).

    `at` is where another file named this one (an `extends` or `include` line), for the messages."""
    path = Path(path)
    name = display or str(path)
    if budget is not None:
        budget.take_load(name, at)
    raw = read_regular(path, name, MAX_BYTES, at)
    if len(raw) > MAX_BYTES:
        raise SpecError(Diagnostic(f"file is larger than {MAX_BYTES:,} bytes; a spec may be at most {MAX_BYTES:,}",
                                   Loc(name, 1, 1)))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(Diagnostic("file is not valid UTF-8", Loc(name, line, 1))) from None
    return load_text(text, name, budget)
