"""Resolve a spec: extends, overrides, version, blocks, repeats, expressions.

The output is the fully resolved tree that `kspec resolve` prints and that
validation checks: one file's worth of plain data, every value still knowing
the file:line:col it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..errors import Collector, Diagnostic, Loc, SpecError
from . import schemas
from .expand import REQUIRED, Block, Expander, Scope
from .extends import load_with_extends
from .load import LoadBudget, load_file
from .overrides import apply_overrides
from .tree import Map, Seq
from .types import relative_to

CURRENT_VERSION = 1

# The one place where older specs are upgraded: version N -> a function returning version N + 1.
UPGRADES: dict[int, Callable[[Map], Map]] = {}

MAX_INCLUDE_DEPTH = 10


def resolve(path: str | Path, overrides: Sequence[str] = (), errors: Collector | None = None) -> Map:
    """Load `path` and resolve it completely.

    Raises SpecError listing every problem; or, given a Collector, records the
    problems of expansion there and returns what could be resolved, so that
    validation can report its own findings in the same run.
    """
    budget = LoadBudget()   # one bound on files, values and characters for extends and include together
    tree = load_with_extends(path, budget=budget)
    collect = errors is not None
    errors = errors if errors is not None else Collector()
    apply_overrides(tree, list(overrides), errors)
    errors.raise_if_any()
    tree = upgrade(tree, str(path))
    if "name" not in tree:
        tree.set("name", Path(path).stem)
    model = tree.get("model")
    if isinstance(model, Map):
        _expand_model(model, errors, budget)
    expander = Expander({}, frozenset(), errors)
    for key in list(tree):
        if key != "model":   # `${expr}` is allowed anywhere; no parameters outside blocks
            tree.set(key, expander.substitute(tree[key], {}, tree.value_loc(key), (), (key,)),
                     tree.key_locs.get(key), tree.value_locs.get(key))
    if not collect:
        errors.raise_if_any()
    return _in_reading_order(tree)


TOP_ORDER = ("kspec", "name", "description", "seed", "plugins", "data", "model", "train")


def _in_reading_order(tree: Map) -> Map:
    """Top-level keys in the brief's order, whatever order `extends` merged them in."""
    out = Map(loc=tree.loc)
    for key in sorted(tree, key=lambda k: TOP_ORDER.index(k) if k in TOP_ORDER else len(TOP_ORDER)):
        out.set(key, tree[key], tree.key_locs.get(key), tree.value_locs.get(key))
    return out


def upgrade(tree: Map, file: str) -> Map:
    """Check `kspec: N` and bring older formats up to the current one."""
    version = tree.get("kspec")
    if "kspec" not in tree:
        raise SpecError(Diagnostic(f"missing 'kspec: {CURRENT_VERSION}' (the spec format version)",
                                   tree.loc or Loc(file, 1, 1),
                                   hint=f"add `kspec: {CURRENT_VERSION}` as the first line"))
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CURRENT_VERSION:
        raise SpecError(Diagnostic(f"unknown spec format version {version!r}: this kspec reads versions "
                                   f"1 to {CURRENT_VERSION}", tree.value_loc("kspec"), "kspec",
                                   hint="upgrade kspec, or write `kspec: 1`"))
    while version < CURRENT_VERSION:
        tree = UPGRADES[version](tree)
        version += 1
        tree.set("kspec", version)
    return tree


def _expand_model(model: Map, errors: Collector, budget: LoadBudget | None = None) -> None:
    blocks = collect_blocks(model.get("blocks"), model.value_loc("blocks"), errors, ("model", "blocks"),
                            budget=budget)
    layers = model.get("layers")
    if not isinstance(layers, Seq):
        return   # reported by the schema ("'layers' is required", "expected a list")
    expander = Expander(blocks, schemas.layer_names(), errors)
    top = Scope({})
    inputs = model.get("inputs")
    if isinstance(inputs, Map) and len(inputs) == 1:
        expander.start = list(inputs)
    expander.expand(layers, top, expander.start, ("model", "layers"))
    model.set("layers", expander.nodes, model.key_locs.get("layers"), model.value_locs.get("layers"))
    if "blocks" in model:
        del model["blocks"]
    for key in ("outputs",):
        outputs = model.get(key)
        if isinstance(outputs, str):
            outputs = Seq([outputs], model.value_loc(key), [model.value_loc(key)])
        if isinstance(outputs, Seq):
            renamed = Seq((top.lookup(o) or expander.aliases.get(o, o) if isinstance(o, str) else o
                           for o in outputs), outputs.loc, outputs.item_locs)
            model.set(key, renamed, model.key_locs.get(key), model.value_locs.get(key))


def collect_blocks(value, loc: Loc | None, errors: Collector, path: tuple,
                   chain: tuple[str, ...] = (), budget: LoadBudget | None = None) -> dict[str, Block]:
    """Block definitions from `model.blocks`, following `include:` files (all within one `budget`)."""
    budget = budget if budget is not None else LoadBudget()
    blocks: dict[str, Block] = {}
    if value is None:
        return blocks
    if not isinstance(value, Map):
        errors.add("'blocks' is a mapping of block names to definitions", loc, ".".join(path))
        return blocks
    includes = value.get("include")
    include_list = includes if isinstance(includes, Seq) else ([includes] if includes is not None else [])
    for i, include in enumerate(include_list):
        where = includes.item_loc(i) if isinstance(includes, Seq) else value.value_loc("include")
        blocks.update(_include(include, where, errors, chain, budget))
    for name, body in value.items():
        if name == "include":
            continue
        where = value.key_loc(name)
        if not isinstance(body, Map) or "layers" not in body:
            errors.add(f"block '{name}' needs a 'layers' list", where, ".".join(path + (name,)))
            continue
        params = body.get("params")
        if isinstance(params, Seq):   # [filters, {dropout: 0.2}]: required names, then defaults
            listed = {}
            for i, p in enumerate(params):
                if isinstance(p, Map) and len(p) == 1:
                    (p, default), = p.items()
                else:
                    default = REQUIRED
                if isinstance(p, str) and p.isidentifier():
                    listed[p] = default
                else:
                    errors.add(f"a parameter is a name like `filters` or a default like `{{dropout: 0.2}}`, "
                               f"got {p!r}", params.item_loc(i), ".".join(path + (name, "params")) + f"[{i}]")
            params = listed
        elif params is None:
            params = {}
        elif not isinstance(params, Map):
            errors.add("'params' is a mapping of parameter names to defaults (or a list of required names)",
                       body.value_loc("params"), ".".join(path + (name, "params")))
            params = {}
        blocks[name] = Block(name, dict(params), body["layers"], where, path + (name,))
    return blocks


def _include(include, where: Loc | None, errors: Collector, chain: tuple[str, ...],
             budget: LoadBudget) -> dict[str, Block]:
    if not isinstance(include, str):
        errors.add("'include' takes a file path or a list of paths", where)
        return {}
    file = relative_to(where, include)
    key = str(file.resolve())
    if key in chain:
        errors.add("'include' cycle: " + " -> ".join(Path(p).name for p in chain + (key,)), where)
        return {}
    if len(chain) >= MAX_INCLUDE_DEPTH:
        errors.add(f"block includes nested deeper than {MAX_INCLUDE_DEPTH}", where)
        return {}
    if not file.exists() and not file.is_symlink():
        errors.add(f"'include' names a file that does not exist: {file}", where,
                   hint="paths are relative to the file that names them")
        return {}
    try:
        tree = load_file(file, budget=budget, at=where)
    except SpecError as exc:
        if budget.loads < 0:     # the fan-out bound: stop here, once, rather than at every sibling
            raise
        errors.diagnostics.extend(exc.diagnostics)
        return {}
    if not isinstance(tree, Map) or not isinstance(tree.get("blocks"), Map):
        errors.add(f"{file} has no 'blocks:' mapping to include (it is not a kspec blocks file)", where)
        return {}
    return collect_blocks(tree["blocks"], tree.value_loc("blocks"), errors, ("blocks",), chain + (key,), budget)
