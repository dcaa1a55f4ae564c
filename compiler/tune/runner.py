"""`kspec tune`: ask Optuna for values, run each trial as a `kspec train` process, tell Optuna the result.

Each trial is exactly `python -m compiler train SPEC --set PATH=VALUE ... --run-dir STUDY/trials/NNN`:
memory does not grow across trials and a crash kills one trial only. Up to `--parallel K` run at
once; one loop (no threads) polls them:

- pruning: each new row of the trial's history.csv is reported to Optuna (step = epoch); when the
  pruner says so the trial gets SIGTERM (SIGKILL 10 s later) and is told PRUNED;
- a trial that exits non-zero is FAILED with the last lines of its stderr (trials.csv, error.txt);
- a trial killed by SIGKILL (kill -9, the OOM killer) is continued with `kspec train --resume` on its
  run directory, at most MAX_RESTARTS times;
- when the study has all its trials but some still run in other processes, this one waits for them
  (they finish, or go stale and it takes them over), so that its reports cover the whole study;
- every trial this process runs has a heartbeat (a user attribute, rewritten every HEARTBEAT_S):
  a RUNNING trial whose heartbeat is older than STALE_S belongs to a dead process or machine and is
  taken over (`--resume` also takes over at once those of dead processes on this machine), and
  continued from its checkpoint: it is not started over and not counted twice.

The trial budget (`trials`) is the number of trials in the study, across every process: a new
trial is asked under a lock file in the study directory, and one that a process on another
machine asked past the budget is marked surplus (failed, never run, left out of every report).
The trial processes die with the tuner (PR_SET_PDEATHSIG), so a kill -9 of it leaves no orphan
writing into a run directory that a `--resume` continues.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Diagnostic
from ..rundir import HISTORY, METRICS
from ..train.history import read_history
from . import report
from .space import Param, SearchSpec, active, base_tree, decode, encode
from .study import TuneError

HEARTBEAT_S = float(os.environ.get("KSPEC_TUNE_HEARTBEAT_S", 5))
STALE_S = float(os.environ.get("KSPEC_TUNE_STALE_S", 60))
POLL_S = 0.25
TAKEOVER_S = 2.0
TERM_GRACE_S = 10.0
MAX_RESTARTS = 2
ERROR_LINES = 12
ERROR_FILE = "error.txt"
LOCK_FILE = "ask.lock"
TRIALS = "trials"
LOGS = "logs"

# User attributes kspec keeps on each Optuna trial.
SETS, OWNER, BEAT, ERROR, SURPLUS = "kspec.set", "kspec.owner", "kspec.heartbeat", "kspec.error", "kspec.surplus"


@dataclass
class Running:
    number: int
    trial: Any                      # optuna.trial.Trial
    proc: subprocess.Popen
    run_dir: Path
    sets: list[str]
    started: float
    err_offset: int
    reported: int = -1
    beat: float = 0.0
    restarts: int = 0
    pruned: bool = False
    term_at: float | None = None
    history_mtime: float = 0.0


@dataclass
class Tuner:
    spec_path: str
    search: SearchSpec
    study: Any                      # optuna.Study
    study_dir: Path
    total: int
    parallel: int = 1
    overrides: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    resume: bool = False
    me: dict = field(default_factory=lambda: {"host": os.uname().nodename, "pid": os.getpid()})
    running: dict[int, Running] = field(default_factory=dict)
    finished: int = 0

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        (self.study_dir / TRIALS).mkdir(parents=True, exist_ok=True)
        (self.study_dir / LOGS).mkdir(exist_ok=True)
        self._base = base_tree(self.spec_path, self.overrides)
        exhausted = False
        try:
            next_look, waiting = 0.0, False
            while True:
                if len(self.running) < self.parallel and time.time() >= next_look:
                    self._take_over()               # a dead process's trial first (looked for every TAKEOVER_S)
                    next_look = time.time() + TAKEOVER_S
                while len(self.running) < self.parallel and not exhausted:
                    exhausted = not self._start_new()
                if not self.running:
                    if self._take_over():
                        continue
                    others = self._others_running()
                    if not others:
                        break
                    if not waiting:           # the study is not done until they are: finish, or go stale
                        print(f"waiting for {others} trial{'s' * (others > 1)} of other processes", flush=True)
                    waiting = True
                    time.sleep(TAKEOVER_S)
                    continue
                for number in list(self.running):
                    self._poll(self.running[number])
                time.sleep(POLL_S)
        finally:
            for r in self.running.values():     # Ctrl-C: the trials stay RUNNING; --resume continues them
                with contextlib.suppress(OSError):
                    r.proc.kill()
                    r.proc.wait()

    def _start_new(self) -> bool:
        """Ask Optuna for the next trial and start it; False when the study has its `trials`."""
        optuna = sys.modules["optuna"]
        with self._lock():
            if len(self.study.get_trials(deepcopy=False)) >= self.total:
                return False
            trial = self.study.ask()
            if trial.number >= self.total:      # another machine asked first: never run, never reported
                trial.set_user_attr(SURPLUS, True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return False
            try:
                values = active(self.search.parameters, copy.deepcopy(self._base), ask=lambda p: _suggest(trial, p))
            except ValueError as exc:      # Optuna refused a value space: the trial is never run
                trial.set_user_attr(ERROR, f"Optuna: {exc}")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise TuneError(Diagnostic(f"trial {trial.number}: Optuna cannot sample it: {exc}")) from None
            sets = [f"{path}={json.dumps(v)}" for path, v in values.items()]
            trial.set_user_attr(SETS, sets)
            self._claim(trial)
        self._launch(trial, sets, resume=False)
        return True

    def _take_over(self) -> bool:
        """Continue one RUNNING trial of a dead process (see the module docstring); True if one was."""
        optuna = sys.modules["optuna"]
        with self._lock():
            now = time.time()
            for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if frozen.number in self.running or frozen.number >= self.total:
                    continue
                owner = frozen.user_attrs.get(OWNER) or {}
                stale = now - float(frozen.user_attrs.get(BEAT, frozen.datetime_start.timestamp()
                                                           if frozen.datetime_start else 0)) > STALE_S
                dead_here = owner.get("host") == self.me["host"] and not _alive(int(owner.get("pid", 0)))
                if owner == self.me or not (stale or (self.resume and dead_here)):
                    continue
                if SETS not in frozen.user_attrs:     # its tuner died between asking and starting it
                    self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
                    continue
                trial = optuna.trial.Trial(self.study, frozen._trial_id)
                self._claim(trial)
                break
            else:
                return False
        run = self._launch(trial, list(frozen.user_attrs[SETS]), resume=True)
        run.reported = max(frozen.intermediate_values, default=-1)
        print(f"trial {frozen.number}: continuing it (its process is gone) from its checkpoint", flush=True)
        return True

    def _others_running(self) -> int:
        optuna = sys.modules["optuna"]
        return sum(t.number < self.total and not t.user_attrs.get(SURPLUS)
                   for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))

    def _claim(self, trial) -> None:
        trial.set_user_attr(OWNER, self.me)
        trial.set_user_attr(BEAT, time.time())

    # -- one trial process ----------------------------------------------------------------

    def _launch(self, trial, sets: list[str], resume: bool, restarts: int = 0) -> Running:
        number = trial.number
        run_dir = self.study_dir / TRIALS / f"{number:03d}"
        resume = resume and run_dir.is_dir()
        command = [sys.executable, "-m", "compiler", "train", self.spec_path]
        for text in [*self.overrides, *sets]:
            command += ["--set", text]
        for name in self.plugins:
            command += ["--plugin", name]
        command += ["--run-dir", str(run_dir), "--verbose", "2"] + (["--resume"] if resume else [])
        out_path, err_path = self._logs(number)
        offset = err_path.stat().st_size if err_path.exists() else 0
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent)
        run = Running(number, trial, proc, run_dir, sets, time.time(), offset, beat=time.time(), restarts=restarts)
        self.running[number] = run
        return run

    def _logs(self, number: int) -> tuple[Path, Path]:
        return self.study_dir / LOGS / f"{number:03d}.out", self.study_dir / LOGS / f"{number:03d}.err"

    def _poll(self, run: Running) -> None:
        code = run.proc.poll()
        now = time.time()
        if now - run.beat >= HEARTBEAT_S:
            run.trial.set_user_attr(BEAT, now)
            run.beat = now
        if not run.pruned:
            self._report_epochs(run)
        if run.pruned and code is None:
            if run.term_at is None:
                run.proc.terminate()
                run.term_at = now
            elif now - run.term_at > TERM_GRACE_S:
                run.proc.kill()
            return
        if code is not None:
            del self.running[run.number]
            self._finish(run, code)

    def _report_epochs(self, run: Running) -> None:
        path = run.run_dir / HISTORY
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == run.history_mtime:
            return
        run.history_mtime = mtime
        for row in read_history(path):
            epoch = int(row["epoch"])
            value = row.get(self.search.metric)
            if epoch <= run.reported or value is None or not math.isfinite(value):
                continue
            run.trial.report(value, epoch)
            run.reported = epoch
            if run.trial.should_prune():
                run.pruned = True
                return

    def _finish(self, run: Running, code: int) -> None:
        optuna = sys.modules["optuna"]
        State = optuna.trial.TrialState
        if run.pruned:
            self.study.tell(run.trial, state=State.PRUNED)
            self._done(run, "PRUNED", None)
            return
        if code == -signal.SIGKILL and run.restarts < MAX_RESTARTS:
            print(f"trial {run.number}: its process was killed (SIGKILL); continuing it from its checkpoint",
                  flush=True)
            self._launch(run.trial, run.sets, resume=True, restarts=run.restarts + 1).reported = run.reported
            return
        error = self._error_text(run, code) if code != 0 else None
        value = None
        if error is None:
            value = objective(run.run_dir, self.search.metric)
            if value is None:
                error = f"the trial finished but {self.search.metric} is not in its {METRICS} or {HISTORY}"
            elif not math.isfinite(value):
                error = f"the objective {self.search.metric} is {value}"
        if error is not None:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / ERROR_FILE).write_text(error + "\n")
            run.trial.set_user_attr(ERROR, error[-2000:])
            self.study.tell(run.trial, state=State.FAIL)
            self._done(run, "FAIL", None, error)
            return
        self.study.tell(run.trial, value)
        self._done(run, "COMPLETE", value)

    def _error_text(self, run: Running, code: int) -> str:
        _, err_path = self._logs(run.number)
        try:
            with open(err_path, "rb") as f:
                f.seek(run.err_offset)
                text = f.read()[-20000:].decode(errors="replace")
        except OSError:
            text = ""
        lines = [line for line in text.splitlines() if line.strip()][-ERROR_LINES:]
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return "\n".join(lines) if lines else f"kspec train ended with {how} and printed nothing on stderr"

    def _done(self, run: Running, state: str, value: float | None, error: str | None = None) -> None:
        self.finished += 1
        params = "  ".join(s for s in run.sets)
        result = f"{self.search.metric}={value:.6g}" if value is not None else state.lower()
        if error:
            result += ": " + error.splitlines()[-1][:200]
        best = report.best_trial(self.study, self.total)
        best_text = f"best {self.search.metric}={best.value:.6g} (trial {best.number})" if best else "no best yet"
        print(f"trial {run.number} {state.lower()} in {time.time() - run.started:.1f}s  {params}  -> {result}"
              f"  | {best_text}", flush=True)
        report.write_progress(self.study, self.search, self.study_dir, self.total)

    @contextlib.contextmanager
    def _lock(self):
        """One process at a time asks or takes over a trial: a lock file in the study directory, and on
        PostgreSQL an advisory lock of the study, which every machine sharing it takes."""
        import fcntl

        with open(self.study_dir / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                with self._database_lock():
                    yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _database_lock(self):
        engine = getattr(_rdb(self.study._storage), "engine", None)
        if engine is None or engine.dialect.name != "postgresql":
            yield
            return
        import zlib

        from sqlalchemy import text

        key = zlib.crc32(f"kspec tune {self.study.study_name}".encode())
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def _rdb(storage):
    """Optuna wraps an RDBStorage in a cache; the RDBStorage itself (or the storage as it is)."""
    return getattr(storage, "_backend", storage)


def _suggest(trial, param: Param) -> Any:
    if param.kind == "float":
        return trial.suggest_float(param.path, param.low, param.high, log=param.log, step=param.step)
    if param.kind == "int":
        return trial.suggest_int(param.path, int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return decode(param, trial.suggest_categorical(param.path, [encode(c) for c in param.choices]))


def objective(run_dir: Path, metric: str) -> float | None:
    """The objective of a finished trial: the saved model's metric (metrics.json: `val_x` is the validation
    split's `x`), or else the last epoch's value in history.csv."""
    try:
        metrics = json.loads((run_dir / METRICS).read_text())
    except (OSError, ValueError):
        metrics = {}
    split, name = ("validation", metric[4:]) if metric.startswith("val_") else ("train", metric)
    value = (metrics.get(split) or {}).get(name) if isinstance(metrics, dict) else None
    if isinstance(value, (int, float)):
        return float(value)
    rows = [r for r in read_history(run_dir / HISTORY) if metric in r]
    return rows[-1][metric] if rows else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the tuner dies (Linux), so no trial outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
