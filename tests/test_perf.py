"""Issue 16/17 (perf): the precision choice, the typed resume state and where a run starts, and the
checkpoint policy (deferred saves, kill -9 and resume, SIGTERM saving).

The precision tests run without TensorFlow: the CPU's support is simulated with KSPEC_CPU_BF16 and
a fake /proc/cpuinfo. The checkpoint tests train a real iris MLP in real `kspec train` processes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest

from compiler.distribute.strategy import Support, choose_precision, cpu_bf16_support
from compiler.spec.validate import load_spec
from compiler.train.state import ResumeState, Start, where_to_start

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# -- the precision choice ------------------------------------------------------------------------

def test_cpu_support_from_flags_and_the_environment(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert cpu_bf16_support({}, cpuinfo).available
    assert "avx512_bf16" in cpu_bf16_support({}, cpuinfo).why
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_bf16_support({}, cpuinfo).available
    assert cpu_bf16_support({"KSPEC_CPU_BF16": "1"}, cpuinfo).available          # simulate a CPU with it
    assert not cpu_bf16_support({"KSPEC_CPU_BF16": "0"}, ROOT / "no-such-file").available
    assert not cpu_bf16_support({}, tmp_path / "missing").available            # unknown: float32


@pytest.mark.parametrize("example, with_bf16", [
    ("digits_cnn.yaml", "mixed_bfloat16"),          # convolutional classifier: bfloat16
    ("deep_residual.yaml", "float32"),              # dense layers only
    ("iris_mlp.yaml", "float32"),                   # tiny MLP
    ("lstm_forget_bias.yaml", "float32"),           # recurrent
    ("sort.yaml", "float32"),                       # regression target
    ("autoencoder.yaml", "float32"),                # regression, and an activity_regularizer
    ("segmentation_shapes.yaml", "float32"),        # convolutions, but a per-pixel classifier
])
def test_auto_precision_rule(example, with_bf16):
    spec = load_spec(EXAMPLES / example)
    yes, no = Support(True, "simulated"), Support(False, "simulated")
    assert choose_precision(spec.train, spec.model, spec.data, gpus=[], cpu=yes).policy == with_bf16
    assert choose_precision(spec.train, spec.model, gpus=[], cpu=no).policy == "float32"
    assert choose_precision(spec.train, spec.model, gpus=[(8, 0)], cpu=yes).policy == "mixed_float16"
    assert choose_precision(spec.train, spec.model, gpus=[(6, 1)], cpu=yes).policy == "float32"
    none = load_spec(EXAMPLES / example, ["train.mixed_precision=none"])
    assert choose_precision(none.train, none.model, gpus=[], cpu=yes).policy == "float32"
    forced = load_spec(EXAMPLES / example, ["train.mixed_precision=mixed_bfloat16"])
    assert choose_precision(forced.train, forced.model, gpus=[], cpu=no).policy == "mixed_bfloat16"
    choice = choose_precision(spec.train, spec.model, gpus=[], cpu=yes)
    assert choice.setting == "auto" and choice.why and choice.to_json()["policy"] == choice.policy


# -- the resume state and where a run starts --------------------------------------------------------

def test_resume_state_round_trip_and_damage():
    state = ResumeState(epoch_done=7, phase=1, phase_name="all", phase_start=5, phase_epochs=20, best_value=0.25,
                        best_epoch=6, callbacks={"0:ReduceLROnPlateau": {"wait": 2}}, save_best=True)
    assert ResumeState.from_json(json.loads(json.dumps(state.to_json()))) == \
        ResumeState(**{**state.to_json()})
    assert ResumeState.from_json({"epoch_done": 3}) == ResumeState(epoch_done=3)     # older files: defaults
    for bad in (None, [], {"epoch_done": "3"}, {"epoch_done": -1}, {"epoch_done": 2.5}, {"finished": "yes"},
                {"epoch_done": True}, {"callbacks": [1]}, {"best_value": "x"}):
        assert ResumeState.from_json(bad) is None, bad


def S(**kw) -> ResumeState:
    return ResumeState(**kw)


# (state, phase lengths in the spec) -> (phase, start, done, fresh_phase, restores callbacks)
TABLE = [
    (None, [10], (0, 0, 0, True, False)),                                            # fresh run
    (S(epoch_done=0), [10], (0, 0, 0, False, True)),                                 # killed in epoch 0
    (S(epoch_done=4), [10], (0, 0, 4, False, True)),                                 # mid phase: continue it
    (S(epoch_done=10, phase_epochs=10), [10], (1, 10, 10, True, False)),             # last epoch done
    (S(epoch_done=10), [10, 5], (1, 10, 10, True, False)),                           # next phase begins
    (S(epoch_done=6, phase_finished=True), [10, 5], (1, 6, 6, True, False)),         # EarlyStopping ended it
    (S(epoch_done=12, phase=1, phase_start=10), [10, 5], (1, 10, 12, False, True)),  # inside phase 2
    (S(epoch_done=10), [10, 5, 3], (1, 10, 10, True, False)),
    (S(epoch_done=10), [20], (0, 0, 10, False, True)),                               # the spec added epochs
    (S(epoch_done=8), [5], (1, 8, 8, True, False)),                                  # ... or removed some
    (S(epoch_done=7, phase=3, phase_start=5), [5, 5], (4, 7, 7, True, False)),       # phase no longer in spec
]


@pytest.mark.parametrize("state, phases, expected", TABLE)
def test_where_to_start(state, phases, expected):
    if state is not None:
        state.callbacks = {"0:EarlyStopping": {"wait": 1}}
    start = where_to_start(state, phases)
    phase, first, done, fresh, restores = expected
    assert (start.phase, start.start, start.done, start.fresh_phase) == (phase, first, done, fresh)
    assert (start.restore == {"0:EarlyStopping": {"wait": 1}}) is restores
    assert not start.nothing_to_do


def test_a_finished_run_has_nothing_to_do():
    assert where_to_start(S(epoch_done=10, finished=True), [10]).nothing_to_do
    assert isinstance(where_to_start(None, [1]), Start)


# -- the checkpoint policy (real training processes) -------------------------------------------------

SPEC = """\
kspec: 1
name: iris-checkpoints
seed: 0
data:
  source: {sklearn: iris}
  split: {validation: 0.2, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    x: {shape: [4]}
  layers:
    - Dense: {units: 16, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: species
train:
  optimizer: {Adam: {learning_rate: 0.01}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: %(batch)d
  epochs: %(epochs)d
  checkpoint: {every_seconds: %(every)s}
"""


def write_spec(tmp_path: Path, epochs: int, every: float, batch: int = 8) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC % {"epochs": epochs, "every": every, "batch": batch})
    return spec


@pytest.fixture(scope="module")
def procs():
    from kspec_procs import Procs

    server = Procs()            # one TensorFlow import for every process of these tests
    yield server
    server.close()


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def epochs_in(run: Path) -> list[int]:
    try:
        with open(run / "history.csv", newline="") as f:
            return [int(row["epoch"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


def checkpoint_epoch(run: Path) -> int:
    with zipfile.ZipFile(run / "checkpoints" / "last.keras") as archive:
        return json.loads(archive.read("kspec_state.json"))["epoch_done"]


def start_and_wait(procs, spec: Path, run: Path, rows: int):
    process = procs.start(["train", spec, "--run-dir", run, "--verbose", "2"], env=env())
    deadline = time.monotonic() + 180
    while len(epochs_in(run)) < rows:
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) early:\n{process.stderr}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("training did not reach the kill point in time")
        time.sleep(0.02)
    return process


def resume(procs, spec: Path, run: Path) -> str:
    result = procs.run(["train", spec, "--run-dir", run, "--resume", "--verbose", "2"], timeout=300, env=env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def check_complete(run: Path, epochs: int) -> None:
    assert epochs_in(run) == list(range(epochs)), "each epoch exactly once"
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["finished"] and state["epoch_done"] == epochs
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == epochs and metrics["precision"]["policy"] == "float32"


@pytest.mark.slow
def test_deferred_checkpoints_kill_9_and_resume(procs, tmp_path):
    """Tiny epochs and a long interval: the checkpoint stays at epoch 0 while history.csv grows; kill -9
    loses the unsaved epochs (the documented policy), resume redoes exactly those, none twice."""
    epochs = 120
    spec, run = write_spec(tmp_path, epochs, every=3600), tmp_path / "run"
    process = start_and_wait(procs, spec, run, rows=20)
    assert checkpoint_epoch(run) == 0                     # no save since the initial checkpoint
    process.kill()
    assert process.returncode == -signal.SIGKILL
    assert len(epochs_in(run)) >= 20
    out = resume(procs, spec, run)
    assert "epoch 1/" in out and "epoch 2/" in out        # restarted from the epoch-0 checkpoint
    check_complete(run, epochs)


@pytest.mark.slow
def test_sigterm_saves_the_last_finished_epoch_then_resume(procs, tmp_path):
    epochs = 120
    spec, run = write_spec(tmp_path, epochs, every=3600), tmp_path / "run"
    process = start_and_wait(procs, spec, run, rows=15)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    err = process.stderr
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted" in err
    saved = checkpoint_epoch(run)
    assert saved >= 15                                    # the deferred epochs were written on SIGTERM
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["epoch_done"] == saved and not state["finished"]
    # The best epoch (which the policy did not save when it happened) is in best.keras.
    with zipfile.ZipFile(run / "checkpoints" / "best.keras") as archive:
        best = json.loads(archive.read("kspec_state.json"))
    assert best["epoch_done"] == state["best_epoch"] + 1
    out = resume(procs, spec, run)
    assert f"epoch {saved + 1}/" in out and f"epoch {saved}/" not in out   # continued after the saved one
    check_complete(run, epochs)


@pytest.mark.slow
def test_every_epoch_policy_saves_each_epoch(procs, tmp_path):
    spec, run = write_spec(tmp_path, 6, every=0), tmp_path / "run"
    process = start_and_wait(procs, spec, run, rows=3)
    deadline = time.monotonic() + 10
    while checkpoint_epoch(run) < 3 and time.monotonic() < deadline:     # saved right after its row
        time.sleep(0.02)
    assert checkpoint_epoch(run) >= 3
    assert process.wait(timeout=120) == 0
    check_complete(run, 6)


# -- start-up: scikit-learn's data and split without importing scikit-learn -------------------------------

@pytest.mark.parametrize("name", ["iris", "wine", "digits"])
def test_bundled_data_sets_match_scikit_learn(name):
    import numpy as np
    import sklearn.datasets

    from compiler.data import bundled

    ours, theirs = bundled.load(name), getattr(sklearn.datasets, f"load_{name}")()
    assert ours is not None
    np.testing.assert_array_equal(ours.data, theirs.data)
    np.testing.assert_array_equal(ours.target, theirs.target)
    assert [str(n) for n in ours.target_names] == [str(n) for n in theirs.target_names]
    assert list(ours.feature_names) == list(theirs.feature_names)


def test_stratified_split_is_scikit_learns():
    import numpy as np
    from sklearn.model_selection import train_test_split as sk_split

    from compiler.data.stratify import train_test_split

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(6, 300))
        labels = rng.integers(0, int(rng.integers(2, 6)), n)
        index = rng.permutation(n) + 1000
        count, seed = int(rng.integers(1, n)), int(rng.integers(0, 2**31))
        try:
            expected = sk_split(index, test_size=count, stratify=labels, random_state=seed)
        except ValueError:
            with pytest.raises(ValueError):
                train_test_split(index, count, labels, seed)
            continue
        kept, held = train_test_split(index, count, labels, seed)
        np.testing.assert_array_equal(kept, expected[0], err_msg=f"trial {trial}")
        np.testing.assert_array_equal(held, expected[1], err_msg=f"trial {trial}")


def test_loading_iris_does_not_import_scikit_learn():
    code = ("import sys; from compiler.spec.validate import load_spec; from compiler.data import load_splits; "
            "s = load_spec('examples/iris_mlp.yaml'); sp = load_splits(s.data, s.model, s.seed); "
            "print(len(sp.train), len(sp.validation), len(sp.test), 'sklearn' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False", out.stdout


def test_a_backbone_alone_keeps_float32(tmp_path):
    spec = tmp_path / "backbone.yaml"
    spec.write_text("""\
kspec: 1
name: backbone-precision
data: {source: {synthetic: blobs, n: 20}}
model:
  inputs: {image: {shape: [32, 32, 3]}}
  layers:
    - Backbone: {application: MobileNetV3Small, weights: null, include_top: false, pooling: avg}
    - Dense: {units: 3, activation: softmax}
  outputs: [dense]
train: {loss: sparse_categorical_crossentropy}
""")
    loaded = load_spec(spec)
    choice = choose_precision(loaded.train, loaded.model, gpus=[], cpu=Support(True, "simulated"))
    assert choice.policy == "float32" and "no convolution" in choice.why


# -- start-up and the end of a run: work nobody asked for is skipped ---------------------------------

def test_import_tensorflow_hides_what_keras_would_import_for_nothing_and_freezes_the_gc():
    """`import_tensorflow` leaves scikit-learn and pyplot unimported (Keras's optional imports), puts them
    back for later imports, and freezes the import's objects out of the cyclic GC, which stays enabled."""
    code = ("import gc, sys; from compiler.cli import import_tensorflow; import_tensorflow(); "
            "print('sklearn' in sys.modules, 'matplotlib.pyplot' in sys.modules, gc.isenabled(), gc.get_freeze_count()); "
            "import sklearn.datasets, matplotlib.pyplot, keras; print(keras.ops.sum(keras.ops.ones(3)).numpy())")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180,
                         env={**env(), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    sklearn, pyplot, enabled, frozen = first.split()
    assert (sklearn, pyplot, enabled) == ("False", "False", "True") and int(frozen) > 100_000, out.stdout
    assert float(second) == 3.0


def test_best_weights_are_reloaded_only_when_the_model_may_not_hold_them():
    from types import SimpleNamespace

    from compiler.train.run import _holds_best

    def recorder(best_epoch, *callbacks):
        return SimpleNamespace(rows=[{"epoch": 0}, {"epoch": 1}, {"epoch": 2}], best_epoch=best_epoch,
                               stateful={str(i): cb for i, cb in enumerate(callbacks)})

    assert _holds_best(recorder(2))                                          # the last epoch is the best
    assert not _holds_best(recorder(1))                                      # an earlier one: load best.keras
    assert not _holds_best(recorder(2, SimpleNamespace(restore_best_weights=True)))   # EarlyStopping may restore
    assert _holds_best(recorder(2, SimpleNamespace(restore_best_weights=False)))
    assert not _holds_best(SimpleNamespace(rows=[], best_epoch=None, stateful={}))


def test_model_keras_holds_the_best_epoch(procs, tmp_path):
    """keep: best, whether or not the best epoch is the last: model.keras has best.keras's weights."""
    import numpy as np

    import keras

    # 8 epochs on the training loss: the last is the best (not reloaded); 30 on val_accuracy: an earlier one.
    for monitor, epochs, best_is_last in (("loss", 8, True), ("val_accuracy", 30, False)):
        spec, run = write_spec(tmp_path, epochs, every=0), tmp_path / f"run-{monitor}"
        result = procs.run(["train", spec, "--run-dir", run, "--verbose", "0", "--set", f"train.monitor={monitor}"],
                           timeout=300, env=env())
        assert result.returncode == 0, result.stdout + result.stderr
        assert (json.loads((run / "metrics.json").read_text())["best_epoch"] == epochs - 1) == best_is_last

        final = keras.saving.load_model(run / "model.keras", compile=False).get_weights()
        best = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(final, best))


def test_the_in_memory_pipeline_runs_without_tf_data_autotuning():
    """README "CPU speed", session 4: with tf.data's model autotuning on, an epoch's first batch
    stalled ~1.2 s in a third to a half of the epochs; the in-memory pipeline has nothing to tune."""
    import numpy as np

    from compiler.data.pipeline import make_dataset
    from compiler.data.split import Arrays

    arrays = Arrays({"x": np.arange(20, dtype=np.float32).reshape(10, 2)}, {"y": np.arange(10)})
    for shuffle in (True, False):
        ds = make_dataset(arrays, 4, shuffle=shuffle, seed=0)
        assert ds.options().autotune.enabled is False
        assert sorted(int(v) for _, y in ds for v in y) == list(range(10))     # every example, once
