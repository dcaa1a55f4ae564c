"""Each private Keras API kspec uses (compiler/keras_compat/) still exists and means what kspec
assumes. When one of these fails after a Keras upgrade, fix that one function."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

from compiler import keras_compat  # noqa: E402


def _model():
    x = keras.Input((4,), name="x")
    dense = keras.layers.Dense(4, name="shared")
    a = dense(x)
    b = dense(a)
    return keras.Model(x, keras.layers.Add(name="add")([a, b])), dense


def test_merge_base_class_is_the_base_of_merging_layers():
    merge = keras_compat.merge_base_class()
    assert issubclass(keras.layers.Add, merge) and issubclass(keras.layers.Concatenate, merge)
    assert not issubclass(keras.layers.Dense, merge)


def test_metric_containers_are_what_compile_puts_in_model_metrics():
    model, _ = _model()
    model.compile(loss="mse", metrics=["mae"])
    model.fit(keras.ops.ones((2, 4)), keras.ops.ones((2, 4)), verbose=0)
    containers = keras_compat.metric_containers()
    assert any(isinstance(m, containers) for m in model.metrics)


def test_string_aliases_are_the_names_get_accepts():
    aliases = keras_compat.string_aliases(keras.losses)
    assert "mse" in aliases and "categorical_crossentropy" in aliases
    assert keras.losses.get("mse") is not None


def test_keras_home_and_file_utils():
    assert os.path.isabs(os.path.expanduser(keras_compat.keras_home()))
    assert callable(keras_compat.file_utils().get_file)


def test_application_module_holds_preprocess_input():
    module = keras_compat.application_module(keras.applications.MobileNetV2)
    assert callable(module.preprocess_input)


def test_graph_introspection_of_a_shared_layer():
    model, dense = _model()
    assert len(keras_compat.inbound_nodes(dense)) == 2
    layer, index = keras_compat.producer(model.outputs[0])
    assert layer.name == "add" and index == 0
    assert keras_compat.producer(model.inputs[0])[0].name == "x"
    nodes = keras_compat.model_nodes(model)
    assert sum(n.operation is dense for n in nodes) == 2
    assert {lay.name for lay in keras_compat.all_layers(model)} >= {"shared", "add"}


def test_check_graphviz_answers_a_bool():
    assert keras_compat.check_graphviz() in (True, False)


def test_deferred_variables_are_those_a_stateless_scope_left_without_values():
    before = keras_compat.deferred_variables()
    layer = keras.layers.Dense(10**6)
    with keras.StatelessScope(initialize_variables=False):
        layer.build((None, 10**6))                      # 4 TB of kernel: deferred, so not allocated
    pending = keras_compat.deferred_variables()
    assert [v for v in pending if v not in before] == list(layer.weights)
    keras_compat.set_deferred_variables(before)       # dropped: never given values
    with keras.StatelessScope():                      # leaving it initialises whatever is still listed
        pass
    assert keras_compat.deferred_variables() == []
