"""Issue 13, messages that lived in training: a loss that does not fit its labels is a located error
before training (before TensorFlow when the spec says the output's units), exit 2, and no run
directory is left behind; accuracy on a regression target is a warning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
kspec: 1
name: loss-check
seed: 0
data:
  source: %(source)s
  split: {validation: 0.2}
model:
  inputs:
    x: {shape: [%(width)d]}
  layers:
    - Dense: {units: 8, activation: relu}
%(head)s
  outputs: [y]
train:
  loss: %(loss)s
  metrics: [%(metric)s]
  epochs: 1
"""
SOFTMAX3 = "    - Dense: {units: 3, activation: softmax}\n      name: y"


def write(tmp_path: Path, loss: str, source: str = "{sklearn: iris}", head: str = SOFTMAX3,
          metric: str = "accuracy", width: int = 4) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"source": source, "head": head, "loss": loss, "metric": metric, "width": width})
    return spec


def train(spec: Path, run: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "compiler", "train", spec, "--run-dir", run, "--verbose", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def refused(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result.stderr


def test_mismatched_losses_fail_before_tensorflow_at_train_loss(tmp_path):
    np.savez(tmp_path / "onehot.npz", x=np.random.default_rng(0).normal(size=(60, 4)).astype("float32"),
             y=np.eye(3, dtype="float32")[np.arange(60) % 3])
    cases = [
        ("binary_crossentropy", "{sklearn: iris}", "holds 3 classes",
         "sparse_categorical_crossentropy` with 3 softmax"),
        ("categorical_crossentropy", "{sklearn: iris}", "expects one-hot labels", "sparse_categorical_crossentropy"),
        ("sparse_categorical_crossentropy", "{npz: onehot.npz}", "is one-hot (3 columns)", "categorical_crossentropy"),
    ]
    for loss, source, message, fits in cases:
        spec, run = write(tmp_path, loss, source), tmp_path / "run"
        started = time.perf_counter()
        err = refused(train(spec, run))
        assert time.perf_counter() - started < 20
        assert f"{spec}:16:9: error: train.loss {loss}" in err and message in err and "(at train.loss)" in err, err
        assert f"hint: use `loss: {fits}" in err, err
        assert "tensorflow" not in err.lower() and not run.exists(), "no run directory may block a rerun"


def test_a_mismatch_found_on_the_built_model_leaves_no_run_directory(tmp_path):
    # The output is an Activation layer: its units are known only once the model is built.
    head = "    - Dense: {units: 3}\n    - Activation: {activation: softmax}\n      name: y"
    spec, run = write(tmp_path, "binary_crossentropy", head=head), tmp_path / "runs" / "a"
    err = refused(train(spec, run))
    assert f"{spec}:17:9: error: train.loss binary_crossentropy" in err and "holds 3 classes" in err
    assert not (tmp_path / "runs").exists()


def test_accuracy_on_a_regression_target_is_a_warning(tmp_path, capsys):
    from compiler.data import load_splits
    from compiler.spec.validate import load_spec
    from compiler.train.losscheck import check_losses, spec_output_units

    head = "    - Dense: {units: 1}\n      name: y"
    spec = load_spec(write(tmp_path, "mse", source="{sklearn: diabetes}", head=head, width=10))
    check_losses(spec, load_splits(spec.data, spec.model, spec.seed), spec_output_units(spec))
    err = capsys.readouterr().err
    assert f"{tmp_path / 'spec.yaml'}:17:13: warning: metric accuracy on output 'y', a regression" in err
