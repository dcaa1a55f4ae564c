"""`extends`: load a spec and the files it builds on, deep-merged.

Mappings merge key by key (the extending file wins); lists and scalars are
replaced, not appended. Paths are relative to the file that names them.
Every value keeps the location of the file it came from, so relative paths
(data files, block includes) can later be resolved against their own file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Diagnostic, Loc, SpecError
from . import schemas
from .load import LoadBudget, load_file
from .tree import Map, Seq, copy
from .types import relative_to

MAX_EXTENDS_DEPTH = 20


def not_a_spec(tree, name: str, at: Loc | None) -> SpecError | None:
    """The one error for a file that is not a kspec spec at all (`extends: /etc/shadow`), or None.

    Such a file is named once, without echoing any of its content: no "unknown key" line per
    account of a password file."""
    sections = set(schemas.read("spec.schema.json").get("properties", {}))
    if isinstance(tree, Map) and (not tree or sections & set(tree)):
        return None
    what = "none of its keys is" if isinstance(tree, Map) else "it is not a mapping of"
    return SpecError(Diagnostic(f"{name} is not a kspec spec ({what} a spec's sections: "
                                f"{', '.join(sorted(sections))})", at or Loc(name, 1, 1)))


def load_with_extends(path: str | Path, chain: tuple[str, ...] = (), at: Loc | None = None,
                      budget: LoadBudget | None = None) -> Map:
    """Load `path`, merging the files named by its `extends` underneath it.

    One `budget` bounds the files, values and characters of the whole chain (fan-out included)."""
    budget = budget if budget is not None else LoadBudget()
    key = str(Path(path).resolve())
    if key in chain:
        cycle = " -> ".join(Path(p).name for p in chain + (key,))
        raise SpecError(Diagnostic(f"'extends' cycle: {cycle}", at))
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError(Diagnostic(f"'extends' chain deeper than {MAX_EXTENDS_DEPTH} files", at))
    if not Path(path).exists() and not Path(path).is_symlink() and at is not None:
        raise SpecError(Diagnostic(f"'extends' names a file that does not exist: {path}", at,
                                   hint="paths in 'extends' are relative to the file that names them"))
    tree = load_file(path, budget=budget, at=at)
    if tree is None:
        raise SpecError(Diagnostic("the spec file is empty", Loc(str(path), 1, 1)))
    if at is not None and (error := not_a_spec(tree, str(path), at)) is not None:
        raise error
    if not isinstance(tree, Map):
        raise SpecError(Diagnostic("a spec must be a YAML mapping (key: value lines) at the top",
                                   Loc(str(path), 1, 1)))
    if "extends" not in tree:
        return tree
    bases = tree["extends"]
    base_list = bases if isinstance(bases, Seq) else [bases]
    merged = Map(loc=tree.loc)
    for index, base in enumerate(base_list):
        loc = bases.item_loc(index) if isinstance(bases, Seq) else tree.value_loc("extends")
        if not isinstance(base, str):
            raise SpecError(Diagnostic("'extends' takes a file path or a list of paths", loc, "extends"))
        merged = deep_merge(merged, load_with_extends(relative_to(loc, base), chain + (key,), loc, budget))
    own = Map(loc=tree.loc)
    for k, v in tree.items():
        if k != "extends":
            own.set(k, v, tree.key_locs.get(k), tree.value_locs.get(k))
    return deep_merge(merged, own)


def deep_merge(base: Map, top: Map) -> Map:
    """`top` over `base`: mappings merge recursively, everything else is replaced."""
    out = copy(base)
    out.loc = top.loc or base.loc
    for key, value in top.items():
        if isinstance(value, Map) and isinstance(out.get(key), Map):
            value = deep_merge(out[key], value)
        out.set(key, value, top.key_locs.get(key), top.value_locs.get(key))
    return out
