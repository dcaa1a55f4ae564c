"""`kspec export`: every format is written, loads in its own runtime and matches the Keras model.

Small models are built and fitted (1 epoch on random data) right here and saved as
`RUN/model.keras` in a run directory without spec.yaml, so the export checks on
random inputs. Each test also re-runs the export itself, in its runtime, on other
inputs (another batch size) and compares with Keras independently of kspec's check.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

from conftest import run_kspec

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import compiler.layers  # noqa: E402
from compiler.errors import KspecError  # noqa: E402
from compiler.export import ExportError, export_run  # noqa: E402

TOLERANCE = 1e-4
SUFFIX = {"keras": ".keras", "saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}


# -- the models ------------------------------------------------------------------------------

def _fit(model, x, y):
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model


def normalization_mlp(rng):
    x = (rng.normal(size=(64, 4)) * 10 + 3).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x)
    inputs = keras.Input((4,), name="measurements")
    hidden = keras.layers.Dense(8, activation="relu")(norm(inputs))
    return _fit(keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="species")(hidden)),
                x, rng.random((64, 3)).astype("float32"))


def log1p_two_inputs(rng):
    """Log1p on a float input + an Embedding of an int input; two outputs. The declared input and output
    orders differ from the alphabetical ones, so a runtime fed or read in the wrong order fails."""
    values = keras.Input((3,), name="values")
    ids = keras.Input((2,), name="ids", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(10, 2)(ids))
    trunk = keras.layers.Concatenate()([compiler.layers.Log1p()(values), embedded])
    score = keras.layers.Dense(1, name="score")(trunk)
    label = keras.layers.Dense(2, activation="softmax", name="label")(trunk)
    x = [np.abs(rng.normal(size=(64, 3)) * 100).astype("float32"), rng.integers(0, 10, (64, 2)).astype("int32")]
    return _fit(keras.Model([values, ids], [score, label]), x,
                [rng.random((64, 1)).astype("float32"), rng.random((64, 2)).astype("float32")])


def conv2d(rng):
    inputs = keras.Input((8, 8, 1), name="pixels")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(keras.layers.BatchNormalization()(h)))
    return _fit(keras.Model(inputs, keras.layers.Dense(2, name="digit")(h)),
                rng.random((64, 8, 8, 1)).astype("float32"), rng.random((64, 2)).astype("float32"))


def lstm(rng):
    inputs = keras.Input((6, 3), name="sequence")
    h = keras.layers.LSTM(5)(inputs)
    return _fit(keras.Model(inputs, keras.layers.Dense(1, name="value")(h)),
                rng.normal(size=(64, 6, 3)).astype("float32"), rng.random((64, 1)).astype("float32"))


MODELS = {"normalization": normalization_mlp, "log1p": log1p_two_inputs, "conv2d": conv2d, "lstm": lstm}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Model name -> run directory holding only model.keras (no spec.yaml: random check inputs)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, make in MODELS.items():
        run = tmp_path_factory.mktemp(f"run-{name}")
        with warnings.catch_warnings():     # Keras's own numpy-2 `copy=` deprecation notice while saving
            warnings.simplefilter("ignore", DeprecationWarning)
            make(rng).save(run / "model.keras")
        out[name] = run
    return out


# -- independent runners ---------------------------------------------------------------------

def other_inputs(model, n=5):
    """Inputs unlike kspec's check inputs (other seed, other batch size), by input name."""
    rng = np.random.default_rng(123)
    out = {}
    for t in keras.tree.flatten(model.input):
        shape = (n,) + tuple(t.shape[1:])
        out[t.name] = (rng.integers(0, 10, shape).astype(t.dtype) if "int" in str(t.dtype)
                       else np.abs(rng.normal(size=shape)).astype(t.dtype))
    return out


def keras_reference(model, x):
    structure = keras.tree.map_structure(lambda t: x[t.name], model.input)
    outputs = model.predict(structure, verbose=0)
    return dict(zip(model.output_names, [np.asarray(o) for o in keras.tree.flatten(outputs)]))


def run_export(fmt, path, model, x):
    """Output name -> array, computed by the export's own runtime."""
    if fmt == "keras":
        return keras_reference(keras.saving.load_model(path, safe_mode=True), x)
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(path))      # kept referenced while serving
        served = loaded.serve(keras.tree.map_structure(lambda t: tf.constant(x[t.name]), model.input))
        return dict(zip(model.output_names, [o.numpy() for o in tf.nest.flatten(served)]))
    if fmt == "tflite":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner("serving_default")
        batch = {int(d["shape_signature"][0]) for d in runner.get_input_details().values()}
        n = len(next(iter(x.values())))
        step = n if -1 in batch else 1            # recurrent models: static batch size 1
        parts = [runner(**{k: v[i:i + step] for k, v in x.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == sorted(x)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, x)))


def _has_onnx_extra() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("tf2onnx", "onnx", "onnxruntime"))


# -- every model in every format -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["keras", "saved_model", "tflite", "onnx"])
@pytest.mark.parametrize("name", list(MODELS))
def test_export_matches_keras(runs, tmp_path, name, fmt):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="the ONNX export needs the extra: pip install 'kspec[onnx]'")
        pytest.importorskip("onnxruntime", reason="the ONNX export needs the extra: pip install 'kspec[onnx]'")
    output = tmp_path / f"exported{SUFFIX[fmt]}"
    report = export_run(runs[name], fmt, output, verbose=False)

    assert output.exists() and (output.is_dir() if fmt == "saved_model" else output.is_file())
    assert report.format == fmt and report.path == output and report.n_examples == 8
    assert report.inputs == "random"
    assert 0 <= report.max_abs_diff <= TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == [output.name]      # no temporary leftovers
    if name == "lstm" and fmt == "tflite":
        assert any("batch size fixed at 1" in note for note in report.notes)

    model = keras.saving.load_model(runs[name] / "model.keras", safe_mode=True)
    x = other_inputs(model)
    expected, got = keras_reference(model, x), run_export(fmt, output, model, x)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].shape == expected[key].shape, key
        assert np.abs(got[key] - expected[key]).max() <= TOLERANCE, key


def test_cli_line_and_reexport_replaces(runs, tmp_path, capsys):
    output = tmp_path / "sm"
    export_run(runs["normalization"], "saved_model", output)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported saved_model to {output} (checked with TensorFlow ")
    assert " on 8 inputs: max |difference| = " in line and line.endswith(")")
    (output / "stale.txt").write_text("from an earlier export")
    export_run(runs["conv2d"], "saved_model", output, verbose=False)     # over an existing SavedModel
    assert not (output / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]


def test_accepts_a_keras_file(runs, tmp_path):
    report = export_run(runs["conv2d"] / "model.keras", "keras", tmp_path / "copy.keras", verbose=False)
    assert report.max_abs_diff == 0.0
    assert (tmp_path / "copy.keras").read_bytes() == (runs["conv2d"] / "model.keras").read_bytes()


# -- errors ----------------------------------------------------------------------------------

def test_missing_run_directory(tmp_path):
    with pytest.raises(ExportError) as info:
        export_run(tmp_path / "nowhere", "keras", tmp_path / "m.keras", verbose=False)
    assert info.value.exit_code == 2
    assert f"run directory {tmp_path / 'nowhere'} does not exist" in str(info.value)


def test_run_directory_without_model(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.keras").write_bytes(b"")
    with pytest.raises(ExportError) as info:
        export_run(tmp_path / "run", "tflite", tmp_path / "m.tflite", verbose=False)
    assert info.value.exit_code == 2
    assert "holds no model.keras" in str(info.value) and "--resume" in str(info.value)


def test_cli_errors(tmp_path, capsys):
    from compiler.cli import main

    assert main(["export", str(tmp_path / "nowhere"), "--format", "tflite", "-o", str(tmp_path / "m.tflite")]) == 2
    err = capsys.readouterr().err
    assert f"error: run directory {tmp_path / 'nowhere'} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "m.tflite").exists()
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path), "--format", "torchscript", "-o", str(tmp_path / "m.pt")])
    assert info.value.code == 2 and "invalid choice: 'torchscript'" in capsys.readouterr().err


def test_bad_destinations(runs, tmp_path):
    with pytest.raises(ExportError, match=r"ending in \.keras"):
        export_run(runs["conv2d"], "keras", tmp_path / "model.h5", verbose=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ExportError, match="a directory that kspec did not export"):
        export_run(runs["conv2d"], "saved_model", tmp_path / "notes", verbose=False)
    with pytest.raises(ExportError, match="is a directory; give a file name"):
        export_run(runs["conv2d"], "tflite", tmp_path / "notes", verbose=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_onnx_extra_missing(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)      # `import tf2onnx` now raises ImportError
    with pytest.raises(ExportError) as info:
        export_run(runs["conv2d"], "onnx", tmp_path / "m.onnx", verbose=False)
    assert info.value.exit_code == 2
    assert "pip install 'kspec[onnx]'" in str(info.value) and "tf2onnx" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_a_differing_export_is_not_written(runs, tmp_path, monkeypatch):
    from compiler.export import tflite

    original = tflite.run
    monkeypatch.setattr(tflite, "run", lambda *a: [o + 0.01 for o in original(*a)])
    (tmp_path / "m.tflite").write_bytes(b"an earlier export")
    with pytest.raises(KspecError) as info:
        export_run(runs["normalization"], "tflite", tmp_path / "m.tflite", verbose=False)
    assert info.value.exit_code == 1
    assert "export differs from the Keras model by 0.01" in str(info.value)
    assert (tmp_path / "m.tflite").read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


@keras.saving.register_keras_serializable(package="kspec_test")
class Erfinv(keras.layers.Layer):
    """An op neither TFLite's built-in kernels nor tf2onnx support."""

    def call(self, x):
        return keras.ops.erfinv(keras.ops.tanh(x))


def test_unsupported_ops_are_named(tmp_path):
    inputs = keras.Input((3,), name="x")
    run = tmp_path / "run"
    run.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        keras.Model(inputs, keras.layers.Dense(2)(Erfinv()(inputs))).save(run / "model.keras")
    formats = ["tflite"] + (["onnx"] if _has_onnx_extra() else [])
    for fmt in formats:
        with pytest.raises(KspecError) as info:
            export_run(run, fmt, tmp_path / f"m.{fmt}", verbose=False)
        assert info.value.exit_code == 1 and "Erfinv" in str(info.value), str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- end to end ------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_then_export_every_format(tmp_path):
    run = tmp_path / "iris"
    trained = run_kspec("train", "examples/iris_mlp.yaml", "--run-dir", run, "--set", "train.epochs=2")
    assert trained.returncode == 0, trained.stderr
    # the four exports in one process (a TensorFlow start-up each would cost ~5 s): the real CLI entry point
    formats = [("keras", "m.keras"), ("saved_model", "sm"), ("tflite", "m.tflite")]
    if _has_onnx_extra():
        formats.append(("onnx", "m.onnx"))
    script = (
        "import sys\nfrom compiler.cli import main\n"
        f"for fmt, name in {formats!r}:\n"
        f"    code = main(['export', {str(run)!r}, '--format', fmt, '-o', {str(tmp_path)!r} + '/' + name])\n"
        "    if code: sys.exit(code)\n")
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == [fmt for fmt, _ in formats]
    assert all(" on 8 inputs: max |difference| = " in line for line in lines), lines
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr

    # the check used the run's real test examples (spec.yaml has a data source)
    report = export_run(run, "tflite", tmp_path / "again.tflite", verbose=False)
    assert report.inputs == "test split" and report.max_abs_diff <= TOLERANCE
