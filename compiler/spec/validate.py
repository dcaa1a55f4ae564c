"""Validate a resolved spec (JSON Schema, then meaning) and turn it into a typed `Spec`.

Two passes, every error of both reported at once:
1. the generated JSON Schema (structure, argument names and types);
2. semantic checks the schema cannot express: node references, duplicate
   names, cycles, outputs, losses for outputs that exist.
The result is the typed `Spec` every later stage reads.
"""

from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import Collector
from ..suggest import did_you_mean
from . import schemas
from .resolve import resolve
from .schema_errors import to_diagnostics
from .tree import Map, Seq, format_path, locate, plain
from .types import Component, DataSpec, InputSpec, ModelSpec, NodeSpec, PhaseSpec, Spec, TrainSpec, relative_to
from .types import default as typed_default

SIBLINGS = ("name", "inputs", "share", "call")
SOURCES = {"sklearn": "name", "csv": "path", "npz": "path", "images": "path", "synthetic": "name",
           "tfrecord": "path"}
PATH_PARAMS = ("path",)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """load -> resolve -> validate: the whole front half, for one spec file."""
    errors = Collector()
    tree = resolve(path, overrides, errors)
    spec = validate(tree, str(path), errors)
    if tree.get("search") is not None:   # `kspec tune`'s section, checked like the rest (compiler/tune/space.py)
        import dataclasses

        from ..tune.space import check_search

        spec = dataclasses.replace(spec, search=check_search(spec, path, list(overrides)))
    return spec


@lru_cache(maxsize=1)
def _validator():
    """A Draft-07 validator over the checked-in schemas, with every `$ref` pre-resolved.

    jsonschema resolves a `$ref` through its `referencing` registry on every
    visit; a 300-layer spec visits thousands. Replacing each `{"$ref": ...}` by
    the very object it points to (cycles are fine: they are shared objects)
    makes validation several times faster, with the same results.
    """
    from jsonschema import Draft7Validator

    documents = {f.relative_to(schemas.SCHEMA_DIR).as_posix(): json.loads(f.read_text())
                 for f in schemas.SCHEMA_DIR.rglob("*.schema.json")}
    schemas.with_plugin_components(documents)   # losses and metrics of `--plugin` modules
    root = documents["spec.schema.json"]
    # The schema lets every typed value be a `$param` / `${expr}` (editors see the raw file). The tree
    # validated here is resolved: expressions are evaluated and blocks expanded, so a string still
    # starting with `$` (`$input` outside `inputs:`, a `$$` escape) is a wrong type, not an expression.
    # The pattern below never matches, yet still reads as the expression branch to schema_errors.pick.
    for document in documents.values():
        if "expression" in document.get("definitions", {}):
            document["definitions"]["expression"] = {"type": "string", "pattern": "^\\$(?!)"}
    _inline_refs(root, "spec.schema.json", documents, set())
    return Draft7Validator(root)


def _inline_refs(node, doc: str, documents: dict, seen: set) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in list(children):
        if isinstance(child, dict) and "$ref" in child:
            target_doc, target = _follow(child["$ref"], doc, documents)
            node[key] = target
            _inline_refs(target, target_doc, documents, seen)
        elif isinstance(child, (dict, list)):
            _inline_refs(child, doc, documents, seen)


def _follow(ref: str, doc: str, documents: dict):
    """`components/layers.schema.json#/definitions/Dense`, relative to `doc` -> (doc, object)."""
    file, _, pointer = ref.partition("#")
    if file:
        base = doc.rsplit("/", 1)[0] + "/" if "/" in doc else ""
        parts: list[str] = []
        for part in (base + file).split("/"):
            if part == "..":
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        doc = "/".join(parts)
    target = documents[doc]
    for step in filter(None, pointer.split("/")):
        target = target[int(step)] if isinstance(target, list) else target[step.replace("~1", "/").replace("~0", "~")]
    while isinstance(target, dict) and "$ref" in target:   # a reference to a reference
        doc, target = _follow(target["$ref"], doc, documents)
    return doc, target


def schema_errors(tree: Map, display_path) -> list:
    out = []
    for error in _validator().iter_errors(tree):
        out.extend(to_diagnostics(error, tree, display_path))
    return out


def validate(tree: Map, file: str, errors: Collector | None = None) -> Spec:
    """Check a resolved tree; return the typed Spec or raise SpecError with every problem.

    `errors` may hold problems found while resolving; they are reported with these.
    """
    errors = errors or Collector()
    resolved_cleanly = not errors.diagnostics

    def display_path(path) -> str:
        """A resolved-tree path, written as where the user wrote it (inside a block, say)."""
        path = list(path)
        if len(path) >= 3 and path[:2] == ["model", "layers"] and isinstance(path[2], int):
            layers = tree.get("model", {}).get("layers")
            if isinstance(layers, Seq) and path[2] < len(layers):
                source = getattr(layers[path[2]], "source_path", None)
                if source:
                    path = list(source) + path[3:]
        return format_path(path)

    # A value resolving already complained about (a bad `${expr}`, an unknown `$param`) is left as its
    # text, which the schema then rejects as a wrong type: one error per value is enough.
    _check_finite(tree, errors, display_path)
    resolved = {d.loc for d in errors.diagnostics if d.loc is not None}
    errors.diagnostics.extend(d for d in schema_errors(tree, display_path) if d.loc not in resolved)
    if not resolved_cleanly:   # nodes were dropped: reference checks would only echo those errors
        errors.raise_if_any()
    structural = bool(errors.diagnostics)
    from . import safety

    safety.check(tree, errors, display_path)   # no code execution, no writes outside the run (issue 13)
    try:
        spec = _typed(tree, file, errors, display_path)
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration, OverflowError):
        if not structural:   # a bad shape the schema should have caught
            raise
        spec = None
    errors.raise_if_any()
    assert spec is not None, "spec is None only after structural errors, which were just raised"
    return spec


def _check_finite(tree: Map, errors: Collector, display_path) -> None:
    """`.inf` and `.nan` are YAML numbers, but no spec value means them (a seed, a rate, a size):
    one located error each, before any stage converts them (`int(inf)` would be an internal error)."""
    stack: list[tuple[Any, tuple]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        items = node.items() if isinstance(node, Map) else enumerate(node) if isinstance(node, Seq) else ()
        for key, value in items:
            if isinstance(value, float) and not math.isfinite(value):
                loc, via = locate(tree, list(path) + [key])
                errors.add(f"expected a finite number, got {value}", loc, display_path(list(path) + [key]), via=via)
            elif isinstance(value, (Map, Seq)):
                stack.append((value, path + (key,)))


# -- typed conversion + semantic checks ---------------------------------------------------

def _typed(tree: Map, file: str, errors: Collector, display_path) -> Spec:
    model = _model(tree["model"], errors, display_path)
    outputs = model.outputs if model else ()
    train_tree, data_tree = tree.get("train"), tree.get("data")
    train = _train(train_tree, outputs, errors) if train_tree is not None else None
    data = _data(data_tree) if data_tree is not None else None
    return Spec(version=tree["kspec"], name=str(tree.get("name")), seed=int(tree.get("seed", 0) or 0),
                file=file, model=model, data=data, train=train, tree=tree)


def _component(kind: str, value: Any, parent, key) -> Component:
    loc, _ = locate(parent, [key])
    if isinstance(value, str):
        return Component(kind, value, {}, loc, "")
    (name, args), = value.items()
    return Component(kind, name, plain(args) or {}, loc, "")


def _model(model: Map, errors: Collector, display_path) -> ModelSpec:
    inputs = tuple(InputSpec(name, tuple(spec["shape"]), spec.get("dtype", typed_default(InputSpec, "dtype")),
                             model["inputs"].key_loc(name))
                   for name, spec in model["inputs"].items())
    layers: Seq = model["layers"]
    known = {i.name for i in inputs}
    names = [n["name"] for n in layers]
    all_names = known | set(names)
    nodes: list[NodeSpec] = []
    previous = [inputs[0].name] if len(inputs) == 1 else None
    by_name: dict[str, dict[str, Any]] = {}   # node name -> its kind, arguments and origin (for `share`)
    for index, item in enumerate(layers):
        path = ["model", "layers", index]
        where = display_path(path)
        if "inputs" in item:
            refs = list(item["inputs"])
            for i, ref in enumerate(refs):
                if ref not in all_names:
                    loc, via = locate(layers, [index, "inputs", i])
                    errors.add(f"'{ref}' is not a node or model input" + did_you_mean(ref, all_names),
                               loc, display_path(path + ["inputs"]), via=via)
        elif previous is None:
            errors.add("the first layer needs `inputs:` because the model has several inputs "
                       f"({', '.join(i.name for i in inputs)})", item.loc, where, via=item.via)
            refs = []
        else:
            refs = previous
        kind = "share" if "share" in item else next(k for k in item if k not in SIBLINGS)
        shares = None
        if kind == "share":
            shares = item["share"]
            origin = by_name.get(shares)
            if origin is None:
                loc, via = locate(layers, [index, "share"])
                errors.add(f"'share' names '{shares}', which is not an earlier layer node"
                           + did_you_mean(shares, by_name), loc, display_path(path + ["share"]), via=via)
                kind, args = "share", {}
            else:
                kind, args = origin["__layer"], origin["__args"]
                shares = origin["__origin"]
        else:
            args = plain(item[kind]) or {}
            if kind == "Backbone" and isinstance(item[kind], Map):
                args = _backbone_paths(item[kind], args)
                check_pattern(args.get("trainable"), item[kind].value_loc("trainable"),
                              display_path(path + [kind, "trainable"]), errors)
            if kind == "Expression" and isinstance(item[kind], Map):
                _check_expression(item[kind], len(refs), errors, display_path(path + [kind, "expr"]), item.via)
        if item["name"] in known:
            loc, via = locate(layers, [index, "name"])
            errors.add(f"node name '{item['name']}' is also a model input's name", loc or item.loc, where,
                       via=via or item.via, hint="node names and input names share one namespace: rename the node")
        record = {"__layer": kind, "__args": args, "__origin": shares or item["name"]}
        by_name[item["name"]] = record
        nodes.append(NodeSpec(item["name"], kind, args, tuple(refs), item.loc, where, item.via, shares))
        previous = [item["name"]]
    outputs = model.get("outputs")
    if outputs is None:
        outputs = [nodes[-1].name] if nodes else []
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    if not outputs and nodes:
        loc, _ = locate(model, ["outputs"])
        errors.add("`outputs` is empty: name the node(s) whose result the model returns "
                   f"(e.g. `outputs: [{nodes[-1].name}]`), or leave `outputs` out to use the last layer",
                   loc, "model.outputs")
    for i, out in enumerate(outputs):
        if out not in all_names:
            loc, _ = (locate(model, ["outputs", i]) if isinstance(model.get("outputs"), Seq)
                      else locate(model, ["outputs"]))
            errors.add(f"output '{out}' is not a node" + did_you_mean(out, names), loc,
                       f"model.outputs[{i}]")
    _check_acyclic(nodes, known, errors)
    return ModelSpec(inputs, tuple(_topological(nodes, known)), tuple(outputs))


def _check_expression(args: Map, n_inputs: int, errors: Collector, where: str, via) -> None:
    """An `Expression` layer's text, checked as the layer will parse it (without Keras), at the character."""
    from dataclasses import replace

    from ..tensor_expr import TensorExprError, parse

    text, names = args.get("expr"), args.get("names")
    if not isinstance(text, str) or not isinstance(names, Seq):
        return                            # the schema reports a missing or non-string `expr`
    loc = args.value_loc("expr")
    if len(names) != n_inputs:
        errors.add(f"the expression names {len(names)} input(s) ({', '.join(map(str, names))}) but the node has "
                   f"{n_inputs}", args.value_loc("names") or loc, where.rsplit(".", 1)[0] + ".names", via=via)
        return
    try:
        parse(text, [str(n) for n in names])
    except TensorExprError as exc:
        if loc is not None and "\n" not in text:
            quoted = _quote_width(loc)
            loc = replace(loc, col=loc.col + quoted + exc.offset)
        errors.add(f"bad expression: {exc}", loc, where, via=via)


def _quote_width(loc) -> int:
    """1 if the scalar at `loc` starts with a quote in its file (so the text starts one column later), else 0."""
    try:
        line = Path(loc.file).read_text(errors="replace").splitlines()[loc.line - 1]
    except (OSError, IndexError):
        return 0
    return 1 if line[loc.col - 1:loc.col] in ("'", '"') else 0


def _check_acyclic(nodes: list[NodeSpec], inputs: set[str], errors: Collector) -> None:
    graph = {n.name: [i for i in n.inputs if i not in inputs] for n in nodes}
    state: dict[str, int] = {}
    for start in graph:
        stack = [(start, iter(graph[start]))]
        state[start] = state.get(start, 0) or 1
        trail = [start]
        if state[start] == 2:
            continue
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[name] = 2
                stack.pop()
                trail.pop()
            elif child in graph and state.get(child) == 1:
                cycle = trail[trail.index(child):] + [child]
                node = next(n for n in nodes if n.name == child)
                errors.add(f"the graph has a cycle: {' -> '.join(cycle)}", node.loc, node.path, via=node.via)
                return
            elif child in graph and not state.get(child):
                state[child] = 1
                stack.append((child, iter(graph[child])))
                trail.append(child)


def _topological(nodes: list[NodeSpec], inputs: set[str]) -> list[NodeSpec]:
    """Nodes in an order where every input comes first; file order wherever the spec allows."""
    import heapq

    index = {n.name: i for i, n in enumerate(nodes)}
    waiting = {n.name: {i for i in n.inputs if i in index} for n in nodes}
    users: dict[str, list[str]] = {}
    for n in nodes:
        for i in waiting[n.name]:
            users.setdefault(i, []).append(n.name)
    ready = [index[name] for name, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    out = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        out.append(node)
        for user in users.get(node.name, ()):
            waiting[user].discard(node.name)
            if not waiting[user]:
                heapq.heappush(ready, index[user])
    placed = {n.name for n in out}
    return out + [n for n in nodes if n.name not in placed]   # a cycle, already reported


def _per_output(value, parent: Map, key: str, outputs, kind: str, errors: Collector, many: bool):
    """`loss`/`metrics`: one value for every output, or a mapping output name -> value."""
    def one(v, p, k):
        if not many:
            return _component(kind, v, p, k)
        seq = v if isinstance(v, Seq) else Seq([v], p.value_loc(k) if isinstance(p, Map) else None)
        return tuple(_component(kind, item, seq, i) for i, item in enumerate(seq))

    if isinstance(value, Map):
        is_component = len(value) == 1 and next(iter(value)) in schemas.component_names(kind)
        if not is_component:
            for k in value:
                if k not in outputs:
                    errors.add(f"'{k}' in train.{key} matches no output (outputs: {', '.join(outputs)})"
                               + did_you_mean(k, outputs), value.key_loc(k), f"train.{key}.{k}")
            return {k: one(value[k], value, k) for k in value if k in outputs}
    if isinstance(value, Seq) and not many:   # `loss: [a, b]`: one per output, in the order of `outputs`
        if len(value) != len(outputs):
            errors.add(f"train.{key} lists {len(value)} value(s) for {len(outputs)} output(s) "
                       f"({', '.join(outputs)}): give one per output in that order, or a mapping "
                       f"`{{{outputs[0] if outputs else 'output'}: ...}}`", parent.value_loc(key), f"train.{key}")
        return {o: one(v, value, i) for i, (o, v) in enumerate(zip(outputs, value))}
    return {o: one(value, parent, key) for o in outputs}


def _train(train: Map, outputs, errors: Collector) -> TrainSpec:
    if "loss" not in train:
        errors.add("train needs a 'loss' (e.g. sparse_categorical_crossentropy)", train.loc, "train")
    optimizer = _component("optimizers", train.get("optimizer", "adam"), train, "optimizer")
    losses = _per_output(train.get("loss", "mse"), train, "loss", outputs, "losses", errors, many=False)
    metrics = _per_output(train.get("metrics", Seq()), train, "metrics", outputs, "metrics", errors, many=True) \
        if train.get("metrics") else {}
    weights = train.get("loss_weights")
    if isinstance(weights, Map):
        for k in weights:
            if k not in outputs:
                errors.add(f"'{k}' in train.loss_weights matches no output" + did_you_mean(k, outputs),
                           weights.key_loc(k), f"train.loss_weights.{k}")
        weights = dict(weights)
    elif isinstance(weights, Seq):
        weights = dict(zip(outputs, weights))
    callbacks = tuple(_component("callbacks", c, train["callbacks"], i)
                      for i, c in enumerate(train.get("callbacks") or []))
    phases = []
    for i, phase in enumerate(train.get("phases") or []):
        check_pattern(phase.get("trainable"), phase.value_loc("trainable"), f"train.phases[{i}].trainable", errors)
        phases.append(PhaseSpec(
            name=str(phase.get("name", f"phase_{i + 1}")), epochs=int(phase["epochs"]),
            trainable=phase.get("trainable"),
            optimizer=(_component("optimizers", phase["optimizer"], phase, "optimizer") if "optimizer" in phase
                       else None),
            learning_rate=phase.get("learning_rate"), loc=train["phases"].item_loc(i),
            trainable_loc=phase.value_loc("trainable") if "trainable" in phase else None))
    def given(key: str):   # what the spec says, else the typed spec's own default (types.py)
        return train.get(key, typed_default(TrainSpec, key))

    precision = given("mixed_precision")
    class_weight = given("class_weight")
    return TrainSpec(
        optimizer=optimizer, losses=losses, metrics=metrics, loss_weights=weights,
        batch_size=int(given("batch_size")), epochs=int(given("epochs")),
        callbacks=callbacks,
        class_weight=({int(k): float(v) for k, v in class_weight.items()} if isinstance(class_weight, Map)
                      else class_weight),
        phases=tuple(phases), keep=given("keep"), monitor=given("monitor"),
        deterministic=bool(given("deterministic")),
        mixed_precision=None if precision in (None, "none") else precision,
        jit_compile=given("jit_compile"), distribute=given("distribute"),
        memory_growth=given("memory_growth"),
        steps_per_execution=int(given("steps_per_execution")), ensemble=int(given("ensemble")),
        diagnostics=plain(given("diagnostics")) or {},
        checkpoint_every_seconds=float((train.get("checkpoint") or {}).get(
            "every_seconds", typed_default(TrainSpec, "checkpoint_every_seconds"))),
        loc=train.loc)


def check_pattern(trainable, loc, path: str, errors: Collector) -> None:
    """A `trainable` pattern (Backbone or phase) is a valid regular expression, checked here, at its
    location, rather than when training reaches it. (Whether it matches a layer needs the built model:
    build/backbone.py and train/run.py check that, before training starts.)"""
    if not isinstance(trainable, str):
        return
    try:
        re.compile(trainable)
    except re.error as exc:
        errors.add(f"`trainable` is not a valid regular expression ({trainable!r}: {exc})", loc, path,
                   hint="a regular expression searched in layer names, e.g. 'block_16|Conv_1'; true or false")


def _backbone_paths(written: Map, args: dict) -> dict:
    """A Backbone's `from` and weights file made absolute against the file each was written in
    (a template's folder, or the working directory for a --set override), like data paths."""
    args = dict(args)
    for key in ("from", "weights"):
        value = args.get(key)
        if isinstance(value, str) and value != "imagenet":
            args[key] = os.path.abspath(relative_to(written.value_loc(key), os.path.expanduser(value)))
    return args


def _data(data: Map) -> DataSpec:
    source: Map = data["source"]
    kind = next(k for k in source if k in SOURCES)
    params = {SOURCES[kind]: source[kind]}
    params.update({k: plain(v) for k, v in source.items() if k != kind})
    if SOURCES[kind] == "path":
        params["path"] = str(relative_to(source.value_loc(kind), str(source[kind])).resolve())
    if kind == "images" and isinstance(source.get("masks"), str):   # segmentation: a second folder
        params["masks"] = str(relative_to(source.value_loc("masks"), str(source["masks"])).resolve())
    split = data.get("split") or {}
    preprocess = tuple(_component("preprocess", p, data["preprocess"], i)
                       for i, p in enumerate(data.get("preprocess") or []))
    augment = tuple(_component("augment", a, data["augment"], i) for i, a in enumerate(data.get("augment") or []))
    reshape = data.get("reshape")
    classes = data.get("classes")
    return DataSpec(source=kind, params=params,
                    validation=float(split.get("validation", typed_default(DataSpec, "validation"))),
                    test=float(split.get("test", typed_default(DataSpec, "test"))), stratify=split.get("stratify"),
                    split_seed=split.get("seed"),
                    reshape=tuple(reshape) if reshape else None, preprocess=preprocess, augment=augment,
                    classes=tuple(str(c) for c in classes) if classes is not None else None,
                    loc=data.loc, classes_loc=data.value_loc("classes") if classes is not None else None,
                    cache=plain(data.get("cache", typed_default(DataSpec, "cache"))),
                    on_bad_file=str(data.get("on_bad_file", "error")))


# -- entry points for `kspec tune` (compiler/tune/), which sets `--set` paths trial by trial ------

def merged_tree(path: str | Path, overrides: Sequence[str] = ()) -> Map:
    """The spec as `--set` sees it: `extends` merged and the overrides applied, nothing expanded."""
    from .extends import load_with_extends
    from .overrides import apply_overrides

    tree = load_with_extends(path)
    errors = Collector()
    apply_overrides(tree, list(overrides), errors)
    errors.raise_if_any()
    return tree


def override_steps(path: str) -> list[str | int]:
    """`model.layers[2].Dense.units` -> ['model', 'layers', 2, 'Dense', 'units'], as `--set` reads it."""
    from .overrides import parse_path

    return parse_path(path)


def check_with(path: str | Path, overrides: list[str], without: tuple[str, ...] = ("search",)) -> None:
    """Resolve and validate the spec with these overrides, its `without` sections left out; SpecError if not."""
    errors = Collector()
    tree = resolve(path, overrides, errors)
    for key in without:
        tree.pop(key, None)
    validate(tree, str(path), errors)


def read_tree(path: str | Path) -> Any:
    """A YAML file (a run's spec.yaml) read by kspec's own safe loader, as plain data."""
    from .load import load_file

    return plain(load_file(path))
