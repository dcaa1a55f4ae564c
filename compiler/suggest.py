"""Did-you-mean suggestions, shared by every stage (no heavy imports)."""

from __future__ import annotations

import difflib
from typing import Iterable


def suggest(name: object, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Close matches for a misspelled name, case-insensitively: `conv2d` -> `Conv2D`."""
    lowered: dict[str, str] = {}
    for c in candidates:
        lowered.setdefault(str(c).lower(), str(c))
    exact = lowered.get(str(name).lower())
    if exact is not None and exact != name:
        return [exact]
    return [lowered[m] for m in difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)]


def did_you_mean(name: object, candidates: Iterable[str]) -> str:
    """`"; did you mean 'filters'?"` or `""`. `name` may be any value a spec holds: its text is compared."""
    hits = suggest(name, candidates)
    return f"; did you mean {' or '.join(repr(h) for h in hits)}?" if hits else ""
