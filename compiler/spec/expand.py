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
from typing import Any, Iterable

from ..errors import Collector, Loc
from ..suggest import did_you_mean
from ..tensor_expr import input_names
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
class Use:
    """One block use, as expanded: its inputs and each of its nodes' inputs (`share:` of the use copies them)."""

    name: str
    inputs: list[str]
    nodes: dict[str, list[str]]    # node name -> its inputs, in expansion order


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
    repeat_index: int | None = None                      # 1-based iteration of the repeat this scope is

    def lookup(self, name: str) -> str | None:
        scope: Scope | None = self
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
        self.uses: dict[str, Use] = {}        # block use name -> its nodes and wiring (for `share:`)
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
            return _INNER_EXPR.sub(lambda m: _inner_text(m.group(1), env), text)
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
        bindings: Iterable[dict]
        spec = self.substitute(item["repeat"], scope.env, item.value_loc("repeat"), scope.via, path + ("repeat",))
        times, var = (spec.get("times"), spec.get("as")) if isinstance(spec, Map) else (spec, None)
        loc = item.value_loc("repeat")
        if isinstance(spec, Map) and "for" in spec:
            listed = self._for_bindings(spec, loc, scope, path + ("repeat",))
            if listed is None:
                return previous
            bindings, times = listed, len(listed)
        elif isinstance(times, bool) or not isinstance(times, int) or times < 0:
            self.errors.add(f"'repeat' needs a whole number of times or `for: [...]`, got {times!r}", loc,
                            format_path(path + ("repeat",)), via=scope.via)
            return previous
        else:
            bindings = ({var: i} if isinstance(var, str) else {} for i in range(times))   # lazy: bounded below
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
        for i, binding in enumerate(bindings):
            self.iterations += 1
            if self.overflowed(loc, path):
                break
            env = dict(scope.env, **binding)
            inner = Scope(env, scope.prefix, {}, scope, scope.via, scope.inputs, scope.blocks_in_use)
            inner.repeat_index = i + 1
            previous = self.expand(item["layers"], inner, previous, path + ("layers",), item.value_loc("layers"))
        return previous

    def _for_bindings(self, spec: Map, loc, scope: Scope, path) -> list[dict] | None:
        """`{for: [32, 64], as: filters}` -> [{filters: 32}, {filters: 64}]; over a mapping,
        `{for: {color: 3, size: 5}, as: [feature, vocabulary]}` binds each key and its value
        (`as: feature` binds the key only)."""
        over, var = spec["for"], spec.get("as")
        where = format_path(path + ("for",))
        names = list(var) if isinstance(var, Seq) else [var]
        if "times" in spec:
            self.errors.add("'repeat' takes `times` or `for`, not both", loc, where, via=scope.via)
            return None
        if not names or not all(isinstance(n, str) and n.isidentifier() for n in names) \
                or len(names) > (2 if isinstance(over, Map) else 1):
            form = "`as: [key, value]` or `as: key`" if isinstance(over, Map) else "`as: name`"
            self.errors.add(f"'repeat: {{for: ...}}' names what each item is called with {form}, got {var!r}",
                            spec.value_loc("as") or loc, format_path(path + ("as",)), via=scope.via)
            return None
        if isinstance(over, Seq):
            return [{names[0]: value} for value in over]
        if isinstance(over, Map):
            return [dict(zip(names, (key, value))) for key, value in over.items()]
        self.errors.add(f"'for' takes a list or a mapping to repeat over, got {over!r}", spec.value_loc("for") or loc,
                        where, via=scope.via)
        return None

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
        if kind == "share":
            target = node["share"]
            target = scope.lookup(target) or target if isinstance(target, str) else target
            if isinstance(target, str) and target in self.uses:
                return self._share_use(node, self.uses[target], scope, previous, path, templated)
            node.set("share", target, node.key_locs.get("share"), node.value_locs.get("share"))
        name = self._node_name(node, kind, scope, path, templated)
        inputs = (self.resolve_refs(node["inputs"], scope, node.value_loc("inputs"), path + ("inputs",), scope.via)
                  if "inputs" in node else previous)
        if kind == "Expression" and isinstance(node[kind], Map) and "names" not in node[kind]:
            node[kind].set("names", Seq(self._expression_names(node, scope)), None, None)
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

    def _expression_names(self, node: Map, scope: Scope) -> list[str]:
        """What an Expression calls its inputs: the references as written in `inputs:` (`x` when it chains)."""
        if "inputs" not in node:
            return ["x"]
        written = node["inputs"] if isinstance(node["inputs"], list) else [node["inputs"]]
        refs: list = []
        for ref in written:
            if ref == "$input":
                refs += ["x"] if len(scope.inputs or ()) == 1 else [None] * len(scope.inputs or ())
            else:
                refs.append(ref)
        return input_names([r if r is not None else "" for r in refs])

    def _share_use(self, node: Map, use: "Use", scope: Scope, previous, path, templated: bool) -> list[str]:
        """`- share: tower_a` where `tower_a` is a block use: every layer of that use applied again (same
        weights), in the same wiring, to this item's inputs. Names: `tower_b.dense`, ..., `tower_b`."""
        given = node.get("name")
        if given is None:
            new_use = self.fresh(f"{use.name.rsplit('.', 1)[-1]}_shared", scope)
        else:
            local = str(given)
            index = scope.repeat_index
            if index is not None and not templated:
                local = f"{local}_{index}"
            new_use = scope.prefix + local
            scope.names[str(given) if index is not None and not templated else local] = new_use
        loc = node.value_loc("name") if given is not None else node.loc
        self.claim(new_use, loc, path, scope.via)
        inputs = (self.resolve_refs(node["inputs"], scope, node.value_loc("inputs"), path + ("inputs",), scope.via)
                  if "inputs" in node else previous) or []
        if len(inputs) != len(use.inputs):
            self.errors.add(f"'share: {use.name}' applies a block use that takes {len(use.inputs)} input(s) "
                            f"({', '.join(use.inputs)}), but this item gives {len(inputs)}",
                            node.value_loc("share"), format_path(path + ("share",)), via=scope.via)
            return previous
        renamed = {name: (new_use if name == use.name else new_use + name[len(use.name):]
                          if name.startswith(use.name + ".") else f"{new_use}.{name}") for name in use.nodes}
        outer = dict(zip(use.inputs, inputs))
        for name, wired in use.nodes.items():
            copy = Map(loc=node.loc, via=scope.via)
            copy.source_path = path
            copy.set("share", name, node.key_locs.get("share"), node.value_locs.get("share"))
            copy.set("name", self.claim(renamed[name], loc, path, scope.via) if name != use.name else new_use)
            refs = [renamed.get(r) or outer.get(r, r) for r in wired]
            if refs != self._last():
                copy.set("inputs", Seq(refs, node.loc, [node.loc] * len(refs)))
            self.nodes.add(copy, copy.loc)
        self.uses[new_use] = Use(new_use, list(inputs), {renamed[n]: [renamed.get(r) or outer.get(r, r) for r in w]
                                                         for n, w in use.nodes.items()})
        self.aliases[new_use] = new_use
        return [new_use]

    def _node_name(self, node: Map, kind: str, scope: Scope, path, templated: bool) -> str:
        given = node.get("name")
        if given is None:
            base = snake_case(kind) if kind != "share" else f"{snake_case(str(node.get('share')))}_shared"
            full = self.fresh(base, scope)
        else:
            local = str(given)
            index = scope.repeat_index
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
            elif isinstance(default, str) and "$" in default:   # a default may use earlier parameters
                env[param] = self.substitute(default, env, use_loc, scope.via, path + (block_name, param))
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
        use_site = (use_loc,) if use_loc is not None else ()   # a map built in code has no location
        inner = Scope(env, use_name + ".", {}, None, use_site + scope.via, inputs,
                      scope.blocks_in_use + (block_name,))
        inner.parent = _GlobalOnly(scope)
        first = len(self.nodes)
        last = self.expand(block.layers, inner, inputs, block.path + ("layers",), block.loc)
        if last and last[0].startswith(use_name + "."):
            last = [self._rename_output(last[0], use_name)]
        if last:   # the use's name refers to the block's output
            scope.names[use_name[len(scope.prefix):]] = last[0]
            self.aliases[use_name] = last[0]
        if last == [use_name] and inputs is not None:
            self.uses[use_name] = Use(use_name, list(inputs), self._wiring(first))
        return last

    def _wiring(self, first: int) -> dict[str, list[str]]:
        """Node name -> its inputs, for the nodes from index `first` on (a block use's nodes)."""
        wiring = {}
        for k in range(first, len(self.nodes)):
            node = self.nodes[k]
            if "inputs" in node:
                wiring[node["name"]] = list(node["inputs"])
            else:
                wiring[node["name"]] = [self.nodes[k - 1]["name"]] if k else list(self.start or [])
        return wiring

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


def _inner_text(expr: str, env: dict) -> str:
    """`${i + 1}` -> its number; `${feature}` -> a text parameter as it is (a repeat over names)."""
    name = expr.strip()
    if name in env and isinstance(env[name], str):
        return env[name]
    return _number_text(evaluate(expr, env))


def _number_text(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
