"""Blocks, repeats, parameters and node names: `model.layers` becomes a flat node list.

After expansion every node is `{Class: args, name: NAME[, inputs: [...]]}` or
`{share: NAME, name: NAME[, inputs: [...]]}`: no block uses, no repeats, no
`$param` or `${expr}` left. `inputs` is written only where it is not simply
"the previous node". Names are unique and readable: a block used as
`residual_2` yields `residual_2.conv_a`, ... (Keras forbids '/' in names);
the use's name also refers to the block's last node. Each expanded node keeps
the location of the line that wrote it, plus `via`: the use sites it came
through, so errors name both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import Collector, Loc
from ..suggest import did_you_mean
from .expr import ExprError, evaluate
from .tree import Map, Seq, format_path

SIBLINGS = ("name", "inputs", "share", "repeat", "layers", "call")
MAX_BLOCK_DEPTH = 16
MAX_NODES = 5000
MAX_ITERATIONS = 100_000   # repeat iterations in all (an empty or nested repeat adds no node, yet costs time)
MAX_VALUES = 2_000_000     # values copied while expanding (a large argument in a block used many times)

_PARAM = re.compile(r"^\$([A-Za-z_]\w*)$")
_WHOLE_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)
_INNER_EXPR = re.compile(r"\$\{([^}]*)\}")


def snake_case(name: str) -> str:
    """Keras's own default layer naming: `MaxPooling2D` -> `max_pooling2d`."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass
class Block:
    name: str
    params: dict[str, Any]          # name -> default (REQUIRED if none)
    layers: Seq
    loc: Loc | None
    path: tuple


REQUIRED = object()


@dataclass
class Scope:
    """Where expansion is: parameters in force, the name prefix, and local names."""

    env: dict[str, Any]
    prefix: str = ""
    names: dict[str, str] = field(default_factory=dict)   # local name -> full node name
    parent: "Scope | None" = None
    via: tuple[Loc, ...] = ()
    inputs: list[str] | None = None                      # what `$input` means here
    blocks_in_use: tuple[str, ...] = ()

    def lookup(self, name: str) -> str | None:
        scope = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None


class Expander:
    def __init__(self, blocks: dict[str, Block], layer_names: frozenset[str], errors: Collector):
        self.blocks, self.layer_names, self.errors = blocks, layer_names, errors
        self.nodes = Seq()
        self.taken: set[str] = set()
        self.use_counts: dict[str, int] = {}
        self.aliases: dict[str, str] = {}     # block use name -> its last node
        self.start: list[str] | None = None   # what the first node chains to (the single model input)
        self.too_big = False
        self.iterations = 0
        self.values = 0

    # -- parameters -------------------------------------------------------------------------

    def substitute(self, value: Any, env: dict, loc: Loc | None, via: tuple, path: tuple) -> Any:
        """A copy of `value` with `$param` and `${expr}` replaced; locations kept."""
        self.values += 1
        if self.values > MAX_VALUES:
            if not self.too_big:
                self.too_big = True
                self.errors.add(f"the model expands to more than {MAX_VALUES:,} values", loc, format_path(path))
            return None
        if isinstance(value, Map):
            out = Map(loc=value.loc, via=via or value.via)
            out.source_path = value.source_path
            for k, v in value.items():
                out.set(k, self.substitute(v, env, value.value_loc(k), via, path + (k,)),
                        value.key_locs.get(k), value.value_locs.get(k))
            return out
        if isinstance(value, Seq):
            return Seq((self.substitute(v, env, value.item_loc(i), via, path + (i,))
                        for i, v in enumerate(value)), value.loc, value.item_locs, via or value.via)
        if not isinstance(value, str) or "$" not in value:
            return value
        return self._substitute_text(value, env, loc, via, path)

    def _substitute_text(self, text: str, env: dict, loc, via, path) -> Any:
        if text == "$input" or text.startswith("$$"):
            return text[1:] if text.startswith("$$") else text
        try:
            match = _PARAM.match(text)
            if match:
                name = match.group(1)
                if name not in env:
                    known = ", ".join(sorted(env)) or "none"
                    self.errors.add(f"unknown parameter '${name}' (parameters here: {known})"
                                    + did_you_mean(name, env),
                                    loc, format_path(path), via=via)
                    return text
                return env[name]
            match = _WHOLE_EXPR.match(text)
            if match:
                return evaluate(match.group(1), env)
            return _INNER_EXPR.sub(lambda m: _number_text(evaluate(m.group(1), env)), text)
        except ExprError as exc:
            self.errors.add(f"bad expression '{text}': {exc}", loc, format_path(path), via=via)
            return text

    # -- names ------------------------------------------------------------------------------

    def fresh(self, base: str, scope: Scope) -> str:
        """A unique full name for `base` in `scope`: `dense`, `dense_1`, ... (Keras style)."""
        candidate, n = scope.prefix + base, 0
        while candidate in self.taken:
            n += 1
            candidate = f"{scope.prefix}{base}_{n}"
        return candidate

    def claim(self, full: str, loc, path, via) -> str:
        if full in self.taken:
            self.errors.add(f"duplicate node name '{full}'", loc, format_path(path), via=via,
                            hint="node names must be unique: rename one (`name:`)")
        self.taken.add(full)
        return full

    def resolve_refs(self, refs: Any, scope: Scope, loc, path, via) -> list[str]:
        """Names in `inputs` -> full node names (local names first, then enclosing scopes)."""
        refs = refs if isinstance(refs, list) else [refs]
        out: list[str] = []
        for ref in refs:
            if not isinstance(ref, str):
                self.errors.add(f"'inputs' takes node names, got {ref!r}", loc, format_path(path), via=via)
            elif ref == "$input":
                if scope.inputs is None:
                    self.errors.add("'$input' is only meaningful inside a block", loc, format_path(path), via=via)
                else:
                    out.extend(scope.inputs)
            else:
                out.append(scope.lookup(ref) or ref)   # unknown names are reported by validation
        return out

    # -- expansion --------------------------------------------------------------------------

    def overflowed(self, loc, path) -> bool:
        """True once the model has grown past MAX_NODES, MAX_ITERATIONS or MAX_VALUES (reported once, at
        the item that did it)."""
        if self.too_big:
            return True
        if len(self.nodes) <= MAX_NODES and self.iterations <= MAX_ITERATIONS:
            return False
        if not self.too_big:
            self.too_big = True
            what = f"{MAX_NODES} nodes" if len(self.nodes) > MAX_NODES else f"{MAX_ITERATIONS:,} repeat iterations"
            self.errors.add(f"the model expands to more than {what}", loc, format_path(path))
        return True

    def expand(self, items: Any, scope: Scope, previous: list[str] | None, path: tuple,
               loc: Loc | None = None) -> list[str] | None:
        """Expand a layer list (written at `loc`); returns the names the next node chains to."""
        if not isinstance(items, Seq):
            self.errors.add("expected a list of layers", getattr(items, "loc", None) or loc, format_path(path),
                            via=scope.via)
            return previous
        for index, item in enumerate(items):
            item_path = path + (index,)
            loc = items.item_loc(index)
            if self.overflowed(loc, item_path):
                return previous
            if not isinstance(item, Map):
                self.errors.add("a layer is a mapping such as `Dense: {units: 10}`", loc,
                                format_path(item_path), via=scope.via)
                continue
            if "repeat" in item:
                previous = self._repeat(item, scope, previous, item_path)
            else:
                previous = self._node_or_use(item, scope, previous, item_path)
        return previous

    def _repeat(self, item: Map, scope: Scope, previous, path) -> list[str] | None:
        spec = self.substitute(item["repeat"], scope.env, item.value_loc("repeat"), scope.via, path + ("repeat",))
        times, var = (spec.get("times"), spec.get("as")) if isinstance(spec, Map) else (spec, None)
        loc = item.value_loc("repeat")
        if isinstance(times, bool) or not isinstance(times, int) or times < 0:
            self.errors.add(f"'repeat' needs a whole number of times, got {times!r}", loc,
                            format_path(path + ("repeat",)), via=scope.via)
            return previous
        extra = set(item) - {"repeat", "layers", "name"}
        if extra:
            self.errors.add(f"a repeat item holds only 'repeat' and 'layers', not {', '.join(sorted(extra))}",
                            item.key_loc(sorted(extra)[0]), format_path(path), via=scope.via)
        if "layers" not in item:
            self.errors.add("'repeat' needs a 'layers' list to repeat", loc, format_path(path), via=scope.via)
            return previous
        per_time = len(item["layers"]) if isinstance(item["layers"], list) else 1
        if times * per_time > MAX_NODES or times > MAX_ITERATIONS:   # known before expanding: fail at once
            self.too_big = True
            self.errors.add(f"'repeat: {times}' expands to more than {MAX_NODES} nodes" if per_time else
                            f"'repeat: {times}' expands to more than {MAX_ITERATIONS:,} repeat iterations",
                            loc, format_path(path + ("repeat",)), via=scope.via)
            return previous
        for i in range(times):
            self.iterations += 1
            if self.overflowed(loc, path):
                break
            env = dict(scope.env, **({var: i} if isinstance(var, str) else {}))
            inner = Scope(env, scope.prefix, {}, scope, scope.via, scope.inputs, scope.blocks_in_use)
            inner.repeat_index = i + 1
            previous = self.expand(item["layers"], inner, previous, path + ("layers",), item.value_loc("layers"))
        return previous

    def _node_or_use(self, item: Map, scope: Scope, previous, path) -> list[str] | None:
        kinds = [k for k in item if k not in SIBLINGS]
        if "share" in item:
            kinds = ["share"] + kinds
        if len(kinds) != 1:
            what = ", ".join(kinds) if kinds else "none"
            self.errors.add(f"a layer item names exactly one layer class, block or 'share' (found: {what})",
                            item.loc, format_path(path), via=scope.via)
            return previous
        kind = kinds[0]
        if kind in self.blocks:
            return self._use_block(item, kind, scope, previous, path)
        if kind != "share" and kind not in self.layer_names:
            hint = ""
            if kind in ("Lambda", "TFSMLayer"):
                hint = (f"{kind} runs arbitrary code, which a spec may not do; write the layer as a Keras "
                        "layer class in a module of your own and load it with --plugin MODULE")
            self.errors.add(f"unknown layer class or block '{kind}'"
                            + did_you_mean(kind, set(self.layer_names) | set(self.blocks)),
                            item.key_loc(kind), format_path(path + (kind,)), via=scope.via, hint=hint)
            return previous
        node = self.substitute(item, scope.env, item.loc, scope.via, path)
        node.via = scope.via
        node.source_path = path
        templated = isinstance(item.get("name"), str) and "$" in item["name"]
        name = self._node_name(node, kind, scope, path, templated)
        if kind == "share":
            target = node["share"]
            node.set("share", scope.lookup(target) or target if isinstance(target, str) else target,
                     node.key_locs.get("share"), node.value_locs.get("share"))
        inputs = (self.resolve_refs(node["inputs"], scope, node.value_loc("inputs"), path + ("inputs",), scope.via)
                  if "inputs" in node else previous)
        out = Map(loc=node.loc, via=scope.via)
        out.source_path = path
        for key in node:
            if key not in ("name", "inputs"):
                out.set(key, node[key], node.key_locs.get(key), node.value_locs.get(key))
        out.set("name", name, node.key_locs.get("name"), node.value_locs.get("name"))
        if inputs is not None and inputs != self._last():
            out.set("inputs", Seq(inputs, node.value_loc("inputs"), [node.value_loc("inputs")] * len(inputs)),
                    node.key_locs.get("inputs"), node.value_locs.get("inputs"))
        self.nodes.add(out, out.loc)
        return [name]

    def _node_name(self, node: Map, kind: str, scope: Scope, path, templated: bool) -> str:
        given = node.get("name")
        if given is None:
            base = snake_case(kind) if kind != "share" else f"{snake_case(str(node.get('share')))}_shared"
            full = self.fresh(base, scope)
        else:
            local = str(given)
            index = getattr(scope, "repeat_index", None)
            written = None
            if index is not None and not templated:   # a plain name repeated: number each copy
                written = local
                local = f"{local}_{index}"
            full = scope.prefix + local
            scope.names[written or local] = full
        return self.claim(full, node.value_loc("name") if given is not None else node.loc, path, scope.via)

    def _last(self) -> list[str] | None:
        return [self.nodes[-1]["name"]] if self.nodes else self.start

    def _use_block(self, item: Map, block_name: str, scope: Scope, previous, path) -> list[str] | None:
        block = self.blocks[block_name]
        use_loc = item.key_loc(block_name)
        if block_name in scope.blocks_in_use or len(scope.blocks_in_use) >= MAX_BLOCK_DEPTH:
            chain = " -> ".join(scope.blocks_in_use + (block_name,))
            self.errors.add(f"block '{block_name}' uses itself ({chain})", use_loc, format_path(path), via=scope.via)
            return previous
        use = self.substitute(item, scope.env, item.loc, scope.via, path)
        args = use[block_name] if use[block_name] is not None else Map(loc=use_loc)
        if not isinstance(args, Map):
            self.errors.add(f"block '{block_name}' takes a mapping of parameters", use_loc, format_path(path),
                            via=scope.via)
            return previous
        env = {}
        for param, default in block.params.items():
            if param in args:
                env[param] = args[param]
            elif default is REQUIRED:
                self.errors.add(f"block '{block_name}' needs parameter '{param}'", use_loc,
                                format_path(path + (block_name,)), via=scope.via)
            else:
                env[param] = default
        for given in args:
            if given not in block.params:
                self.errors.add(f"block '{block_name}' has no parameter '{given}' (parameters: "
                                f"{', '.join(block.params) or 'none'})" + did_you_mean(given, block.params),
                                args.key_loc(given), format_path(path + (block_name, given)), via=scope.via)
        if "name" in use:
            use_name = self.claim(scope.prefix + str(use["name"]), use.value_loc("name"), path, scope.via)
            scope.names[str(use["name"])] = use_name
        else:
            count = self.use_counts.get(block_name, 0) + 1
            self.use_counts[block_name] = count
            use_name = self.fresh(f"{block_name}_{count}", scope)
            self.taken.add(use_name)
        inputs = (self.resolve_refs(use["inputs"], scope, use.value_loc("inputs"), path + ("inputs",), scope.via)
                  if "inputs" in use else previous)
        inner = Scope(env, use_name + ".", {}, None, (use_loc,) + scope.via, inputs,
                      scope.blocks_in_use + (block_name,))
        inner.parent = _GlobalOnly(scope)
        last = self.expand(block.layers, inner, inputs, block.path + ("layers",), block.loc)
        if last and last[0].startswith(use_name + "."):
            last = [self._rename_output(last[0], use_name)]
        if last:   # the use's name refers to the block's output
            scope.names[use_name[len(scope.prefix):]] = last[0]
            self.aliases[use_name] = last[0]
        return last

    def _rename_output(self, old: str, use_name: str) -> str:
        """A block's last node is the use's output: name it after the use (`species`, not
        `species.probs`), so outputs, losses and metrics read as the spec does."""
        node = next(n for n in reversed(self.nodes) if n["name"] == old)
        node.set("name", use_name, node.key_locs.get("name"), node.value_locs.get("name"))
        return use_name


class _GlobalOnly(Scope):
    """Inside a block, names resolve locally first, then to top-level nodes (never to a caller's locals)."""

    def __init__(self, caller: Scope):
        root = caller
        while root.parent is not None and not isinstance(root, _GlobalOnly):
            root = root.parent
        super().__init__({}, "", root.names, None)


def _number_text(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
