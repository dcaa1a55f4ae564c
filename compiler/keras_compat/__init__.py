"""Every use of Keras's private API (`keras.src`, underscore attributes), in one place.

kspec talks to Keras through its public namespaces (`keras.layers`, `keras.ops`, ...) except
for the few facts Keras 3 does not expose publicly. Each of them is one small function here,
and tests/test_keras_compat.py checks each against the installed Keras, so an upgrade that
moves or renames one fails a named test instead of a user's run.

    merge_base_class()            keras.src.layers.merging.base_merge.Merge
    metric_containers()           the compile-time metric wrappers (CompileMetrics, MetricsList)
    string_aliases(module)        the lower-case names a public namespace's `get()` accepts
    keras_home()                  Keras's cache folder (KERAS_HOME, ~/.keras)
    file_utils()                  the module whose `get_file` the applications call
    application_module(function)  the module that defines a keras.applications function
    producer(tensor)              (layer, node index) that made a symbolic tensor
    inbound_nodes(layer)          the calls of a layer (one Node per call)
    model_nodes(model)            the Nodes of a Functional model's own graph
    all_layers(model)             every layer at any depth, nested models' layers included
    check_graphviz()              whether `keras.utils.plot_model` can draw
    deferred_variables()          the variables made in a StatelessScope, not yet given values
    set_deferred_variables(vs)    replace that list (drop a layer's weights before they are allocated)
    multi_worker_fix              the keras#20585 patch (its own module: it replaces two functions)

Nothing here imports Keras at module level: importing this package is free.
"""

from __future__ import annotations

import importlib
from typing import Any


def merge_base_class() -> type:
    """The base class of the merging layers (Add, Concatenate, ...): they take one list of tensors."""
    from keras.src.layers.merging.base_merge import Merge

    return Merge


def metric_containers() -> tuple[type[Any], ...]:
    """The containers `compile()` wraps metrics in; `model.metrics` lists these, not the metrics."""
    from keras.src.trainers import compile_utils

    return compile_utils.CompileMetrics, compile_utils.MetricsList


def string_aliases(module) -> dict[str, Any]:
    """`ALL_OBJECTS_DICT` of the private module behind a public namespace (`keras.losses` ->
    `keras.src.losses`): every name its `get()` accepts, the lower-case aliases (`mse`) included."""
    internal = importlib.import_module(module.__name__.replace("keras.", "keras.src.", 1))
    return dict(getattr(internal, "ALL_OBJECTS_DICT", {}))


def keras_home() -> str:
    from keras.src.backend import config

    return config.keras_home()


def file_utils():
    """The module whose `get_file` the applications look up at call time (patched to record downloads)."""
    from keras.src.utils import file_utils as module

    return module


def application_module(function) -> Any:
    """The (private) module that defines an application function: it holds `preprocess_input`."""
    return importlib.import_module(function.__module__)


def producer(tensor) -> tuple[Any, int] | None:
    """The layer that produced a symbolic tensor and the index of that call, or None for an input."""
    history = getattr(tensor, "_keras_history", None)
    return (history.operation, history.node_index) if history is not None else None


def inbound_nodes(layer) -> list:
    return list(getattr(layer, "_inbound_nodes", []))


def model_nodes(model) -> list | None:
    """The Nodes of a Functional model's own graph (a shared layer has Nodes in other graphs too)."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:
        return None
    return [node for nodes in by_depth.values() for node in nodes]


def all_layers(model) -> list:
    """Every layer of `model` at any depth (the layers of nested models, not the models themselves' parents)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def check_graphviz() -> bool:
    try:
        from keras.src.utils.model_visualization import check_graphviz as check
    except ImportError:
        return False
    try:
        return bool(check())
    except Exception:
        return False


def deferred_variables() -> list:
    """The variables created inside a `keras.StatelessScope` and not yet given values (Keras gives
    them values when the outermost such scope exits, unless `initialize_variables=False`)."""
    from keras.src.backend.common import global_state

    return list(global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True))


def set_deferred_variables(variables: list) -> None:
    """Replace Keras's list of deferred variables: variables left out are never given values."""
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("uninitialized_variables", list(variables))
