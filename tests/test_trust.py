"""Issue 13, trust and file safety: nothing read from a file enables code execution; kspec writes only
inside the run directory, deletes only what it provably wrote, and locks the run directory.

Each finding of the issue is reproduced with real files and real `kspec` processes (`python -m
compiler`, or forks of the test fork server in tests/kspec_procs.py), kill -9 where it matters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from kspec_procs import Procs

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
kspec: 1
name: iris-trust
seed: 0
data:
  source: {sklearn: iris}
  split: {validation: 0.2, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    x: {shape: [4]}
  layers:
    - Dense: {units: 8, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: species
  outputs: [species]
train:
  optimizer: {Adam: {learning_rate: 0.01}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 16
  epochs: 2
"""

PROBE = "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('code ran')\n"


def kspec(*args, cwd=ROOT, env=None, timeout=120) -> subprocess.CompletedProcess:
    """A real `python -m compiler ...` process (the form the worker launcher uses)."""
    full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    full["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def clean_failure(result, code: int = 2) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def procs():
    p = Procs()
    yield p
    p.close()


@pytest.fixture(scope="module")
def iris(tmp_path_factory, procs):
    """A finished run of SPEC (2 epochs), shared by the tests that only read it."""
    d = tmp_path_factory.mktemp("iris")
    (d / "spec.yaml").write_text(SPEC)
    result = procs.run(["train", d / "spec.yaml", "--run-dir", d / "run", "--verbose", "0"], timeout=300)
    assert result.returncode == 0, result.stderr
    return d


# -- 1. code runs although the user never asked for it ---------------------------------------------

def test_a_spec_cannot_turn_safe_mode_off(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("    - Dense: {units: 8, activation: relu}\n",
                                 "    - Backbone: {from: lambda.keras, safe_mode: false}\n"))
    err = clean_failure(kspec("validate", spec))
    assert f"{spec}:12:49: error: Backbone" in err and "cannot turn Keras safe mode off" in err
    assert f"--trust {tmp_path / 'lambda.keras'}" in err and "(at model.layers[0].Backbone.safe_mode)" in err


def test_refusals_say_what_the_file_holds_and_suggest_trust(tmp_path):
    import keras

    from compiler import trust
    from compiler.export.source import load_model

    (tmp_path / "vocab.txt").write_text("a\nb\n")
    x = keras.Input((1,), dtype="string")
    keras.Model(x, keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")(x)).save(tmp_path / "v.keras")
    # The same archive, its lookup layer now reading a file of this machine (as a hostile file would).
    with zipfile.ZipFile(tmp_path / "v.keras") as src, zipfile.ZipFile(tmp_path / "evil.keras", "w") as out:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"]["vocabulary"] = str(tmp_path / "vocab.txt")
                data = json.dumps(config).encode()
            out.writestr(item, data)
    with pytest.raises(Exception) as info:
        load_model(tmp_path / "evil.keras")
    text = str(info.value)
    assert f"a StringLookup layer 'lookup' that reads the file '{tmp_path / 'vocab.txt'}'" in text
    assert f"--trust {tmp_path / 'evil.keras'}" in text and "Lambda" not in text
    trust.trust_files([tmp_path])                      # a trusted folder covers the files in it
    try:
        assert load_model(tmp_path / "evil.keras") is not None
    finally:
        trust.clear()
    # A TFSMLayer, described from the archive's config.json alone (no Keras, nothing loaded).
    with zipfile.ZipFile(tmp_path / "tfsm.keras", "w") as out:
        out.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": [
            {"class_name": "TFSMLayer", "config": {"name": "outside", "filepath": "/srv/model"}}]}}))
    assert trust.describe_unsafe(tmp_path / "tfsm.keras") == \
        "a TFSMLayer 'outside' (it loads the external SavedModel '/srv/model', whose graph would run)"


def test_python_m_compiler_does_not_import_from_the_working_directory(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "yaml.py").write_text(PROBE)           # would shadow PyYAML if the cwd came first
    result = kspec("validate", "spec.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "IMPORTED").exists()


def test_declared_plugins_are_never_imported_without_the_flag(tmp_path, iris):
    run = tmp_path / "run"
    shutil.copytree(iris / "run", run)
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    (run / "spec.yaml").write_text(yaml.safe_dump({**spec, "plugins": ["kspec_probe"]}, sort_keys=False))
    (run / "kspec_probe.py").write_text(PROBE)         # shipped inside the run folder
    for args in (["evaluate", "."], ["predict", ".", "in.csv"], ["export", ".", "--format", "keras", "-o", "m.keras"]):
        err = clean_failure(kspec(*args, cwd=run))
        assert "declares plugin module 'kspec_probe'" in err and "pass `--plugin kspec_probe`" in err, err
    (tmp_path / "spec.yaml").write_text(SPEC + "plugins: [kspec_probe]\n")
    err = clean_failure(kspec("train", tmp_path / "spec.yaml", cwd=run))
    assert f"{tmp_path / 'spec.yaml'}:22:" in err and "pass `--plugin kspec_probe`" in err
    assert not (run / "IMPORTED").exists()


# -- 2. user files deleted or overwritten -----------------------------------------------------------

def test_every_path_a_spec_writes_stays_inside_the_run_directory(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC + """\
  callbacks:
    - BackupAndRestore: {backup_dir: /tmp/project}
    - BackupAndRestore: {backup_dir: "../.."}
    - BackupAndRestore: {backup_dir: "."}
    - CSVLogger: {filename: /home/user/notes.csv}
    - ModelCheckpoint: {filepath: "sub/../../x.keras"}
    - CSVLogger: {filename: history.csv}
    - TensorBoard: {log_dir: logs}
    - CSVLogger: {filename: logs/epochs.csv}
""")
    err = clean_failure(kspec("validate", spec))
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 6, err
    for line, (row, what) in zip(errors, [(23, "outside"), (24, "leaves the run directory"), (25, "itself"),
                                          (26, "outside"), (27, "leaves the run directory"),
                                          (28, "kspec's own 'history.csv'")]):
        assert line.startswith(f"{spec}:{row}:") and what in line, (row, line)


def test_a_link_out_of_the_run_directory_is_refused_at_train_time(tmp_path):
    from compiler.rundir import RunDirError, claim, resolve_inside

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = claim(tmp_path / "run", resume=False)
    (run.path / "logs").symlink_to(outside)
    try:
        assert resolve_inside(run, "ok/epochs.csv", "filename") == run.path / "ok/epochs.csv"
        with pytest.raises(RunDirError, match="outside the run directory"):
            resolve_inside(run, "logs/epochs.csv", "filename")
    finally:
        run.release()


def test_resume_refuses_a_folder_kspec_did_not_create(tmp_path, procs, iris):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "spec.yaml").write_text(SPEC)              # the user's own files, named like a run's
    (mine / "history.csv").write_text("epoch,loss\n0,1.0\n")
    shutil.copyfile(iris / "run" / "model.keras", mine / "model.keras")
    (mine / "notes.txt").write_text("mine")
    before = snapshot(mine)
    resumed = procs.run(["train", mine / "spec.yaml", "--run-dir", mine, "--resume"], timeout=120)
    err = clean_failure(resumed)
    assert "is not a kspec run directory" in err and "nothing in it was changed" in err
    fresh = procs.run(["train", mine / "spec.yaml", "--run-dir", mine], timeout=120)
    err = clean_failure(fresh)
    assert "--resume" not in err, "the hint must never suggest a command that could overwrite the folder"
    assert snapshot(mine) == before


def test_clean_up_removes_only_kspecs_own_files_by_exact_name(tmp_path):
    from compiler.rundir import atomic_write_text, claim, discard

    other = tmp_path / "other-program"
    other.mkdir()
    theirs = [other / "tmpabcd1234", other / ".last.keras.x7y8z9.tmp", other / "last.keras"]
    for path in theirs:
        path.write_bytes(b"\x89HDF\r\n\x1a\n theirs")
    run = claim(tmp_path / "run", resume=False)
    (run.path / "checkpoints").symlink_to(other)        # checkpoints/ symlinked elsewhere
    run.release()
    claim(run.path, resume=True).release()              # clean-up of a killed run's temporaries
    assert all(p.exists() for p in theirs)
    # A failed fresh run removes what its manifest lists, nothing else, and the folders it created.
    run = claim(tmp_path / "new" / "run", resume=False)
    atomic_write_text(run.spec, "kspec: 1\n")
    (run.path / "user.txt").write_text("written by a callback, not by kspec")
    discard(run)
    assert sorted(p.name for p in (tmp_path / "new" / "run").iterdir()) == ["user.txt"]


def test_build_output_is_never_the_spec_or_a_foreign_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    (tmp_path / "theirs.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)     # an empty zip that kspec did not write
    for output, message in ((spec, "a model is saved to a file ending in .keras"),
                            (tmp_path / "theirs.keras", "is not a model that kspec wrote")):
        err = clean_failure(kspec("build", spec, "-o", output))
        assert message in err and "nothing was" in err
    assert spec.read_text() == SPEC and (tmp_path / "theirs.keras").stat().st_size == 22


def test_export_never_replaces_a_foreign_folder_and_a_killed_export_leaves_nothing(tmp_path, procs, iris):
    theirs = tmp_path / "served"
    theirs.mkdir()
    (theirs / "saved_model.pb").write_bytes(b"their model")
    (theirs / "README").write_text("their notes")
    run = iris / "run"
    err = clean_failure(procs.run(["export", run, "--format", "saved_model", "-o", theirs], timeout=120))
    assert "kspec did not export" in err and snapshot(theirs) == {"saved_model.pb": b"their model",
                                                                   "README": b"their notes"}
    out = tmp_path / "export"
    killed = procs.run(["export", run, "--format", "saved_model", "-o", out], timeout=300,
                       env={**os.environ, "KSPEC_CRASH_AT": "export:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / ".export.kspec-export.tmp").is_dir() and not out.exists()
    for _ in range(2):                                  # then again over kspec's own export: replaced
        done = procs.run(["export", run, "--format", "saved_model", "-o", out], timeout=300)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "served"]


def test_the_run_directory_is_locked_and_a_killed_run_resumes_at_once(tmp_path, procs):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("epochs: 2", "epochs: 2000"))
    run = tmp_path / "run"
    first = procs.start(["train", spec, "--run-dir", run, "--verbose", "0"])
    deadline = time.monotonic() + 120
    while not (run / "history.csv").exists():           # the first epoch is done: the lock is held
        assert first.poll() is None and time.monotonic() < deadline, first.stderr
        time.sleep(0.1)
    second = procs.run(["train", spec, "--run-dir", run, "--resume", "--verbose", "0"], timeout=120)
    err = clean_failure(second)
    assert f"run directory {run} is in use by another kspec process (pid" in err
    first.kill()                                        # kill -9: the kernel releases the lock
    first.wait(30)
    resumed = procs.run(["train", spec, "--run-dir", run, "--resume", "--set", "train.epochs=1", "--verbose", "0"],
                        timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "metrics.json").is_file()
    # --resume after the train section changed what the checkpoint was compiled with: refused, saying what.
    changed = procs.run(["train", spec, "--run-dir", run, "--resume", "--set", "train.loss=mse"], timeout=120)
    err = clean_failure(changed)
    assert "--resume: the spec's train.loss differs from the run" in err and "(at train.loss)" in err


def test_a_callback_monitoring_val_metrics_needs_a_validation_split(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("  split: {validation: 0.2, test: 0.2}\n", "") + """\
  callbacks:
    - EarlyStopping: {monitor: val_loss, patience: 2}
    - ReduceLROnPlateau: {factor: 0.5}
    - EarlyStopping: {monitor: loss}
""")
    err = clean_failure(kspec("validate", spec))
    assert f"{spec}:22:32: error: EarlyStopping monitors 'val_loss', but there is no validation split" in err
    assert f"{spec}:23:26: error: ReduceLROnPlateau monitors 'val_loss'" in err     # Keras's default monitor
    assert err.count(": error: ") == 2 and "hint: add `data: {split: {validation: 0.2}}`, or monitor 'loss'" in err
