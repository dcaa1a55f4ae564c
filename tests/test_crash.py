"""Crash safety: `kill -9` anywhere in a training run, a full disk, and `--resume` afterwards.

Three scenarios run `kspec train` processes on a tiny iris MLP. The processes are forks of a
server that imported TensorFlow once (tests/kspec_procs.py; KSPEC_TEST_FORK=0 runs plain
`python -m compiler` subprocesses instead); one full-disk run is a plain subprocess with
RLIMIT_FSIZE set by `preexec_fn`. The scenarios run concurrently in a module fixture, which
copies the run directory right after every kill; the tests then inspect those copies:

- write windows: `KSPEC_CRASH_AT=NAME:N` (a test-only hook in compiler/rundir.py) makes
  the process SIGKILL itself the N-th time the file NAME is complete in its temporary file but
  not yet moved into place. One run is killed that way at history.csv, checkpoints/last.keras,
  checkpoints/state.json, checkpoints/best.keras, the final model.keras, metrics.json and the
  final state.json, resumed after each kill, and finally resumed to the end;
- random kills: a second run is SIGKILLed at seeded random moments after its epochs begin
  (inside an epoch, inside a write, or while it finishes), resumed each time, then to the end;
- full disk: RLIMIT_FSIZE (with SIGXFSZ ignored, so writes fail with EFBIG as on a full disk)
  below the size of an epoch checkpoint: the run stops with a clear error and exit 1, the
  previous checkpoint intact; below the size of the first checkpoint: it stops before the first
  epoch and leaves nothing behind.

After every kill: no artifact is truncated (each .keras loads with plain Keras, each .json
parses, history.csv has consistent rows numbered 0..k-1), and the checkpoint, state.json and
history.csv agree within one epoch. After the last resume: every epoch exactly once, a
loadable model.keras, metrics.json for all epochs, and no temporary file left.
"""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from kspec_procs import Procs

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240

pytestmark = pytest.mark.slow

SPEC = """\
kspec: 1
name: iris-crash
seed: 0
data:
  source: {sklearn: iris}
  split: {validation: 0.2, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    x: {shape: [4]}
  layers:
    - Dense: {units: %(units)d, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: species
  outputs: [species]
train:
  optimizer: {Adam: {learning_rate: 0.01}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 8
  epochs: %(epochs)d
  checkpoint: {every_seconds: 0}     # every epoch: these tests kill between epoch checkpoints
"""

EPOCHS = 12
RANDOM_EPOCHS = 16
RANDOM_KILLS = 3

# (KSPEC_CRASH_AT, the temporary file the kill must leave) in the order one run meets them. Counts are
# per process: a fresh run writes last.keras/state.json once before epoch 0, a resumed run does not.
WINDOWS = [
    ("history.csv:3", "history.csv"),        # fresh run: the row of epoch 2
    ("last.keras:3", "checkpoints/last.keras"),
    ("state.json:2", "checkpoints/state.json"),   # the checkpoint is then one epoch ahead of state.json
    ("best.keras:1", "checkpoints/best.keras"),   # last.keras replaced, best.keras not yet re-linked
    ("model.keras:1", "model.keras"),        # the final save
    ("metrics.json:1", "metrics.json"),
    ("state.json:1", "checkpoints/state.json"),   # the final state (finished: true)
]

# An epoch checkpoint of the 1024-unit model holds Adam's two moments besides the weights: about
# 130 kB against 60 kB for the checkpoint written before epoch 0 (no optimizer state yet).
BIG_UNITS = 1024
LIMIT_AFTER_FIRST = 95_000          # the first checkpoint fits, the first epoch checkpoint does not
LIMIT_BEFORE_TRAINING = 20_000      # spec.yaml, data.json, summary.txt fit; no checkpoint does


def command(*args) -> list[str]:
    return [sys.executable, "-m", "compiler", *map(str, args)]


def env(crash_at: str | None = None) -> dict:
    out = {k: v for k, v in os.environ.items() if k != "KSPEC_CRASH_AT"}
    out["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if crash_at:
        out["KSPEC_CRASH_AT"] = crash_at
    return out


def train(procs: Procs, spec: Path, run: Path, resume: bool, crash_at: str | None = None,
          file_limit: int | None = None) -> subprocess.CompletedProcess:
    args = ["train", spec, "--run-dir", run, "--verbose", "2"] + (["--resume"] if resume else [])
    return procs.run(args, timeout=TIMEOUT, env=env(crash_at), file_limit=file_limit)


def train_subprocess(spec: Path, run: Path, file_limit: int) -> subprocess.CompletedProcess:
    """A plain `python -m compiler train` whose writes fail with EFBIG past `file_limit` bytes."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails, not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(command("train", spec, "--run-dir", run, "--verbose", "2"), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limit)


def epochs_in(run: Path) -> list[int]:
    try:
        with open(run / "history.csv", newline="") as f:
            return [int(row["epoch"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


def snapshot(run: Path, into: Path) -> Path:
    shutil.copytree(run, into, symlinks=True)
    return into


def temporaries(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".") and ".tmp" in p.name)


# -- the scenarios (run in threads; they only start processes and copy folders) --------------------

def write_windows(procs: Procs, d: Path) -> dict:
    spec = d / "spec.yaml"
    spec.write_text(SPEC % {"units": 8, "epochs": EPOCHS})
    run = d / "run"
    kills = []
    for k, (crash_at, temp) in enumerate(WINDOWS):
        result = train(procs, spec, run, resume=k > 0, crash_at=crash_at)
        kills.append({"crash_at": crash_at, "temp": temp, "returncode": result.returncode,
                      "stderr": result.stderr, "copy": snapshot(run, d / f"after-{k}")})
        if result.returncode != -signal.SIGKILL:
            break
    final = train(procs, spec, run, resume=True)
    return {"run": run, "kills": kills, "final": final}


def random_kills(procs: Procs, d: Path) -> dict:
    spec = d / "spec.yaml"
    spec.write_text(SPEC % {"units": 8, "epochs": RANDOM_EPOCHS})
    run = d / "run"
    rng = random.Random(20240601)
    kills = []
    for k in range(RANDOM_KILLS):
        args = ["train", spec, "--run-dir", run, "--verbose", "0"] + (["--resume"] if k else [])
        seen = max(epochs_in(run), default=-1)
        process = procs.start(args, env=env())
        try:
            deadline = time.monotonic() + TIMEOUT
            # Wait until this process has finished an epoch of its own, then kill it a random moment later.
            while max(epochs_in(run), default=-1) <= seen and process.poll() is None:
                assert time.monotonic() < deadline, "training did not start in time"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        kills.append({"returncode": process.returncode, "stderr": process.stderr,
                      "copy": snapshot(run, d / f"after-{k}")})
        if process.returncode != -signal.SIGKILL:
            break                               # it finished before the kill: nothing left to interrupt
    final = train(procs, spec, run, resume=True)
    return {"run": run, "kills": kills, "final": final}


def full_disk(procs: Procs, d: Path) -> dict:
    spec = d / "spec.yaml"
    spec.write_text(SPEC % {"units": BIG_UNITS, "epochs": 3})
    early = train_subprocess(spec, d / "early", file_limit=LIMIT_BEFORE_TRAINING)
    run = d / "run"
    failed = train(procs, spec, run, resume=False, file_limit=LIMIT_AFTER_FIRST)
    copy = snapshot(run, d / "after-failure") if run.exists() else None
    final = train(procs, spec, run, resume=True)
    return {"early": early, "early_run": d / "early", "failed": failed, "copy": copy, "run": run, "final": final}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    procs = Procs()
    jobs = {"windows": write_windows, "random": random_kills, "disk": full_disk}
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {name: pool.submit(job, procs, tmp_path_factory.mktemp(name)) for name, job in jobs.items()}
            return {name: future.result() for name, future in futures.items()}
    finally:
        procs.close()


# -- checks ---------------------------------------------------------------------------------

def load(path: Path):
    import warnings

    import keras

    import compiler.layers  # noqa: F401  (kspec's own layers, should a model use one)

    with warnings.catch_warnings():
        # The checkpoint written before epoch 0 has no optimizer variables yet; Keras says so.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.saving.load_model(path)


def check_consistent(run: Path) -> dict:
    """Every artifact present is whole, and the checkpoint, state.json and history.csv agree."""
    from compiler.rundir import read_embedded_state

    for name in ("spec.yaml",):
        if (run / name).exists():
            assert isinstance(yaml.safe_load((run / name).read_text()), dict), name
    for name in ("data.json", "metrics.json", "checkpoints/state.json"):
        if (run / name).exists():
            assert isinstance(json.loads((run / name).read_text()), dict), name
    if (run / "curves.png").exists():
        from PIL import Image

        with Image.open(run / "curves.png") as image:
            image.load()
    for name in ("model.keras", "checkpoints/last.keras", "checkpoints/best.keras"):
        if (run / name).exists():
            assert load(run / name).output_shape == (None, 3), name

    rows = []
    if (run / "history.csv").exists():
        with open(run / "history.csv", newline="") as f:
            table = list(csv.reader(f))
        header, rows = table[0], table[1:]
        assert header[0] == "epoch"
        assert all(len(r) == len(header) for r in rows), "a history row with missing cells"
        assert [int(r[0]) for r in rows] == list(range(len(rows))), "history.csv epochs are not 0..k-1"
        assert all(np.isfinite(float(cell)) for r in rows for cell in r[1:])

    info = {"rows": len(rows), "checkpoint": None, "state": None}
    if (run / "checkpoints/last.keras").exists():
        embedded = read_embedded_state(run / "checkpoints/last.keras")
        assert embedded is not None, "a checkpoint without its training state"
        info["checkpoint"] = done = embedded["epoch_done"]
        # history.csv is written before the checkpoint of the same epoch, state.json after it.
        assert done <= len(rows) <= done + 1, (done, len(rows))
        if (run / "checkpoints/state.json").exists():
            # state.json may lag behind (a kill after last.keras, before state.json; a resume reads both
            # and trusts the larger), but it is never ahead of the checkpoint.
            info["state"] = state = json.loads((run / "checkpoints/state.json").read_text())["epoch_done"]
            assert state <= done, (state, done)
    return info


def check_complete(run: Path, epochs: int, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert epochs_in(run) == list(range(epochs)), "each epoch exactly once, in order"
    check_consistent(run)
    model = load(run / "model.keras")
    assert model.predict(np.zeros((1, 4), np.float32), verbose=0).shape == (1, 3)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and {"train", "validation", "test"} <= set(metrics)
    state = json.loads((run / "checkpoints/state.json").read_text())
    assert state["finished"] is True and state["epoch_done"] == epochs
    assert temporaries(run) == [], "temporary files left behind"


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr


# -- tests -------------------------------------------------------------------------------------

def test_kill_in_every_write_window_then_resume(scenarios):
    windows = scenarios["windows"]
    kills = windows["kills"]
    assert [k["returncode"] for k in kills] == [-signal.SIGKILL] * len(WINDOWS), \
        [(k["crash_at"], k["returncode"], k["stderr"][-2000:]) for k in kills]
    for kill in kills:
        copy, temp = kill["copy"], kill["temp"]
        left = temporaries(copy)
        target = Path(temp)
        assert any(Path(t).parent == target.parent and Path(t).name.startswith(f".{target.name}.") for t in left), \
            f"{kill['crash_at']}: the kill did not happen inside the write of {temp} ({left})"
        info = check_consistent(copy)
        if kill["crash_at"] == "state.json:2":
            assert info["checkpoint"] == info["state"] + 1, info
        if kill["crash_at"] == "model.keras:1":
            assert not (copy / "model.keras").exists() and not (copy / "metrics.json").exists()
        if kill["crash_at"] == "metrics.json:1":
            assert (copy / "model.keras").exists() and not (copy / "metrics.json").exists()
        if kill["crash_at"] == "state.json:1":
            assert (copy / "metrics.json").exists()
            assert json.loads((copy / "checkpoints/state.json").read_text())["finished"] is False
    check_complete(windows["run"], EPOCHS, windows["final"])


def test_random_kills_then_resume(scenarios):
    random_run = scenarios["random"]
    kills = random_run["kills"]
    assert kills[0]["returncode"] == -signal.SIGKILL, "the first kill came too late"
    for kill in kills:
        assert kill["returncode"] in (-signal.SIGKILL, 0), kill["stderr"][-2000:]
        check_consistent(kill["copy"])
    check_complete(random_run["run"], RANDOM_EPOCHS, random_run["final"])


def test_full_disk_before_training_is_a_clear_error(scenarios):
    disk = scenarios["disk"]
    early = disk["early"]
    no_traceback(early)
    assert early.returncode == 1, early.stdout + early.stderr
    assert f"error: cannot write {disk['early_run'] / 'checkpoints' / 'last.keras'}: File too large" in early.stderr
    assert "hint: the disk is full" in early.stderr
    assert "epoch 1/" not in early.stdout, "training started"
    assert not disk["early_run"].exists(), "a run that could not start leaves nothing behind"


def test_full_disk_during_training_keeps_the_last_checkpoint(scenarios):
    from compiler.rundir import read_embedded_state

    disk = scenarios["disk"]
    failed, copy = disk["failed"], disk["copy"]
    no_traceback(failed)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"error: cannot write {disk['run'] / 'checkpoints' / 'last.keras'}: File too large" in failed.stderr
    assert "--resume" in failed.stderr
    assert copy is not None and temporaries(copy) == []
    assert read_embedded_state(copy / "checkpoints" / "last.keras")["epoch_done"] == 0   # the previous checkpoint
    check_consistent(copy)
    check_complete(disk["run"], 3, disk["final"])


# -- in-process checks of the run directory's own guards (no training) ------------------------

def test_run_dir_under_a_file_is_refused(tmp_path):
    from compiler.rundir import RunDirError, claim

    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    with pytest.raises(RunDirError) as info:
        claim(blocker / "runs" / "a", resume=False)
    assert f"cannot create run directory {blocker / 'runs' / 'a'}: {blocker} is a file, not a directory" \
        in str(info.value)
    assert info.value.exit_code == 2 and blocker.read_text() == "mine"


def test_full_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import shutil as shutil_module

    from compiler.rundir import RunDirError, claim

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(RunDirError) as info:
        claim(tmp_path / "run", resume=False)
    assert "is full (4,096 bytes free)" in str(info.value) and info.value.exit_code == 2


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    from compiler.rundir import WriteError, atomic_write_bytes

    target = tmp_path / "history.csv"
    target.write_text("epoch\n0\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(WriteError) as info:
            atomic_write_bytes(target, b"x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert f"cannot write {target}: File too large" in str(info.value) and info.value.exit_code == 1
    assert target.read_text() == "epoch\n0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"], "a temporary file was left"

    with pytest.raises(WriteError) as info:
        atomic_write_bytes(target / "inside", b"x")          # under a regular file: ENOTDIR
    assert f"cannot write {target / 'inside'}: {target} is a file, not a folder" in str(info.value)


def test_resume_removes_only_half_written_files(tmp_path):
    from compiler.rundir import claim

    run = tmp_path / "run"
    claim(run, resume=False).release()                              # a kspec run (its marker)
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text("kspec: 1\n")
    leftovers = [run / "checkpoints" / ".last.keras.kspec.tmp.keras", run / ".metrics.json.kspec.tmp",
                 run / "checkpoints" / "tmpq8w7e6r5"]                # Keras's NamedTemporaryFile (empty)
    for path in leftovers[:2]:
        path.write_bytes(b"half")
    leftovers[2].write_bytes(b"")
    (run / "checkpoints" / "tmpz9x8c7v6").mkdir()                   # Keras's extraction folder
    (run / "checkpoints" / "tmpz9x8c7v6" / "model.weights.h5").write_bytes(b"half")
    kept = [run / "notes.txt", run / "tmp_notes.txt", run / ".hidden", run / "checkpoints" / "last.keras",
            run / ".notes.txt.a1b2c3d4.tmp", run / "checkpoints" / "tmpabcdefgh"]   # not kspec's exact names
    for path in kept:
        path.write_text("mine")
    claim(run, resume=True).release()
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in leftovers) and not (run / "checkpoints" / "tmpz9x8c7v6").exists()