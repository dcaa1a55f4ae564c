"""Errors the user sees, each tied to a place in their files.

Every user-facing failure is a `KspecError`: one of the three defined here
(`SpecError`, `DataError`: exit 2; `TrainingError`: exit 1) or a subclass a
stage defines for its own failures (a cluster, an export, a run directory...).
The CLI turns them into `FILE:LINE:COL: error: MESSAGE (at spec.path)` lines and
the exception's `exit_code`. Nothing else should reach the user as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """A position in a source file; line and col count from 1 (as editors do)."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem: what is wrong, where, and (optionally) how we got there.

    `via` lists the use sites a value came through (a block used at a line, an
    `extends` chain), so an error inside a block used three times names both
    the block's line and the use that produced it.
    """

    message: str
    loc: Loc | None = None
    path: str = ""
    via: tuple[Loc, ...] = ()
    hint: str = ""

    def format(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        at = f" (at {self.path})" if self.path else ""
        lines = [f"{where}error: {self.message}{at}"]
        lines += [f"{loc}: note: expanded from here" for loc in self.via]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def sort_key(self):
        loc = self.loc or Loc("")
        return (loc.file, loc.line, loc.col, self.path, self.message)


def _merge_uses(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """One error inside a block used three times is one diagnostic naming the three use sites."""
    merged: dict[tuple, Diagnostic] = {}
    for d in diagnostics:
        key = (d.message, d.loc, d.path, d.hint)
        if key in merged:
            seen = merged[key]
            merged[key] = Diagnostic(d.message, d.loc, d.path, seen.via + tuple(v for v in d.via if v not in seen.via),
                                     d.hint)
        else:
            merged[key] = d
    return list(merged.values())


class KspecError(Exception):
    """Base of the errors the CLI reports without a traceback."""

    exit_code = 1

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic(diagnostics)
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = sorted(_merge_uses(diagnostics), key=Diagnostic.sort_key)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class SpecError(KspecError):
    """The spec is wrong (bad YAML, schema violation, dangling reference...). Exit 2."""

    exit_code = 2


class DataError(KspecError):
    """The data is wrong (missing column, NaN, label out of range...). Exit 2."""

    exit_code = 2


class TrainingError(KspecError):
    """Training itself failed (NaN loss, a crash inside Keras...). Exit 1."""

    exit_code = 1


@dataclass
class Collector:
    """Gathers diagnostics so a stage can report every error at once."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def add(self, message: str, loc: Loc | None = None, path: str = "", **kw) -> None:
        self.diagnostics.append(Diagnostic(message, loc, path, **kw))

    def raise_if_any(self, error=SpecError) -> None:
        if self.diagnostics:
            raise error(self.diagnostics)
