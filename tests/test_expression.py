"""The `Expression` layer: a whitelisted keras.ops expression, checked at validate (without Keras), shape-checked
at build at the node, saved as data (loads with safe_mode on), exported to SavedModel / TFLite / ONNX."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from compiler import tensor_expr
from compiler.errors import SpecError
from compiler.spec.validate import load_spec

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, layers: str, inputs: str = "a: {shape: [4]}\n    b: {shape: [4]}", name="s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent("""\
        kspec: 1
        name: expr
        model:
          inputs:
            {inputs}
          layers:
        {layers}
        """).format(inputs=inputs, layers=textwrap.indent(textwrap.dedent(layers), "    ")))
    return path


def errors_of(path: Path) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.diagnostics


def test_every_allowed_function_is_in_keras_ops_with_these_parameters():
    import keras

    for name in tensor_expr.FUNCTIONS:
        function = getattr(keras.ops, name, None)
        assert callable(function), name
        params = [p for p in inspect.signature(function).parameters.values()]
        sig = tensor_expr.signature(name)
        fixed = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        listed = sig.params[:-1] if sig.variadic else sig.params
        assert fixed[:len(listed)] == list(listed), name
        required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert sig.required == len(required), name
        if sig.variadic:
            assert any(p.kind is p.VAR_POSITIONAL for p in params), name


@pytest.mark.parametrize("expr, message, col", [
    ("sqr(a - b)", "unknown function 'sqr'; did you mean 'sqrt'", 0),
    ("maximum(a)", "maximum() needs x2", 0),
    ("sqrt(a, b)", "sqrt() takes at most 1 arguments", 0),
    ("a + c", "unknown name 'c' (the inputs here: a, b)", 4),
    ("sum(a, axs=-1)", "sum() has no argument 'axs' (arguments: x, axis, keepdims); did you mean 'axis'", 0),
    ("sum(a, axis=b)", "keyword arguments take literal values only", 12),
    ("a.shape", "attributes ('.') are not allowed", 0),
    ("a[0]", "'Subscript' is not allowed", 0),
    ("__import__('os')", "unknown function '__import__'", 0),
    ("(lambda: a)()", "only keras.ops functions called by name", 0),
    ("a +", "not a valid expression", None),
])
def test_validate_names_the_mistake_at_its_character(tmp_path, expr, message, col):
    path = write(tmp_path, f"""\
        - Expression: {{expr: "{expr}"}}
          inputs: [a, b]
        """)
    (d,) = errors_of(path)
    assert message in d.message
    assert d.loc.file == str(path) and d.loc.line == 8
    assert d.path == "model.layers[0].Expression.expr"
    start = 27                                    # the column of the text after the opening quote
    if col is not None:
        assert d.loc.col == start + col


def test_validate_counts_the_inputs_and_chains_a_single_input_as_x(tmp_path):
    ok = write(tmp_path, """\
        - Dense: {units: 3}
          inputs: [a]
        - Expression: {expr: "softmax(x * 2.0, axis=-1)"}
        """)
    spec = load_spec(ok)
    assert spec.model.nodes[-1].args["names"] == ["x"]
    bad = write(tmp_path, """\
        - Expression: {expr: "a + b", names: [a]}
          inputs: [a, b]
        """, name="bad.yaml")
    (d,) = errors_of(bad)
    assert "names 1 input(s) (a) but the node has 2" in d.message


def test_validate_does_not_import_keras(tmp_path):
    path = write(tmp_path, """\
        - Expression: {expr: "sqrt(maximum(sum(square(a - b), axis=-1, keepdims=True), 1e-7))"}
          inputs: [a, b]
        """)
    code = ("import sys; from compiler.spec.validate import load_spec; load_spec(sys.argv[1]); "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_shape_error_is_reported_at_the_node(tmp_path):
    from compiler.builder import build_model

    path = write(tmp_path, """\
        - Dense: {units: 3}
          inputs: [a]
          name: three
        - Expression: {expr: "three + b"}
          inputs: [three, b]
          name: product
        """)
    with pytest.raises(SpecError) as info:
        build_model(load_spec(path).model)
    (d,) = info.value.diagnostics
    assert d.loc.line == 11 and "product" in d.message and d.path == "model.layers[1]"


def distance_model():
    import keras

    from compiler.layers import Expression

    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    tower = keras.layers.Dense(3, name="tower")
    d = Expression("sqrt(maximum(sum(square(a - b), axis=-1, keepdims=True), 1e-7))", names=["a", "b"],
                   name="distance")([tower(a), tower(b)])
    patches = Expression("reshape(transpose(reshape(x, (-1, 2, 2)), (0, 2, 1)), (-1, 4))", name="swap")(a)
    return keras.Model([a, b], [keras.layers.Dense(1, name="out")(d), patches])


def test_saves_as_data_and_loads_with_safe_mode(tmp_path):
    import keras

    model = distance_model()
    x = [np.random.default_rng(0).normal(size=(5, 4)).astype("float32") for _ in range(2)]
    expected = model.predict(x, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    for want, got in zip(expected, loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    a, b = x
    tower = model.get_layer("tower")
    ea, eb = tower(a).numpy(), tower(b).numpy()
    np.testing.assert_allclose(expected[0], model.get_layer("out")(np.sqrt(np.maximum(
        ((ea - eb) ** 2).sum(-1, keepdims=True), 1e-7))).numpy(), rtol=1e-5)
    np.testing.assert_allclose(expected[1], a.reshape(-1, 2, 2).transpose(0, 2, 1).reshape(-1, 4))


def test_a_tampered_file_cannot_smuggle_code():
    from compiler.layers import Expression

    with pytest.raises((TypeError, tensor_expr.TensorExprError), match="only keras.ops functions called by name"):
        Expression.from_config({"expr": "__import__('os').system('true')", "names": ["x"]})


@pytest.mark.parametrize("fmt", ["saved_model", "tflite", "onnx"])
def test_exports(tmp_path, fmt):
    from compiler.export import export_run

    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    run.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        distance_model().save(run / "model.keras")
    output = tmp_path / ("m" + {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}[fmt])
    report = export_run(run, fmt, output, verbose=False)
    assert output.exists() and 0 <= report.max_abs_diff <= 1e-4
