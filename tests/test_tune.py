"""`kspec tune` (issue 14): the `search:` section, and real studies of real `kspec train` processes.

The studies are iris with a few epochs and 2-4 trials; each trial is a real `python -m compiler
train` process, so the studies are marked slow (each trial is a TensorFlow start-up).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from compiler.rundir import read_embedded_state

ROOT = Path(__file__).resolve().parents[1]
IRIS = ROOT / "examples" / "iris_base.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "TF_CPP_MIN_LOG_LEVEL": "3", "KSPEC_TUNE_NO_HPARAMS": "1"}

pytest.importorskip("optuna")


def write(folder: Path, name: str, search: str, extra: str = "") -> Path:
    path = folder / name
    path.write_text(f"kspec: 1\nextends: {IRIS}\nname: {path.stem}\n{extra}search:\n{search}")
    return path


def kspec(*args, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def start(*args, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(study: Path) -> list[dict]:
    return list(csv.DictReader((study / "trials.csv").open()))


def journal_trials(study: Path, name: str, url: str | None = None) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    journal = str(study / "study.journal")
    storage = url.replace("postgresql://", "postgresql+psycopg2://") if url else optuna.storages.JournalStorage(
        JournalFileBackend(journal, lock_obj=JournalFileOpenLock(journal)))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


# -- the search section: validation -----------------------------------------------------------

BAD = """\
  objective: {metric: val_acuracy}
  sampler: tpe
  parameters:
    train.optimizer.SGD.learning_rate: {float: [1.0, 0.1]}
    train.batch_size: {int: [0, 8], log: true}
    model.layers[0].Dense.unitz: {int: [4, 8]}
    train.nothere.x: {choice: [1, 2]}
    model.inputs.measurements.shape: {choice: [[4], [4, 1, 0]]}
"""


def test_validate_locates_every_search_error_without_optuna_or_tensorflow(tmp_path):
    spec = write(tmp_path, "bad.yaml", BAD)
    code = ("import sys; from compiler.cli import main; rc = main(['validate', sys.argv[1]]); "
            "print('IMPORTED', [m for m in ('optuna', 'tensorflow', 'keras') if m in sys.modules]); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(spec)], cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "IMPORTED []" in result.stdout
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    where = {line.split(": error: ")[0]: line for line in errors}
    f = str(spec)
    assert "'val_acuracy' is not a metric this spec logs" in where[f"{f}:5:23"]
    assert "did you mean 'val_accuracy'" in where[f"{f}:5:23"]
    assert "not in order" in where[f"{f}:8:40"]
    assert "positive low bound" in where[f"{f}:9:23"]
    assert "unknown argument 'unitz'" in where[f"{f}:10:34"]          # the spec, set at the bounds
    assert "'train.nothere' does not exist" in where[f"{f}:11:5"]
    assert "shape=[4, 1, 0]: " in where[f"{f}:12:38"]                 # the one choice that does not validate
    assert len(errors) == 6, result.stderr


def test_schema_errors_in_search_are_located(tmp_path):
    spec = write(tmp_path, "bad.yaml", "  objective: {metric: val_loss}\n  sampler: tpee\n"
                                       "  pruner: {median: {warm: 1}}\n  parameters:\n"
                                       "    train.epochs: {int: [1.5, 3]}\n")
    result = kspec("validate", spec, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{spec}:6:12: error: 'tpee' is not allowed here; did you mean 'tpe'?" in result.stderr
    assert f"{spec}:7:21: error: unknown key 'warm'" in result.stderr
    assert f"{spec}:9:26: error: expected a whole number, got 1.5" in result.stderr


def test_a_path_under_a_searched_choice_is_valid_and_used_only_when_chosen(tmp_path):
    """The issue's example: the Adam learning rate is searched, and so is the optimizer itself."""
    from compiler.spec.validate import load_spec
    from compiler.tune.space import active, base_tree

    spec_path = write(tmp_path, "opt.yaml", """\
  objective: {metric: val_accuracy, direction: maximize}
  parameters:
    train.optimizer.Adam.learning_rate: {float: [1.0e-4, 1.0e-1], log: true}
    train.optimizer: {choice: [{Adam: {}}, {SGD: {momentum: 0.9}}]}
""")
    search = load_spec(spec_path).search
    assert [p.path for p in search.parameters][1] == "train.optimizer"
    for choice, expected in (({"SGD": {"momentum": 0.9}}, ["train.optimizer"]),
                             ({"Adam": {}}, ["train.optimizer", "train.optimizer.Adam.learning_rate"])):
        values = active(search.parameters, base_tree(spec_path, []), {"train.optimizer": choice},
                        ask=lambda p: 0.01)
        assert list(values) == expected
        sets = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        trained = load_spec(spec_path, sets).train.optimizer      # what the trial's `kspec train` gets
        assert trained.name == next(iter(choice))
        assert trained.args.get("learning_rate") == (0.01 if "Adam" in choice else None)


# -- studies ------------------------------------------------------------------------------------

LR = """\
  objective: {metric: val_accuracy, direction: maximize}
  trials: 3
  sampler: random
  parameters:
    train.optimizer.SGD.learning_rate: {float: [0.05, 0.5], log: true}
    train.batch_size: {choice: [16, 32]}
"""


@pytest.mark.slow
def test_a_study_end_to_end_in_parallel(tmp_path):
    spec = write(tmp_path, "lr.yaml", LR, extra="train: {epochs: 3}\n")
    env = {k: v for k, v in ENV.items() if k != "KSPEC_TUNE_NO_HPARAMS"}
    result = kspec("tune", spec, "--parallel", "2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    study = tmp_path / "runs" / "lr-study"
    table = rows(study)
    assert [r["number"] for r in table] == ["0", "1", "2"] and {r["state"] for r in table} == {"COMPLETE"}
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["000", "001", "002"]
    progress = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(progress) == 3 and all("val_accuracy=" in line and "best val_accuracy=" in line for line in progress)
    for r in table:                          # each trial is an ordinary run of the values it was given
        run = study / r["run"]
        trained = json.loads((run / "metrics.json").read_text())
        assert float(r["val_accuracy"]) == pytest.approx(trained["validation"]["accuracy"])
        assert f"learning_rate: {float(r['train.optimizer.SGD.learning_rate'])!r}" in (run / "spec.yaml").read_text()
    best = max(table, key=lambda r: float(r["val_accuracy"]))
    assert os.readlink(study / "best") == best["run"]
    for png in ("optimization_history.png", "parameters.png"):
        assert (study / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((study / "tensorboard").rglob("events.out.tfevents.*"))
    assert "search" not in (study / "best.yaml").read_text()

    compared = kspec("compare", study, "-o", tmp_path / "compare.png", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert all(r["number"].zfill(3) in compared.stdout for r in table)

    again = kspec("train", study / "best.yaml", "--run-dir", tmp_path / "again", "--verbose", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    ours = json.loads((tmp_path / "again" / "metrics.json").read_text())
    theirs = json.loads((study / "best" / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        for name, value in theirs[split].items():
            assert ours[split][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, name)


@pytest.mark.slow
def test_pruned_and_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    pruner = "  pruner: {median: {startup_trials: 1, warmup_epochs: 1}}\n"
    head = "  objective: {metric: val_loss, direction: minimize}\n" + pruner + "  parameters:\n"
    extra = "train: {epochs: 20}\n"
    good = write(tmp_path, "good.yaml", head + "    train.optimizer.SGD.learning_rate: {float: [0.5, 0.5]}\n", extra)
    slow = write(tmp_path, "slow.yaml", head + "    train.optimizer.SGD.learning_rate: {float: [1.0e-7, 1.0e-7]}\n",
                 extra)
    bad = write(tmp_path, "bad.yaml", head + "    model.inputs.measurements.shape: {choice: [[5]]}\n", extra)
    first = kspec("tune", good, "--study", "s", "--trials", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # Two more processes share the study (its journal file): one trial each, the total holds.
    procs = [start("tune", spec, "--study", "s", "--trials", "3", cwd=tmp_path) for spec in (slow, bad)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = tmp_path / "runs" / "s-study"
    table = {r["number"]: r for r in rows(study)}
    assert len(table) == 3 and len(journal_trials(study, "s")) == 3
    states = {r.get("train.optimizer.SGD.learning_rate") or r["model.inputs.measurements.shape"]: r["state"]
              for r in table.values()}
    assert states == {"0.5": "COMPLETE", "1e-07": "PRUNED", "[5]": "FAIL"}
    pruned = next(r for r in table.values() if r["state"] == "PRUNED")
    epochs = len((study / pruned["run"] / "history.csv").read_text().splitlines()) - 1
    assert 2 <= epochs < 20                                       # stopped early, not trained to the end
    failed = next(r for r in table.values() if r["state"] == "FAIL")
    assert "measurements" in failed["error"] and "error:" in failed["error"]
    assert failed["error"].strip() in (study / failed["run"] / "error.txt").read_text()
    assert os.readlink(study / "best") == "trials/000"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _epochs_done(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "state.json").read_text())["epoch_done"]
    except (OSError, ValueError, KeyError):
        return 0


def _epochs_saved(run: Path) -> int:
    """Epochs a resume continues after: a kill between last.keras and state.json leaves the
    checkpoint's embedded state one epoch ahead, and resume takes the newer (RunDir.read_state)."""
    embedded = read_embedded_state(run / "checkpoints" / "last.keras") or {}
    return max(_epochs_done(run), int(embedded.get("epoch_done", 0)))


def _wait(predicate, timeout: float = 300, what: str = ""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the trial process through /proc")
def test_kill_9_of_a_trial_and_of_the_tuner_then_resume(tmp_path):
    epochs = 40
    spec = write(tmp_path, "k.yaml", "  objective: {metric: val_accuracy}\n  trials: 2\n  parameters:\n"
                                     "    train.optimizer.SGD.learning_rate: {choice: [0.1, 0.2]}\n",
                 extra=f"train: {{epochs: {epochs}, checkpoint: {{every_seconds: 0}}}}\n")   # a checkpoint per epoch: the test kills between them
    study = tmp_path / "runs" / "k-study"
    run = study / "trials" / "000"
    tuner = start("tune", spec, cwd=tmp_path)
    try:
        _wait(lambda: _epochs_done(run) >= 3, what="trial 0's third checkpoint")
        trial_pid, = _children(tuner.pid)
        os.kill(trial_pid, signal.SIGKILL)                         # one trial dies: the tuner continues it
        _wait(lambda: [p for p in _children(tuner.pid) if p != trial_pid], what="trial 0 continued")
        reached = _epochs_done(run)
        _wait(lambda: _epochs_done(run) > reached + 2, what="trial 0 training on")
        assert _epochs_done(run) < epochs
        second, = _children(tuner.pid)
        os.kill(tuner.pid, signal.SIGKILL)                         # the tuner dies: its trial with it
        tuner.wait(timeout=30)
        _wait(lambda: not Path(f"/proc/{second}").exists() or "zombie" in Path(f"/proc/{second}/status").read_text()
              .lower(), timeout=30, what="the trial to die with the tuner")
        killed_at = _epochs_saved(run)
    finally:
        if tuner.poll() is None:
            tuner.kill()
    result = kspec("tune", spec, "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trial 0: continuing it" in result.stdout
    table = rows(study)
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE"] and len(journal_trials(study, "k")) == 2
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["000", "001"]
    history = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert history == list(range(epochs))                          # every epoch once: continued, not redone
    log = (study / "logs" / "000.out").read_text()
    assert log.count(f"epoch 1/{epochs} ") == 1                    # started from scratch once only
    assert f"epoch {killed_at + 1}/{epochs} " in log.split("epoch 1/")[1]
    assert "training from the beginning" not in log


# -- PostgreSQL: two processes, one study -------------------------------------------------------

def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a loopback port (initdb + pg_ctl in a temporary folder)."""
    pytest.importorskip("psycopg2")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb); .ci/run installs Debian's postgresql package")
    folder = Path(tempfile.mkdtemp(prefix="kspec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:                                         # initdb refuses to run as root
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"
    subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-U", "kspec", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                              f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}",
                              "start"], check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql://kspec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_processes_opening_a_new_postgresql_storage_at_once_all_get_it(tmp_path, postgres):
    """The first opens of an empty database race to create Optuna's tables and types; the losers
    retry (SCHEMA_RACE_ERRORS) instead of failing with PostgreSQL's duplicate-object error."""
    code = ("import sys, time; from pathlib import Path; from compiler.tune.study import storage\n"
            "while time.time() < float(sys.argv[1]): time.sleep(0.001)\n"
            "storage(sys.argv[2], Path('.')); print('opened')")
    at = time.time() + 4.0                                          # all processes start creating together
    procs = [subprocess.Popen([sys.executable, "-c", code, str(at), postgres], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    assert all(out.strip() == "opened" for out, _ in outputs)


@pytest.mark.slow
def test_two_processes_share_one_study_on_postgresql(tmp_path, postgres):
    spec = write(tmp_path, "pg.yaml", LR.replace("trials: 3", "trials: 3\n  storage: " + postgres),
                 extra="train: {epochs: 2}\n")
    one, two = tmp_path / "one", tmp_path / "two"                # two "machines": two working directories
    one.mkdir(), two.mkdir()
    procs = [start("tune", spec, cwd=cwd) for cwd in (one, two)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = journal_trials(tmp_path, "pg", url=postgres)
    assert len(trials) == 3 and {t.state.name for t in trials} == {"COMPLETE"}
    ran = [len([line for line in out.splitlines() if line.startswith("trial ")]) for out, _ in outputs]
    assert sum(ran) == 3 and min(ran) >= 1, outputs                 # both processes ran trials, 3 in all
    for cwd in (one, two):                                          # each machine's report shows the whole study
        assert len(rows(cwd / "runs" / "pg-study")) == 3


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the trial process through /proc")
def test_a_stale_trial_of_a_dead_tuner_is_taken_over_by_its_heartbeat(tmp_path):
    """Another tuner (no --resume) continues the RUNNING trial whose heartbeat stopped: a dead machine's."""
    epochs = 30
    spec = write(tmp_path, "h.yaml", "  objective: {metric: val_accuracy}\n  trials: 1\n  parameters:\n"
                                     "    train.optimizer.SGD.learning_rate: {choice: [0.1]}\n",
                 extra=f"train: {{epochs: {epochs}, checkpoint: {{every_seconds: 0}}}}\n")   # a checkpoint per epoch: the test kills between them
    run = tmp_path / "runs" / "h-study" / "trials" / "000"
    tuner = start("tune", spec, cwd=tmp_path, env={**ENV, "KSPEC_TUNE_HEARTBEAT_S": "1"})
    try:
        _wait(lambda: _epochs_done(run) >= 2, what="trial 0's second checkpoint")
        os.kill(tuner.pid, signal.SIGKILL)
        tuner.wait(timeout=30)
    finally:
        if tuner.poll() is None:
            tuner.kill()
    started = time.time()
    result = kspec("tune", spec, cwd=tmp_path, env={**ENV, "KSPEC_TUNE_STALE_S": "4"})
    assert result.returncode == 0, result.stderr
    assert "trial 0: continuing it" in result.stdout and time.time() - started > 4
    assert [r["state"] for r in rows(tmp_path / "runs" / "h-study")] == ["COMPLETE"]
    history = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert history == list(range(epochs))
