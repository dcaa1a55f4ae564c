"""`kspec train --resume` after `kill -9`: no epoch repeated, none lost, in a one-phase and a two-phase run.

Each test starts a real `kspec train` of a small model on the digits, waits until
history.csv holds a few epochs, SIGKILLs it (wherever it is: inside an epoch, or
halfway through writing a checkpoint), then resumes the run to completion.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SPEC = """\
kspec: 1
name: digits-resume
seed: 0
data:
  source: {sklearn: digits}
  split: {validation: 0.2, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    pixels: {shape: [64]}
  layers:
    - Dense: {units: 32, activation: relu}
      name: hidden
    - Dense: {units: 10, activation: softmax}
      name: digit
train:
  optimizer: {Adam: {learning_rate: 0.001}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 64
  epochs: %(epochs)d
  checkpoint: {every_seconds: 0}     # every epoch: these tests kill between epoch checkpoints
  callbacks:
    - ReduceLROnPlateau: {factor: 0.5, patience: 3}
%(phases)s"""

TWO_PHASES = """\
  phases:
    - {name: head, epochs: 12, trainable: "digit"}
    - {name: all, epochs: 20, trainable: true, learning_rate: 0.0005}
"""


def command(*args) -> list[str]:
    return [sys.executable, "-m", "compiler", *map(str, args)]


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def epochs_in(run: Path) -> list[int]:
    try:
        with open(run / "history.csv", newline="") as f:
            return [int(row["epoch"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


def train_and_kill(spec: Path, run: Path, after_rows: int, timeout: float = 240) -> list[int]:
    """Start training, SIGKILL it once history.csv has `after_rows` rows; return the epochs it had."""
    process = subprocess.Popen(command("train", spec, "--run-dir", run), cwd=ROOT, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while len(epochs_in(run)) < after_rows:
            if process.poll() is not None:
                pytest.fail(f"training ended (exit {process.returncode}) before it could be killed:\n"
                            f"{process.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("training did not reach the kill point in time")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return epochs_in(run)


def resume(spec: Path, run: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command("train", spec, "--run-dir", run, "--resume"), cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def check_complete(run: Path, epochs: int) -> dict:
    import keras

    assert epochs_in(run) == list(range(epochs)), "each epoch exactly once, contiguous"
    model = keras.saving.load_model(run / "model.keras")
    assert model.predict(__import__("numpy").zeros((1, 64), "float32"), verbose=0).shape == (1, 10)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and {"train", "validation", "test"} <= set(metrics)
    assert metrics["test"]["accuracy"] > 0.8
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    return metrics


def test_resume_after_kill(tmp_path):
    epochs = 40
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"epochs": epochs, "phases": ""})
    run = tmp_path / "run"

    before = train_and_kill(spec, run, after_rows=3)
    assert before == list(range(len(before))) and 3 <= len(before) < epochs
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["finished"] is False

    result = resume(spec, run)
    assert "epoch 1/" not in result.stdout                  # it continued; it did not start over
    check_complete(run, epochs)
    final = json.loads((run / "checkpoints" / "state.json").read_text())
    assert final["finished"] is True and final["epoch_done"] == epochs

    again = resume(spec, run)                               # a finished run: nothing to do
    assert "already complete" in again.stdout
    assert epochs_in(run) == list(range(epochs))


def test_resume_inside_second_phase(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"epochs": 32, "phases": TWO_PHASES})
    run = tmp_path / "run"

    train_and_kill(spec, run, after_rows=15)                # phase 1 has 12 epochs: 0..11
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    embedded_done = state["epoch_done"]
    assert state["phase"] == 1 and state["phase_name"] == "all" and embedded_done >= 12, state

    resume(spec, run)
    check_complete(run, 32)
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # phase 2 re-compiled with its own learning rate (ReduceLROnPlateau may only lower it)
    assert all(float(r["learning_rate"]) <= 0.0005 * 1.0001 for r in rows[12:])
    assert float(rows[12]["learning_rate"]) == pytest.approx(0.0005)
    final = json.loads((run / "checkpoints" / "state.json").read_text())
    assert final["phase"] == 1 and final["finished"] is True


def test_resume_rejects_a_different_model(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"epochs": 2, "phases": ""})
    run = tmp_path / "run"
    subprocess.run(command("train", spec, "--run-dir", run), cwd=ROOT, env=env(), check=True,
                   capture_output=True, timeout=300)
    spec.write_text((SPEC % {"epochs": 2, "phases": ""}).replace("units: 32", "units: 16"))
    changed = subprocess.run(command("train", spec, "--run-dir", run, "--resume"),
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "differ" in changed.stderr, changed.stderr
