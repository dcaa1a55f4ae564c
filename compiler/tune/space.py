"""The `search:` section: its schema, its typed form, and the checks `kspec validate` runs on it.

    search:
      objective: {metric: val_accuracy, direction: maximize}
      trials: 40
      sampler: tpe                       # one of SAMPLERS
      pruner: {median: {warmup_epochs: 3}}   # one of PRUNERS
      storage: auto                      # the study directory's journal file, or postgresql://...
      parameters:
        train.optimizer.Adam.learning_rate: {float: [1.0e-4, 1.0e-1], log: true}
        train.batch_size: {choice: [32, 64, 128]}

A parameter's key is a `--set` path, so a trial is exactly `kspec train SPEC --set PATH=VALUE ...`.
The closed lists (samplers, pruners and their arguments) are stated here once; the schema
generator and the tuner import them. Nothing here imports Optuna, TensorFlow or Keras:
`kspec validate` stays instant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import Collector, Diagnostic, Loc, SpecError
from ..suggest import did_you_mean

SAMPLERS = ("tpe", "random", "grid", "cmaes", "auto")
PRUNERS: dict[str, dict[str, str]] = {       # pruner -> its arguments (all integers) and what each means
    "none": {},
    "median": {"warmup_epochs": "epochs reported before a trial may be pruned (default 0)",
               "startup_trials": "finished trials before any is pruned (default 5)"},
    "hyperband": {"min_epochs": "epochs every trial gets (default 1)",
                  "max_epochs": "the most epochs a trial gets (default: train.epochs)",
                  "reduction_factor": "1/reduction_factor of the trials go on at each rung (default 3)"},
}
DIRECTIONS = ("maximize", "minimize")
STORAGE_URL = re.compile(r"^(auto|postgresql(\+psycopg2)?://.+)$")
KINDS = ("float", "int", "choice")

# Bounds on what the spec controls, before anything is spent on it.
MAX_TRIALS = 100_000
MAX_PARAMETERS = 64
MAX_CHOICES = 256
MAX_GRID = 1_000_000


def schema() -> dict:
    """The JSON Schema of `search:` (spliced into schemas/spec.schema.json by schema_skeleton)."""
    number = {"type": "number"}
    bounds = {"type": "array", "minItems": 2, "maxItems": 2, "description": "[low, high], both included."}

    def form(kind: str, items: dict, **extra) -> dict:
        return {"type": "object", "required": [kind], "additionalProperties": False,
                "properties": {kind: {**bounds, "items": items}, **extra}}

    parameter = {"description": "A `--set` path -> the values it takes.", "oneOf": [
        form("float", number, log={"type": "boolean", "description": "Sample on a log scale (low > 0)."},
             step={"type": "number", "exclusiveMinimum": 0, "description": "Only low + k * step."}),
        form("int", {"type": "integer"}, log={"type": "boolean", "description": "Sample on a log scale (low > 0)."},
             step={"type": "integer", "minimum": 1, "description": "Only low + k * step."}),
        {"type": "object", "required": ["choice"], "additionalProperties": False,
         "properties": {"choice": {"type": "array", "minItems": 1, "maxItems": MAX_CHOICES,
                                   "description": "The values (any YAML: numbers, names, mappings)."}}},
    ]}
    pruner_forms: list[dict] = [{"enum": list(PRUNERS)}]
    for name, args in PRUNERS.items():
        if args:
            pruner_forms.append({"type": "object", "required": [name], "additionalProperties": False,
                                 "properties": {name: {"type": ["object", "null"], "additionalProperties": False,
                                                       "properties": {a: {"type": "integer", "minimum": 0,
                                                                          "description": d}
                                                                      for a, d in args.items()}}}})
    return {"type": "object", "additionalProperties": False, "required": ["objective", "parameters"],
            "description": "A hyper-parameter search run by `kspec tune` (ignored by `kspec train`).",
            "properties": {
                "objective": {"type": "object", "additionalProperties": False, "required": ["metric"],
                              "properties": {"metric": {"type": "string", "description": "A metric of "
                                                        "history.csv, e.g. val_accuracy."},
                                             "direction": {"enum": list(DIRECTIONS)}}},
                "trials": {"type": "integer", "minimum": 1, "maximum": MAX_TRIALS,
                           "description": "Trials in total, across every process and machine (default 20)."},
                "sampler": {"enum": list(SAMPLERS), "description": "How Optuna picks values (default tpe)."},
                "pruner": {"description": "Stop bad trials early (default none).", "anyOf": pruner_forms},
                "storage": {"type": "string", "pattern": STORAGE_URL.pattern,
                            "description": "`auto`: a journal file in the study directory; or postgresql://..."},
                "parameters": {"type": "object", "minProperties": 1, "maxProperties": MAX_PARAMETERS,
                               "additionalProperties": parameter},
            }}


@dataclass(frozen=True)
class Param:
    """One searched value: `path` is the `--set` path, `kind` one of KINDS."""

    path: str
    kind: str
    low: float = 0.0                      # int or float bounds (unused by a choice)
    high: float = 0.0
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    loc: Loc | None = None

    @property
    def steps(self) -> list[str | int]:
        from ..spec.validate import override_steps

        return override_steps(self.path)

    def corners(self) -> list[Any]:
        """The values the spec must validate at: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous float."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        count = int((self.high - self.low) / self.step + 1e-9) + 1
        return [self.low + k * self.step for k in range(min(count, MAX_GRID + 1))]


@dataclass(frozen=True)
class SearchSpec:
    metric: str
    direction: str
    trials: int
    sampler: str
    pruner: str
    pruner_args: dict[str, int] = field(default_factory=dict)
    storage: str = "auto"
    parameters: tuple[Param, ...] = ()
    loc: Loc | None = None


def set_text(path: str, value: Any) -> str:
    """`PATH=VALUE` for `--set`: JSON is YAML, and reads back exactly (floats keep every digit)."""
    return f"{path}={json.dumps(value)}"


def ordered(params: tuple[Param, ...]) -> list[Param]:
    """Shorter paths first: `train.optimizer: {choice: ...}` is set before `train.optimizer.Adam.x`."""
    return sorted(params, key=lambda p: len(p.steps))


def parent_exists(tree: Any, steps: list) -> bool:
    node = tree
    for step in steps[:-1]:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        else:
            return False
    return isinstance(node, dict) or (isinstance(node, list) and isinstance(steps[-1], int) and steps[-1] < len(node))


def set_value(tree: Any, steps: list, value: Any) -> None:
    """What `--set` does, on a plain tree (for deciding which parameters a trial uses)."""
    node = tree
    for step in steps[:-1]:
        node = node[step]
    node[steps[-1]] = value


def active(params: tuple[Param, ...], base: Any, chosen: dict[str, Any] | None = None, ask=None) -> dict[str, Any]:
    """The parameters a trial sets, in order, given the values chosen so far.

    A parameter whose parent does not exist once the shorter paths are set (the Adam learning
    rate in a trial that chose SGD) is not used by that trial. `ask(param)` picks a value for a
    parameter not in `chosen`. `base` is the merged spec tree (plain); it is changed in place.
    """
    out: dict[str, Any] = {}
    for param in ordered(params):
        if not parent_exists(base, param.steps):
            continue
        value = chosen[param.path] if chosen is not None and param.path in chosen else ask(param)
        out[param.path] = value
        set_value(base, param.steps, value)
    return out


def base_tree(path: str | Path, overrides: list[str]) -> Any:
    """The spec as `--set` sees it: `extends` merged, the command line's overrides applied (plain)."""
    from ..spec.tree import plain
    from ..spec.validate import merged_tree

    return plain(merged_tree(path, overrides))


def typed(search: dict, file: str) -> SearchSpec:
    """The typed form of a schema-valid `search:` Map (locations kept)."""
    params = []
    parameters = search["parameters"]
    for path, body in parameters.items():
        loc = parameters.key_loc(path) if hasattr(parameters, "key_loc") else None
        kind = next(k for k in KINDS if k in body)
        if kind == "choice":
            params.append(Param(path, kind, choices=tuple(_plain(body["choice"])), loc=loc))
        else:
            low, high = body[kind]
            params.append(Param(path, kind, low, high, bool(body.get("log", False)), body.get("step"), loc=loc))
    objective = search["objective"]
    metric = str(objective["metric"])
    direction = objective.get("direction") or ("minimize" if re.search(r"loss|error", metric) else "maximize")
    pruner = search.get("pruner", "none")
    pruner_args: dict[str, int] = {}
    if isinstance(pruner, dict):
        (pruner, args), = pruner.items()
        pruner_args = dict(args or {})
    return SearchSpec(metric, direction, int(search.get("trials", 20)), search.get("sampler", "tpe"), pruner,
                      pruner_args, search.get("storage", "auto"), tuple(params), getattr(search, "loc", None))


def _plain(value: Any) -> Any:
    from ..spec.tree import plain

    return plain(value)


def produced_metrics(spec) -> list[str]:
    """The history.csv columns a spec's training logs: loss and metrics, `val_` ones with a validation split."""
    if spec.train is None:
        return []
    outputs = list(spec.model.outputs)
    several = len(outputs) > 1
    names = ["loss"]
    for out in outputs:
        if several:
            names.append(f"{out}_loss")
        for metric in spec.train.metrics.get(out, ()):
            name = metric.args.get("name") or (metric.name if metric.name[:1].islower() else _snake(metric.name))
            names.append(f"{out}_{name}" if several else name)
    if spec.data is not None and spec.data.validation > 0:
        names += [f"val_{n}" for n in names]
    return names


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def check_search(spec, path: str | Path, overrides: Sequence[str] = ()) -> SearchSpec:
    """The meaning of a schema-valid `search:` section; raises SpecError listing every problem.

    Checked: bounds ordered, `log` with a positive low bound, a step that fits, the objective one
    of the metrics the spec logs, each path's parent present in the spec (or made by a shorter
    searched path's choice), and the whole spec valid at each bound and each choice.
    """
    tree = spec.tree
    search = tree["search"]
    errors = Collector()
    result = typed(search, str(path))
    params_map = search["parameters"]
    bad: set[str] = set()            # parameters with a problem of their own: not tried in the spec

    objective = search["objective"]
    produced = produced_metrics(spec)
    if result.metric not in produced:
        errors.add(f"the objective '{result.metric}' is not a metric this spec logs (it logs: "
                   f"{', '.join(produced) or 'nothing: there is no train section'})"
                   + did_you_mean(result.metric, produced), objective.value_loc("metric"), "search.objective.metric",
                   hint="a val_ metric needs data.split.validation > 0" if result.metric.startswith("val_")
                   and (spec.data is None or spec.data.validation <= 0) else "")
    if result.pruner == "hyperband" and "max_epochs" not in result.pruner_args and spec.train is None:
        errors.add("hyperband needs max_epochs (there is no train.epochs)", search.value_loc("pruner"), "search.pruner")

    for param in result.parameters:
        where = f"search.parameters.{param.path}"
        loc = params_map.value_loc(param.path)
        before = len(errors.diagnostics)
        if param.kind != "choice":
            if param.low > param.high:
                errors.add(f"the bounds are not in order: low {param.low} > high {param.high}", loc, where)
            if param.log and param.low <= 0:
                errors.add(f"`log: true` needs a positive low bound, got {param.low}", loc, where)
            if param.log and param.step is not None:
                errors.add("`log` and `step` cannot be combined (Optuna samples one or the other)", loc, where)
            if param.step is not None and param.low <= param.high and param.step > param.high - param.low > 0:
                errors.add(f"step {param.step} is larger than the range [{param.low}, {param.high}]", loc, where)
        if len(errors.diagnostics) > before:
            bad.add(param.path)
    if result.sampler == "grid":
        size = 1
        for param in result.parameters:
            values = param.grid()
            if values is None:
                errors.add("the grid sampler needs a `step` (or a choice) for every float", params_map.value_loc(
                    param.path), f"search.parameters.{param.path}")
            else:
                size *= max(len(values), 1)
        if size > MAX_GRID:
            errors.add(f"the grid has {size:,} points; at most {MAX_GRID:,}", search.value_loc("parameters"),
                       "search.parameters")
    _check_paths(result, path, list(overrides), params_map, errors, bad)
    errors.raise_if_any()
    return result


def _check_paths(result: SearchSpec, path, overrides: list[str], params_map, errors: Collector,
                 bad: set[str]) -> None:
    """Each parameter's parent exists (in the spec, or once a shorter searched path takes a choice),
    and the spec validates at each of its bounds and choices."""
    from ..spec.tree import format_path

    base = base_tree(path, overrides)
    for param in result.parameters:
        if param.path in bad:
            continue
        where = f"search.parameters.{param.path}"
        loc = params_map.key_loc(param.path)
        contexts: list[list[str]] = []
        if parent_exists(base, param.steps):
            contexts.append([])
        for other in result.parameters:
            if other.kind != "choice" or len(other.steps) >= len(param.steps) \
                    or other.steps != param.steps[:len(other.steps)]:
                continue
            for choice in other.choices:
                trial = json.loads(json.dumps(base))
                set_value(trial, other.steps, choice) if parent_exists(trial, other.steps) else None
                if parent_exists(trial, param.steps):
                    contexts.append([set_text(other.path, choice)])
                    break
        if not param.steps:
            errors.add("a parameter is a `--set` path such as train.batch_size", loc, where)
            continue
        if not contexts:
            errors.add(f"'{format_path(param.steps[:-1])}' does not exist in the spec (after `extends` and "
                       f"--set), so '{param.path}' cannot be set", loc, where,
                       hint="a parameter is a `--set` path to a value of the spec")
            continue
        problems: dict[str, list[str]] = {}     # one error per problem, naming every value that has it
        for value in param.corners():
            problem = _validates(path, overrides + contexts[0] + [set_text(param.path, value)])
            if problem:
                problems.setdefault(problem, []).append(json.dumps(value))
        for problem, values in problems.items():
            errors.add(f"the spec does not validate with {param.path}={' or '.join(values)}: {problem}",
                       params_map.value_loc(param.path), where)


def _validates(path, overrides: list[str]) -> str:
    """'' if the spec (without its search section) validates with these overrides, else the first problem."""
    from ..spec.validate import check_with

    try:
        check_with(path, overrides)
    except SpecError as exc:
        first: Diagnostic = exc.diagnostics[0]
        return (f"{first.path}: " if first.path else "") + first.message
    return ""


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, mappings and lists as their JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def decode(param: Param, stored: Any) -> Any:
    """The choice an Optuna value stands for (the inverse of `encode`, through the param's own list)."""
    for choice in param.choices:
        if encode(choice) == stored:
            return choice
    return stored
