"""One registry of Keras components, looked up by name from Keras itself.

Every name a spec may use — layer classes, initializers, regularizers,
constraints, activations, optimizers, learning-rate schedules, losses,
metrics, callbacks, applications — is found here, by reading Keras's own
public namespaces (plus kspec's own layers and any plugin the user loads).
There is no hand-written table of components: a Keras upgrade that adds a
layer makes it available (after `make schemas`).

Keras is imported lazily: importing this module is free, and the front half
(`kspec validate`) never calls into it; it reads the generated schemas instead.
"""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache
from typing import Any, Callable

from .suggest import suggest

KINDS = ("layers", "initializers", "regularizers", "constraints", "activations", "optimizers",
         "schedules", "losses", "metrics", "callbacks", "applications")

# The public Keras namespace of each kind, and the base class of its classes
# (None: the namespace holds functions, e.g. activations and applications).
_NAMESPACES = {
    "layers": ("keras.layers", "Layer"),
    "initializers": ("keras.initializers", "Initializer"),
    "regularizers": ("keras.regularizers", "Regularizer"),
    "constraints": ("keras.constraints", "Constraint"),
    "activations": ("keras.activations", None),
    "optimizers": ("keras.optimizers", "Optimizer"),
    "schedules": ("keras.optimizers.schedules", "LearningRateSchedule"),
    "losses": ("keras.losses", "Loss"),
    "metrics": ("keras.metrics", "Metric"),
    "callbacks": ("keras.callbacks", "Callback"),
    "applications": ("keras.applications", None),
}

# Names a spec may not use. Abstract bases and containers are not components;
# Lambda and TFSMLayer would run or load arbitrary code (a plugin may still
# register its own layers); the rest need Python objects as arguments.
_EXCLUDED = {
    "layers": {"Layer", "InputLayer", "Lambda", "TFSMLayer", "Wrapper", "RNN", "StackedRNNCells",
               "InputSpec", "Pipeline", "JaxLayer", "FlaxLayer", "TorchModuleWrapper"},
    "initializers": {"Initializer"},
    "regularizers": {"Regularizer"},
    "constraints": {"Constraint"},
    "optimizers": {"Optimizer", "LossScaleOptimizer", "MultiOptimizer", "OptimizerMap"},
    "schedules": {"LearningRateSchedule"},
    "losses": {"Loss"},
    "metrics": {"Metric", "MeanMetricWrapper"},
    "callbacks": {"Callback", "CallbackList", "History", "LambdaCallback", "LearningRateScheduler",
                  "ProgbarLogger", "RemoteMonitor", "OrbaxCheckpoint"},
}

# Keyword arguments whose value is itself a component, by argument name.
_ARG_SUFFIX_KINDS = (("_initializer", "initializers"), ("_regularizer", "regularizers"),
                     ("_constraint", "constraints"))
_ARG_KINDS = {"activation": "activations", "recurrent_activation": "activations",
              "layer": "layers", "backward_layer": "layers", "cell": "layers",
              "learning_rate": "schedules"}

_plugins: dict[str, type] = {}   # layer classes from kspec's own layers and --plugin modules
_plugin_components: dict[str, dict[str, Any]] = {"losses": {}, "metrics": {}}   # losses, metrics of --plugin modules
_loaded: list[str] = []          # the --plugin modules imported, in order


def arg_kind(arg: str) -> str | None:
    """The component kind a keyword argument takes (`kernel_initializer` -> "initializers")."""
    if arg in _ARG_KINDS:
        return _ARG_KINDS[arg]
    for suffix, kind in _ARG_SUFFIX_KINDS:
        if arg.endswith(suffix):
            return kind
    return None


def _module(kind: str):
    return importlib.import_module(_NAMESPACES[kind][0])


@lru_cache(maxsize=None)
def _table(kind: str) -> dict[str, Any]:
    """Name -> class or function, read from Keras's public namespace for `kind`."""
    if kind not in _NAMESPACES:
        raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
    module = _module(kind)
    base_name = _NAMESPACES[kind][1]
    base = getattr(module, base_name) if base_name else None
    excluded = _EXCLUDED.get(kind, set())
    table: dict[str, Any] = {}
    for name in dir(module):
        if name.startswith("_") or name in excluded or name in ("get", "serialize", "deserialize"):
            continue
        obj = getattr(module, name)
        if base is not None:
            if inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj):
                table[name] = obj
        elif callable(obj) and not inspect.ismodule(obj):
            table[name] = obj
    table.update(_string_aliases(kind, module))
    if kind == "layers":
        _load_own_layers()
        table.update(_plugins)
    table.update(_plugin_components.get(kind, {}))
    return table


def _string_aliases(kind: str, module) -> dict[str, Any]:
    """Lower-case names Keras's own `get()` accepts (`adam`, `mse`, `accuracy`)."""
    get = getattr(module, "get", None)
    if get is None:
        return {}
    from .keras_compat import string_aliases

    candidates = string_aliases(module)
    aliases = {}
    for name in candidates:
        if name.islower() and not name.startswith("_") and name not in _EXCLUDED.get(kind, set()):
            aliases[name] = name   # strings are handed to Keras as they are: they serialize cleanly
    excluded = {name.lower() for name in _EXCLUDED.get(kind, set())}   # `mean_metric_wrapper` too
    return {alias: v for alias, v in aliases.items() if alias.replace("_", "") not in excluded}


def _load_own_layers() -> None:
    """kspec's own layers (Maxout, Log1p, ...) are registered Keras serializables."""
    import compiler.layers as own

    for name in getattr(own, "__all__", ()):
        _plugins.setdefault(name, getattr(own, name))


def load_plugin(module_name: str) -> list[str]:
    """Import a user's module (`--plugin`) and expose, by name, its Keras layer classes, its loss and
    metric classes, and its functions registered as Keras serializables (a loss or metric function)."""
    import keras

    module = importlib.import_module(module_name)
    registered = set(keras.saving.get_custom_objects().values())
    added: list[str] = []
    components: dict[str, list[str]] = {"losses": [], "metrics": []}
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__ or name.startswith("_"):
            continue
        if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer):
            _plugins[name] = obj
            added.append(name)
        elif inspect.isclass(obj) and issubclass(obj, keras.losses.Loss):
            components["losses"].append(name)
        elif inspect.isclass(obj) and issubclass(obj, keras.metrics.Metric):
            components["metrics"].append(name)
        elif inspect.isfunction(obj) and obj in registered:   # `@register_keras_serializable() def loss(...)`
            components["losses"].append(name)
            components["metrics"].append(name)
    for kind, names in components.items():
        _plugin_components[kind].update({n: getattr(module, n) for n in names})
    if module_name not in _loaded:
        _loaded.append(module_name)
    _table.cache_clear()
    from .spec import schemas

    schemas.add_plugin_layers(added)   # so the resolver and validator accept these names too
    for kind, names in components.items():
        schemas.add_plugin_components(kind, names)
    _clear_validator()
    return added


def _clear_validator() -> None:
    """The validator compiled the schemas before this plugin's names were known: rebuild it on next use."""
    import sys

    validate = sys.modules.get("compiler.spec.validate")
    if validate is not None:
        validate._validator.cache_clear()


def require_declared_plugins(path) -> None:
    """A spec's `plugins:` only DECLARES modules (nothing read from a file may import code): each one must
    have been loaded with `--plugin` on the command line, else a located error naming the flag to pass.

    Checked on the spec file as written, before it is resolved, so this error comes first rather than
    the unknown layer, loss and metric names the missing module would have defined."""
    from .errors import Diagnostic, KspecError, SpecError
    from .spec.load import load_file
    from .spec.tree import Map, Seq

    try:
        tree = load_file(path)
    except KspecError:
        return                           # loading the spec reports it
    declared = tree.get("plugins") if isinstance(tree, Map) else None
    if not declared:
        return
    items = list(declared) if isinstance(declared, Seq) else [declared]
    missing = [(i, str(name)) for i, name in enumerate(items) if str(name) not in _loaded]
    if not missing:
        return
    flags = " ".join(f"--plugin {name}" for _, name in missing)

    def where(i: int):
        return declared.item_loc(i) if isinstance(declared, Seq) else tree.value_loc("plugins")

    raise SpecError([Diagnostic(
        f"the spec declares plugin module '{name}', which is not loaded: a spec cannot import code, so pass "
        f"`{flags}` on the command line", where(i), f"plugins[{i}]") for i, name in missing])


def singular(kind: str) -> str:
    """`losses` -> `loss`, `layers` -> `layer`."""
    return kind[:-2] if kind.endswith("sses") else kind[:-1]


def load_plugins(names, error=None) -> None:
    """Import each plugin module (`--plugin`, or the `plugins:` a saved run recorded).

    An import failure becomes `error` (a KspecError subclass; KspecError by default).
    """
    from .errors import KspecError

    for name in [names] if isinstance(names, str) else list(names or ()):
        try:
            load_plugin(str(name))
        except ImportError as exc:
            raise (error or KspecError)(f"cannot import plugin module '{name}': {exc}") from None


def names(kind: str) -> list[str]:
    """Every name of `kind` a spec may use, sorted."""
    return sorted(_table(kind))


class UnknownComponent(KeyError):
    def __init__(self, kind: str, name: str, suggestions: list[str]):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {singular(kind)} '{name}'{hint}")

    def __str__(self) -> str:
        return self.args[0]


def lookup(kind: str, name: str) -> Any:
    """The class or function called `name` (or the string itself for `get()` aliases)."""
    table = _table(kind)
    if name not in table:
        raise UnknownComponent(kind, name, suggest(name, table))
    return table[name]


def create(kind: str, value: Any) -> Any:
    """A Keras object from its spec form: a name (`he_normal`) or a one-key mapping
    (`{RandomNormal: {stddev: 0.02}}`). Arguments that are components themselves
    (`kernel_initializer`, a schedule as `learning_rate`, a wrapped `layer`) are
    created too. Numbers and None pass through (`learning_rate: 0.01`)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    args: dict[str, Any]
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        (name, args), = value.items()
        args = dict(args or {})
    else:
        raise TypeError(f"expected a {singular(kind)} name or a one-key mapping, got {value!r}")
    obj = lookup(kind, name)
    if isinstance(obj, str):          # an alias Keras resolves itself ("adam", "mse")
        if not args:
            return obj
        obj = lookup(kind, _class_for_alias(kind, obj))
    if not args and not inspect.isclass(obj):
        return obj                    # a function by name: an activation, a loss
    return instantiate(obj, args)


def _class_for_alias(kind: str, alias: str) -> str:
    """`adam` -> `Adam`, so that `{adam: {learning_rate: 0.1}}` works too."""
    for name, obj in _table(kind).items():
        if inspect.isclass(obj) and name.lower() == alias.replace("_", ""):
            return name
    raise UnknownComponent(kind, alias, [])


def instantiate(cls: Callable, args: dict) -> Any:
    """Call `cls(**args)`, first creating the arguments that are components."""
    return cls(**{key: create_arg(key, value) for key, value in args.items()})


def create_arg(arg: str, value: Any) -> Any:
    kind = arg_kind(arg)
    if kind is None or value is None:
        return value
    if kind == "schedules" and isinstance(value, (int, float)):
        return value
    if kind == "layers" and not isinstance(value, dict):
        return value
    return create(kind, value)


def signature(kind: str, name: str) -> inspect.Signature:
    """The constructor signature of a component class (for the schema generator)."""
    obj = lookup(kind, name)
    return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
