"""End-to-end tests of `kspec train` / `evaluate` / `predict`: real (tiny) training runs in subprocesses.

Each run directory is checked artifact by artifact against the brief's contract,
and kspec's test accuracy is compared with a hand-written Keras model of the same
layers, trained on the same split with the same seed and epochs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

slow = pytest.mark.slow


def kspec(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def read_history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_run_dir(run: Path, epochs: int, metric: str = "accuracy") -> dict:
    """Every artifact of the brief's run-directory contract; returns metrics.json."""
    import keras
    import yaml

    # the fully resolved spec
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    assert spec["kspec"] == 1 and "model" in spec and "train" in spec and "layers" in spec["model"]

    # history: one row per epoch, `epoch` from 0, metrics incl. val_*, learning_rate, epoch_seconds
    rows = read_history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    header = list(rows[0])
    assert header[0] == "epoch" and header[1] == "loss"
    for column in ("loss", metric, "val_loss", f"val_{metric}", "learning_rate", "epoch_seconds"):
        assert column in header, header
        assert all(np.isfinite(float(r[column])) for r in rows)

    # metrics: train / validation / test sections and the run's totals
    metrics = json.loads((run / "metrics.json").read_text())
    for section in ("train", "validation", "test"):
        assert set(metrics[section]) >= {"loss", metric}, metrics
    assert metrics["epochs"] == epochs
    assert metrics["seconds"] > 0 and metrics["samples_per_second"] > 0
    assert 0 <= metrics["best_epoch"] < epochs

    # curves, TensorBoard, checkpoints
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert (run / "checkpoints" / "last.keras").is_file()
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch_done"] == epochs and state["finished"] is True
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "temporary files left behind"

    # the model: plain keras loads it and it predicts
    model = keras.saving.load_model(run / "model.keras")
    shape = tuple(model.inputs[0].shape[1:])
    out = model.predict(np.zeros((2, *shape), dtype="float32"), verbose=0)
    assert out.shape[0] == 2 and np.all(np.isfinite(out))
    return metrics


def evaluate_numbers(stdout: str) -> dict[str, float]:
    line = [l for l in stdout.splitlines() if l.startswith("test")][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+(?:e[-+]?\d+)?)", line.split(":", 1)[1])}


def same_split(spec_path: Path, *overrides: str):
    from compiler.data import load_splits
    from compiler.spec.validate import load_spec

    spec = load_spec(spec_path, list(overrides))
    return spec, load_splits(spec.data, spec.model, spec.seed)


def only(arrays: dict) -> np.ndarray:
    return next(iter(arrays.values()))


# -- iris --------------------------------------------------------------------------------------

IRIS_EPOCHS = 30


def trained(tmp_path_factory, example: str, epochs: int) -> Path:
    """`kspec train examples/EXAMPLE` for `epochs` epochs into a fresh run directory."""
    run = tmp_path_factory.mktemp(Path(example).stem) / "run"
    ok(kspec("train", EXAMPLES / example, "--run-dir", run, "--set", f"train.epochs={epochs}"))
    return run


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "iris_mlp.yaml", IRIS_EPOCHS)


@slow
def test_iris_run_directory_is_complete(iris_run):
    metrics = check_run_dir(iris_run, IRIS_EPOCHS)
    assert metrics["test"]["accuracy"] >= 0.85


@slow
def test_iris_evaluate_matches_metrics_json(iris_run):
    metrics = json.loads((iris_run / "metrics.json").read_text())
    printed = evaluate_numbers(ok(kspec("evaluate", iris_run)).stdout)
    assert printed.keys() == metrics["test"].keys()
    for key, value in metrics["test"].items():
        assert printed[key] == pytest.approx(value, abs=6e-5), key

    from compiler.train.evaluate import evaluate_run

    exact = evaluate_run(iris_run, verbose=False)
    for key, value in metrics["test"].items():
        assert exact[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@slow
def test_iris_matches_hand_written_keras(iris_run):
    import keras

    spec, splits = same_split(EXAMPLES / "iris_mlp.yaml")
    keras.utils.set_random_seed(spec.seed)
    x, y = only(splits.train.x), only(splits.train.y)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([
        keras.Input((4,)), norm,
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=IRIS_EPOCHS, shuffle=True, verbose=0,
              validation_data=(only(splits.validation.x), only(splits.validation.y)))
    hand = model.evaluate(only(splits.test.x), only(splits.test.y), verbose=0, return_dict=True)["accuracy"]
    ours = json.loads((iris_run / "metrics.json").read_text())["test"]["accuracy"]
    assert ours >= hand - 0.03, (ours, hand)


@slow
def test_predict_writes_class_names(iris_run, tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [0, 1, 60, 61, 120, 121]
    source = tmp_path / "flowers.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(iris.feature_names)
        writer.writerows(iris.data[rows].tolist())

    out = tmp_path / "predictions.csv"
    ok(kspec("predict", iris_run, source, "-o", out))
    with open(out, newline="") as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == len(rows)
    assert list(predicted[0]) == ["class", "p_setosa", "p_versicolor", "p_virginica"]
    assert {r["class"] for r in predicted} <= set(iris.target_names)
    assert sum(r["class"] == iris.target_names[iris.target[i]] for r, i in zip(predicted, rows)) >= 5
    for r in predicted:
        assert sum(float(r[f"p_{c}"]) for c in iris.target_names) == pytest.approx(1.0, abs=1e-4)

    stdout = ok(kspec("predict", iris_run, source)).stdout      # no -o: CSV on stdout
    assert stdout.splitlines()[0] == "class,p_setosa,p_versicolor,p_virginica"
    assert len(stdout.splitlines()) == len(rows) + 1

    # evaluate --data: the same flowers with their species as targets
    labelled = tmp_path / "labelled.csv"
    with open(labelled, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*iris.feature_names, "target"])
        writer.writerows([[*iris.data[i].tolist(), iris.target_names[iris.target[i]]] for i in rows])
    printed = ok(kspec("evaluate", iris_run, "--data", labelled)).stdout
    assert printed.startswith("labelled.csv (6 examples): ") and "accuracy" in printed


@slow
def test_predict_a_model_whose_spec_has_no_data(tmp_path):
    # A folder with a data-less spec and its built model: predict once stopped with an internal
    # error (AttributeError), re-loading a data section that is not there for the facts of data.json.
    run = tmp_path / "built"
    run.mkdir()
    spec = run / "spec.yaml"
    spec.write_text("kspec: 1\nname: bare\nmodel:\n  inputs: {x: {shape: [3]}}\n"
                    "  layers: [{Dense: {units: 2, activation: softmax}}]\n")
    ok(kspec("build", spec, "-o", run / "model.keras"))
    inputs = tmp_path / "inputs.csv"
    inputs.write_text("a,b,c\n0.1,0.2,0.3\n1,2,3\n")
    lines = ok(kspec("predict", run, inputs)).stdout.splitlines()
    assert len(lines) == 3, lines    # a header and one row per example


# -- digits ------------------------------------------------------------------------------------

DIGITS_EPOCHS = 4


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory, "digits_cnn.yaml", DIGITS_EPOCHS)


@slow
def test_digits_run_directory_is_complete(digits_run):
    metrics = check_run_dir(digits_run, DIGITS_EPOCHS)
    assert metrics["test"]["accuracy"] >= 0.85
    printed = evaluate_numbers(ok(kspec("evaluate", digits_run)).stdout)
    for key, value in metrics["test"].items():
        assert printed[key] == pytest.approx(value, abs=6e-5), key


@slow
def test_digits_matches_hand_written_keras(digits_run):
    import keras

    spec, splits = same_split(EXAMPLES / "digits_cnn.yaml")
    keras.utils.set_random_seed(spec.seed)
    x, y = only(splits.train.x), only(splits.train.y)
    norm = keras.layers.Normalization()
    norm.adapt(x)

    def conv_bn(filters):
        return [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(), keras.layers.Activation("relu")]

    model = keras.Sequential([
        keras.Input((8, 8, 1)), norm, *conv_bn(16), *conv_bn(32), *conv_bn(32),
        keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dropout(0.3),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(0.002, clipnorm=5.0), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=DIGITS_EPOCHS, shuffle=True, verbose=0,
              validation_data=(only(splits.validation.x), only(splits.validation.y)),
              callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
                         keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=2)])
    hand = model.evaluate(only(splits.test.x), only(splits.test.y), verbose=0, return_dict=True)["accuracy"]
    ours = json.loads((digits_run / "metrics.json").read_text())["test"]["accuracy"]
    assert ours >= hand - 0.03, (ours, hand)


# -- errors --------------------------------------------------------------------------------------

def tree_fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@slow
def test_existing_run_dir_needs_resume(iris_run):
    before = tree_fingerprint(iris_run)
    result = kspec("train", EXAMPLES / "iris_mlp.yaml", "--run-dir", iris_run, "--set", "train.epochs=2")
    assert result.returncode == 2, result.stderr
    assert "--resume" in result.stderr and str(iris_run) in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_fingerprint(iris_run) == before, "an earlier run was modified"


@slow
def test_non_empty_dir_is_not_taken(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = kspec("train", EXAMPLES / "iris_mlp.yaml", "--run-dir", tmp_path, "--set", "train.epochs=1")
    assert result.returncode == 2 and "not empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@slow
def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = kspec("train", EXAMPLES / "iris_mlp.yaml", "--run-dir", blocker / "run", "--set", "train.epochs=1")
    assert result.returncode == 2, result.stderr
    assert "cannot create run directory" in result.stderr and "Traceback" not in result.stderr


@slow
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_run_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = kspec("train", EXAMPLES / "iris_mlp.yaml", "--run-dir", locked / "run", "--set", "train.epochs=1")
        assert result.returncode == 2 and "run directory" in result.stderr
    finally:
        locked.chmod(0o700)


@slow
def test_workers_must_be_positive(tmp_path):
    # --workers N > 1 is tested in tests/test_distribute.py
    result = kspec("train", EXAMPLES / "iris_mlp.yaml", "--run-dir", tmp_path / "run", "--workers", "0")
    assert result.returncode == 1 and "--workers must be at least 1" in result.stderr
    assert not (tmp_path / "run").exists()


NAN_SPEC = """\
kspec: 1
name: diverge
seed: 0
data:
  source: {sklearn: diabetes}     # unnormalised targets in the hundreds
  split: {validation: 0.2, test: 0.2}
model:
  inputs:
    x: {shape: [10]}
  layers:
    - Dense: {units: 8, activation: relu}
    - Dense: {units: 1}
      name: y
train:
  optimizer: {SGD: {learning_rate: 1000000.0}}
  loss: mse
  batch_size: 32
  epochs: 5
"""


@slow
def test_nan_loss_stops_with_exit_1_and_keeps_a_checkpoint(tmp_path):
    import keras

    spec = tmp_path / "diverge.yaml"
    spec.write_text(NAN_SPEC)
    run = tmp_path / "run"
    result = kspec("train", spec, "--run-dir", run)
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr
    assert re.search(r"loss became (NaN|infinite) at epoch 0, batch \d+", message), message
    assert "last good checkpoint" in message and "Traceback" not in message
    last = run / "checkpoints" / "last.keras"
    model = keras.saving.load_model(last)
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch_done"] == 0
    assert not (run / "model.keras").exists()


# -- in-process unit tests (fast) ----------------------------------------------------------------

def test_epoch_guard_catches_nan_weights_behind_a_finite_loss():
    import keras

    from compiler.train.callbacks import EpochGuard

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    guard = EpochGuard()
    guard.set_model(model)
    guard.on_epoch_begin(4)
    guard.on_train_batch_end(0, {"loss": 0.5})
    guard.on_epoch_end(4, {"loss": 0.5})
    assert guard.failed is None and not getattr(model, "stop_training", False)

    kernel = model.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    guard.on_epoch_begin(5)
    guard.on_epoch_end(5, {"loss": 0.4})
    assert guard.failed == (5, None, "the weights became NaN or infinite") and model.stop_training

    guard = EpochGuard()
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(7, {"loss": float("nan")})
    assert guard.failed == (0, 7, "loss became NaN")


def test_atomic_writes_leave_no_temporaries(tmp_path):
    import keras

    from compiler.rundir import (atomic_save_model, atomic_write_json, atomic_write_text,
                                       read_embedded_state)

    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    atomic_write_json(tmp_path / "b.json", {"x": np.float32(1.5), "y": [1, 2]})
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    atomic_save_model(model, tmp_path / "m.keras", state={"epoch_done": 3}, link=tmp_path / "best.keras")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1.5, "y": [1, 2]}
    assert read_embedded_state(tmp_path / "best.keras") == {"epoch_done": 3}
    assert keras.saving.load_model(tmp_path / "m.keras").count_params() == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "best.keras", "m.keras"]


def test_claim_refuses_earlier_runs_and_undoes_a_failed_fresh_claim(tmp_path):
    from compiler.rundir import RunDirError, claim, discard

    from compiler.rundir import atomic_write_text

    run = claim(tmp_path / "new" / "run", resume=False)
    atomic_write_text(run.path / "spec.yaml", "kspec: 1\n")
    with pytest.raises(RunDirError, match="holds an earlier run") as info:
        claim(run.path, resume=False)
    assert info.value.exit_code == 2
    with pytest.raises(RunDirError, match="in use by another kspec process"):
        claim(run.path, resume=True)    # locked by `run`
    run.release()
    again = claim(run.path, resume=True)
    assert again.path == run.path
    again.release()
    discard(run)                        # a spec error before training: nothing is left behind
    assert not (tmp_path / "new").exists()


def test_history_rows_and_columns(tmp_path):
    from compiler.train.history import columns, read_history, write_history

    rows = [{"epoch": 0, "accuracy": 0.5, "loss": 1.0, "val_accuracy": 0.4, "val_loss": 1.2,
             "learning_rate": 0.01, "epoch_seconds": 0.3},
            {"epoch": 1, "accuracy": 0.6, "loss": 0.8, "val_accuracy": 0.5, "val_loss": 1.0,
             "learning_rate": 0.01, "epoch_seconds": 0.2}]
    assert columns(rows) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                             "epoch_seconds"]
    write_history(tmp_path / "history.csv", rows)
    assert read_history(tmp_path / "history.csv") == rows
