"""jsonschema errors, rewritten as plain-words diagnostics that point at the spec.

jsonschema's own messages dump whole instances and schemas ("... is not valid
under any of the given schemas"); users need "unknown argument 'filtrs' for
Conv2D; did you mean 'filters'?" at the line of `filtrs`.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import Diagnostic
from ..suggest import did_you_mean
from .tree import locate

MAX_SHOWN = 80     # a value quoted in a message is cut to this many characters

_TYPE_WORDS = {"integer": "a whole number", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "a mapping", "null": "null"}


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'" if len(value) <= MAX_SHOWN else f"'{value[:MAX_SHOWN - 3]}...' ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def _numeric_text(value: Any) -> bool:
    """'1e-3 ', ' 32', '0.5': a number written in quotes (or with spaces that made it text)."""
    if not isinstance(value, str) or len(value) > 40:
        return False
    try:
        return math.isfinite(float(value.strip()))
    except ValueError:
        return False


def _number_type(error, path: list) -> str | None:
    """"a whole number" / "a number" if the schema accepts one at `path` (directly or as one alternative
    of an anyOf somewhere above it), else None."""
    stack = [error]
    while stack:
        e = stack.pop()
        if e.validator == "type" and list(e.absolute_path) == path:
            types = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
            if "number" in types:
                return _TYPE_WORDS["number"]
            if "integer" in types:
                return _TYPE_WORDS["integer"]
        stack.extend(e.context or ())
    return None


def _is_expression_branch(error) -> bool:
    """The `$param` / `${expr}` alternative every typed argument allows in the raw spec."""
    return error.validator == "pattern" and str(error.validator_value).startswith("^\\$")


def pick(error):
    """The most useful error inside an anyOf/oneOf: the branch whose type matched, deepest first."""
    while error.validator in ("anyOf", "oneOf") and error.context:
        branches = [e for e in error.context if not _is_expression_branch(e)] or list(error.context)
        branches = _chosen_branches(error, branches)
        inner = [e for e in branches if not (e.validator == "type" and not e.relative_path)]
        if not inner:   # no branch had the right type: one "expected X or Y" message
            return _merged_type_error(error, branches)
        candidates = inner
        deeper = max(len(e.relative_path) for e in candidates)
        best = [e for e in candidates if len(e.relative_path) == deeper]
        # among equals, prefer a concrete complaint over a generic one
        rank = {"additionalProperties": 0, "enum": 1, "required": 2, "type": 4}
        best.sort(key=lambda e: rank.get(e.validator, 3))
        nxt = best[0]
        if nxt is error:
            break
        error = nxt
    return error


def _chosen_branches(error, branches: list) -> list:
    """Alternatives told apart by a required key (`{csv: ...}` vs `{sklearn: ...}`): keep the errors of
    the alternatives whose required keys the mapping has, so a typo in a csv source's parameters is
    reported against the csv form, not against the first form listed."""
    options, instance = error.validator_value, error.instance
    if not isinstance(instance, dict) or not isinstance(options, list):
        return branches

    def chosen(e) -> bool:
        path = list(getattr(e, "relative_schema_path", []) or [])
        if not path or not isinstance(path[0], int) or path[0] >= len(options):
            return False
        required = options[path[0]].get("required") if isinstance(options[path[0]], dict) else None
        if not required:
            return False
        return all(k in instance for k in required)

    kept = [e for e in branches if chosen(e)]
    return kept or branches


class _TypeError:
    """A stand-in for a jsonschema `type` error listing every accepted type."""

    validator = "type"

    def __init__(self, error, types):
        self.instance, self.schema, self.absolute_path = error.instance, error.schema, error.absolute_path
        self.validator_value, self.context, self.message = types, [], error.message


def _merged_type_error(error, branches: list) -> Any:
    types: list[str] = []
    for e in branches:
        for t in (e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]):
            if e.validator == "type" and t not in types:
                types.append(t)
    return _TypeError(error, types) if types else branches[0]


def to_diagnostics(error, tree, display_path) -> list[Diagnostic]:
    """One jsonschema error -> diagnostics (an `additionalProperties` error may name several keys)."""
    original, error = error, pick(error)
    if _numeric_text(error.instance) and (words := _number_type(original, list(error.absolute_path))):
        loc, via = locate(tree, list(error.absolute_path))
        key = error.absolute_path[-1] if error.absolute_path else "value"
        return [Diagnostic(f"expected {words}, got the quoted text {describe(error.instance)}", loc,
                           display_path(list(error.absolute_path)), via=via,
                           hint=f"write the number without quotes or spaces: `{key}: {error.instance.strip()}`")]
    path = list(error.absolute_path)
    instance, schema, kind = error.instance, error.schema, error.validator
    where = display_path(path)

    def at(p, key=False, message=""):
        loc, via = locate(tree, p, key=key)
        return Diagnostic(message, loc, display_path(p), via=via)

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        extras = [k for k in instance if k not in schema.get("properties", {})]
        owner = _owner(path)
        out = []
        for key in extras:
            what = f"argument '{key}' for {owner}" if owner else f"key '{key}'" + (f" in {where}" if where else "")
            out.append(at(path + [key], key=True, message=f"unknown {what}" + did_you_mean(key, allowed)))
        return out
    if kind == "required":
        # a misspelt key is reported as unknown, with the suggestion; don't also call it missing
        unknown = [given for given in instance if given not in schema.get("properties", {})]
        missing = [k for k in error.validator_value if k not in instance
                   and not any(k in did_you_mean(given, [k]) for given in unknown)]
        return [at(path, key=True, message=f"missing required key '{k}'" + (f" in {where}" if where else ""))
                for k in missing]
    if kind == "type":
        types: list[str] = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        accepted = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return [at(path, message=f"expected {accepted}, got {describe(instance)}")]
    if kind == "enum":
        options = [o for o in error.validator_value if o is not None]
        shown = ", ".join(str(o) for o in options[:8]) + (", ..." if len(options) > 8 else "")
        hint = did_you_mean(str(instance), [str(o) for o in options]) if isinstance(instance, str) else ""
        return [at(path, message=f"{describe(instance)} is not allowed here{hint or f' (expected one of: {shown})'}")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return [at(path, message=f"must be {sign} {error.validator_value}, got {describe(instance)}")]
    if kind in ("minProperties", "maxProperties") and isinstance(instance, dict):
        return [at(path, message="expected a one-key mapping such as `{Adam: {learning_rate: 0.01}}`, "
                                 f"got {len(instance)} keys")]
    if kind in ("minItems", "maxItems"):
        return [at(path, message=f"expected {'at least' if kind == 'minItems' else 'at most'} "
                                 f"{error.validator_value} items, got {len(instance)}")]
    if kind == "const":
        return [at(path, message=f"expected {describe(error.validator_value)}, got {describe(instance)}")]
    if kind == "not":   # the schema says why in the negated schema's description
        reason = (error.validator_value or {}).get("description") or schema.get("description") or error.message
        return [at(path, message=f"{describe(instance)} is not allowed here: {reason}")]
    if kind == "pattern":
        return [at(path, message=f"{describe(instance)} does not have the expected form")]
    message = error.message if len(error.message) < 200 else error.message[:200] + "..."
    return [at(path, message=message)]


def _owner(path: list) -> str | None:
    """`['model', 'layers', 3, 'Conv2D']` -> "Conv2D": the class whose arguments these are."""
    if len(path) >= 4 and path[:2] == ["model", "layers"] and isinstance(path[-1], str) and path[-1][:1].isupper():
        return path[-1]
    if len(path) >= 3 and path[0] == "train" and isinstance(path[-1], str) and path[-1][:1].isupper():
        return path[-1]
    return None
