"""Generate `schemas/` from the installed Keras: `python -m compiler.schemagen [--check] [--out DIR]`.

One JSON Schema (draft-07) file per component kind, `schemas/components/<kind>.schema.json`,
with one definition per class (its constructor's keyword arguments, read with
`inspect.signature` through `compiler.registry`) and one for the kind's value form
(`initializer`: a name, or a one-key mapping `{RandomNormal: {stddev: 0.02}}`); and
`schemas/spec.schema.json`, the whole spec, from the hand-written `schema_skeleton`.

Files have no `$id`: their relative `$ref`s resolve against their own location, as
editors (yaml-language-server) and `spec_validator()` below do. Output is
deterministic (sorted names, no timestamps) so that `--check` can tell a stale
checked-in copy from a fresh one; each file records the Keras version it came from.

Using the schemas needs no Keras: `spec_validator()` reads the files only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from . import registry, schema_skeleton
from .schema_types import EXPR, PADDING, arg_type

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
DRAFT7 = "http://json-schema.org/draft-07/schema#"
EXPRESSION = schema_skeleton.EXPRESSION

# The definition that holds each kind's value form (`kernel_initializer: <initializer>`).
VALUE_FORMS = {"layers": "layer", "initializers": "initializer", "regularizers": "regularizer",
               "constraints": "constraint", "activations": "activation", "optimizers": "optimizer",
               "schedules": "schedule", "losses": "loss", "metrics": "metric", "callbacks": "callback",
               "applications": "application"}

# Base-class keyword arguments a class accepts through **kwargs (read from the base's signature).
_BASE_KWARG_KINDS = ("layers", "optimizers")
_BASE_DOCS = {"autocast": "Boolean: whether to cast floating-point inputs to the layer's compute dtype.",
              "activity_regularizer": "Optional regularizer applied to the output of the layer."}
_NAME_HINT = ("A layer's name is not one of its arguments: give it as the sibling key `name:` of the layer "
              "(`- Dense: {units: 10}` then `  name: out` on the next line).")
_NO_NAME = {"description": _NAME_HINT, "not": {"description": _NAME_HINT}}   # `not` a schema all pass: rejects
_MAX_DOC = 400   # characters of an argument's docstring kept as its description


# ---------------------------------------------------------------------------- docstrings

def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).split("\n", 1)[0].strip() if doc else ""


def _shorten(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= _MAX_DOC:
        return text
    ends = [m.end() for m in re.finditer(r"[a-z`)\]]\.(?= [A-Z`])", text[:_MAX_DOC])]   # sentence ends
    return text[:ends[-1]] if ends and ends[-1] > 40 else text[:_MAX_DOC].rstrip() + "…"


def arg_docs(doc: str | None) -> dict[str, str]:
    """The `Args:` section of a Google-style docstring: argument name -> text."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:")), None)
    if start is None:
        return {}
    docs: dict[str, list[str]] = {}
    indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        match = re.match(r"\**(\w+)(?: \([^)]*\))?:(.*)$", line.strip())
        if depth == indent and match:
            current = match.group(1)
            docs[current] = [match.group(2)]
        elif current:
            docs[current].append(line.strip())
    return {name: _shorten(" ".join(parts)) for name, parts in docs.items()}


# ---------------------------------------------------------------------------- arguments

def _jsonable(value: Any) -> Any:
    """The JSON form of a Python default (tuples become lists), or raise ValueError."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    raise ValueError(value)


def _default_type(default: Any) -> dict | None:
    """Rule (3): the type of the Python default, when no other rule applies."""
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int):
        return {"type": "integer"}
    if isinstance(default, float):
        return {"type": "number"}
    if isinstance(default, str):
        return {"type": "string"}
    if isinstance(default, tuple) and default and all(type(v) in (int, float) for v in default):
        item = {"type": "integer" if all(type(v) is int for v in default) else "number"}
        return {"anyOf": [item, {"type": "array", "items": {"anyOf": [item, EXPR]}}]}
    return None


def _branches(schema: dict) -> list[dict]:
    return list(schema["anyOf"]) if list(schema) == ["anyOf"] else [schema]


def _with_null(branches: list[dict]) -> list[dict]:
    """Let an argument whose default is None take null too."""
    first = dict(branches[0])
    if "enum" in first:
        first["enum"] = first["enum"] + ([None] if None not in first["enum"] else [])
        return [first] + branches[1:]
    if len(branches) == 1 and isinstance(first.get("type"), str) and "$ref" not in first:
        first["type"] = [first["type"], "null"]
        return [first]
    return branches + [{"type": "null"}]


def value_ref(kind: str, from_kind: str) -> dict:
    """A `$ref` to `kind`'s value form, from a file of `from_kind`."""
    where = "" if kind == from_kind else f"{kind}.schema.json"
    return {"$ref": f"{where}#/definitions/{VALUE_FORMS[kind]}"}


def arg_schema(kind: str, cls: str, arg: str, default: Any, doc: str, class_doc: str) -> tuple[dict, bool]:
    """The schema of one constructor argument, and whether it is typed."""
    branches: list[dict] = []
    component = registry.arg_kind(arg)
    if component:
        branches.append(value_ref(component, kind))        # rule (1): a component
    typ = arg_type(cls, arg)                                 # rule (2): the table
    if typ is None and not component and default is not inspect.Parameter.empty:
        typ = _default_type(default)                         # rule (3): the default's type
    if typ is PADDING and '"causal"' not in class_doc:
        typ = {"enum": ["valid", "same"]}
    if typ is not None:
        branches += _branches(typ)
    schema: dict[str, Any] = {"description": doc} if doc else {}
    if default is not inspect.Parameter.empty:
        try:
            schema["default"] = _jsonable(default)
        except ValueError:
            pass
    if not branches:
        return schema, False
    if default is None:
        branches = _with_null(branches)
    schema["anyOf"] = branches + [EXPR]
    return schema, True


# ---------------------------------------------------------------------------- classes

def _base_params(kind: str) -> list[inspect.Parameter]:
    """Named keyword arguments of the kind's root base class (Layer, the base Optimizer)."""
    import keras

    base = {"layers": keras.layers.Layer, "optimizers": keras.optimizers.Optimizer}[kind]
    for klass in base.__mro__:
        params = [p for p in inspect.signature(klass.__init__).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if params:
            return params
    return []


def _base_docs(kind: str) -> dict[str, str]:
    import keras

    docs = dict(_BASE_DOCS)
    if kind == "layers":
        docs.update(arg_docs(keras.layers.Layer.__doc__))
    elif kind == "optimizers":
        docs.update(arg_docs(keras.optimizers.Adam.__doc__))   # the base Optimizer has no Args section
    return docs


def class_definition(kind: str, name: str, stats: dict) -> dict:
    """The definition of one class: its keyword arguments as an object schema."""
    obj = registry.lookup(kind, name)
    class_doc = inspect.getdoc(obj) or ""
    definition: dict[str, Any] = {"type": "object", "description": _first_line(class_doc)}
    note = ""
    try:
        params = [] if obj.__init__ is object.__init__ else list(registry.signature(kind, name).parameters.values())
    except (TypeError, ValueError) as exc:
        params, note = [], f"no constructor signature ({exc})"
    own = [p for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    base_kwargs = kind in _BASE_KWARG_KINDS and any(p.kind is p.VAR_KEYWORD for p in params)
    if not own and not base_kwargs and len(params) > 1:
        note = "the constructor takes only *args/**kwargs"
    if note:
        stats["bare"].append(f"{kind}.{name}")
        definition["x-kspec-note"] = f"arguments not described: {note}"
        return definition
    if base_kwargs:
        own += [p.replace(default=None) if p.default is p.empty else p
                for p in _base_params(kind) if p.name not in {q.name for q in own}]
    docs = {**_base_docs(kind), **arg_docs(class_doc)} if kind in _BASE_KWARG_KINDS else arg_docs(class_doc)
    properties: dict[str, Any] = {}
    for p in own:
        if kind == "layers" and p.name == "name":
            continue
        properties[p.name], typed = arg_schema(kind, name, p.name, p.default, docs.get(p.name, ""), class_doc)
        stats["args"] += 1
        if not typed:
            stats["untyped"].append(f"{name}.{p.name}")
    if kind == "layers":
        properties["name"] = {"$ref": "#/definitions/no_name"}
    definition["properties"] = properties
    definition["additionalProperties"] = False
    required = [p.name for p in own if p.default is p.empty]
    if required:
        definition["required"] = required
    stats["full"].append(f"{kind}.{name}")
    return definition


def _class_of(kind: str, name: str) -> str | None:
    """The class a name stands for in a one-key mapping (`adam` -> `Adam`), or None."""
    if inspect.isclass(registry.lookup(kind, name)):
        return name
    try:
        return registry._class_for_alias(kind, name)
    except registry.UnknownComponent:
        return None


def _usable_bare(kind: str, name: str) -> bool:
    """Whether the name alone is a valid value: it needs no required argument."""
    cls = _class_of(kind, name)
    if cls is None:
        return True
    try:
        params = registry.signature(kind, cls).parameters.values()
    except (TypeError, ValueError):
        return True
    return not any(p.default is p.empty and p.name != "self" and
                   p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def value_form(kind: str, names: list[str], classes: list[str]) -> dict:
    """`definitions.<form>`: a bare name, or a one-key mapping of a class name to its arguments."""
    form = VALUE_FORMS[kind]
    if kind == "activations":
        return {"description": "An activation function, by name (null: none, i.e. linear).",
                "enum": names + [None]}
    if kind == "applications":
        return {"description": "A model of keras.applications, by name.", "enum": names}
    mapping = {"type": "object",
               "description": f"A {form} as a one-key mapping: class name -> its keyword arguments.",
               "properties": {n: {"$ref": f"#/definitions/{_class_of(kind, n)}"}
                              for n in names if _class_of(kind, n) in classes},
               "minProperties": 1, "maxProperties": 1, "additionalProperties": False}
    if kind == "layers":
        return mapping
    needs_args = [n for n in names if not _usable_bare(kind, n)]   # `MeanIoU` alone fails in Keras
    bare = [n for n in names if n not in needs_args]
    example = next((n for n in bare if n.islower()), bare[0]) if bare else None
    schema: dict[str, Any] = {"description": f"A {form}: a name (`{example}`) or a one-key mapping of a class name to its "
                             "arguments." if example else f"A {form}: a one-key mapping of a class name to its "
                             f"arguments (`{{{names[0]}: {{...}}}}`).",
              "anyOf": [{"enum": names}, mapping]}
    if needs_args:
        schema["not"] = {"description": f"This {form} has required arguments: write it as a one-key mapping "
                                        f"with them (`{{{needs_args[0]}: {{...}}}}`).", "enum": needs_args}
    return schema


def component_schema(kind: str, version: str, stats: dict) -> dict:
    names = registry.names(kind)
    definitions: dict[str, Any] = {}
    classes = [] if kind in ("activations", "applications") else \
        [n for n in names if inspect.isclass(registry.lookup(kind, n))]
    definitions[VALUE_FORMS[kind]] = value_form(kind, names, classes)
    definitions["expression"] = EXPRESSION
    if kind == "layers":
        definitions["no_name"] = _NO_NAME
    for name in classes:
        definitions[name] = class_definition(kind, name, stats)
    return {"$schema": DRAFT7, "title": f"kspec {kind}",
            "description": f"Keras {kind} a kspec spec may name, with their keyword arguments "
                           "(generated by `make schemas`; do not edit).",
            "x-keras-version": version, "definitions": definitions}


# ---------------------------------------------------------------------------- files

def generate() -> tuple[dict[str, dict], dict]:
    """Every schema file, relative path -> content, and statistics about the arguments."""
    import keras

    version = keras.__version__
    stats: dict[str, Any] = {"full": [], "bare": [], "args": 0, "untyped": []}
    files = {f"components/{kind}.schema.json": component_schema(kind, version, stats)
             for kind in registry.KINDS}
    files["spec.schema.json"] = schema_skeleton.build(
        version=version, layer_names=registry.names("layers"))
    return files, stats


def dump(schema: dict) -> str:
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


def stale_files(files: dict[str, dict], out: Path) -> list[str]:
    """Paths (relative to `out`) that differ from what would be generated, or are extra."""
    stale = [rel for rel, schema in files.items()
             if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != dump(schema)]
    extra = [p.relative_to(out).as_posix() for p in sorted(out.glob("**/*.schema.json"))]
    return stale + [rel for rel in extra if rel not in files]


def write(files: dict[str, dict], out: Path) -> None:
    for rel, schema in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(schema), encoding="utf-8")


def _checked_in_version(out: Path) -> str | None:
    try:
        return json.loads((out / "spec.schema.json").read_text(encoding="utf-8")).get("x-keras-version")
    except (OSError, ValueError):
        return None


def schema_registry(schema_dir: Path = SCHEMA_DIR):
    """A `referencing.Registry` of every schema file, keyed by its file URI; imports no Keras."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7 as SPEC

    root = Path(schema_dir).resolve()
    return Registry().with_resources(
        (path.as_uri(), Resource.from_contents(json.loads(path.read_text(encoding="utf-8")),
                                               default_specification=SPEC))
        for path in sorted(root.glob("**/*.schema.json")))


def spec_validator(schema_dir: Path = SCHEMA_DIR):
    """A draft-07 validator of raw specs (`iter_errors(tree)`), from the files in `schema_dir`."""
    from jsonschema import Draft7Validator

    spec_uri = (Path(schema_dir).resolve() / "spec.schema.json").as_uri()
    return Draft7Validator({"$ref": spec_uri}, registry=schema_registry(schema_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compiler.schemagen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 and name the stale files if the schemas differ from what would be generated")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="the schemas folder (default: %(default)s)")
    parser.add_argument("--stats", action="store_true", help="print how many classes and arguments are typed")
    args = parser.parse_args(argv)
    files, stats = generate()
    if args.stats:
        print(f"classes described: {len(stats['full'])}, bare: {len(stats['bare'])} {stats['bare']}")
        print(f"arguments: {stats['args']}, untyped: {len(stats['untyped'])}")
        print("untyped:", " ".join(stats["untyped"]))
    if args.check:
        stale = stale_files(files, args.out)
        if stale:
            old, new = _checked_in_version(args.out), files["spec.schema.json"]["x-keras-version"]
            why = f" (generated with Keras {old}, installed {new})" if old and old != new else ""
            print(f"stale schemas{why}: {', '.join(stale)}; run `make schemas`", file=sys.stderr)
            return 1
        return 0
    write(files, args.out)
    print(f"wrote {len(files)} schema files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
