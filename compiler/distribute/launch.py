"""`kspec train SPEC --workers N`: N worker processes on this machine, one multi-worker cluster.

Each worker is `python -m compiler train SPEC --cluster 127.0.0.1:P0,...,127.0.0.1:PN-1
--worker-index I` plus the command's own --run-dir/--set/--plugin/--resume/--verbose;
the ports are free ones (bound to port 0, then released). Worker 0, the chief, writes
the run directory and its output is streamed as is; the others' output goes to log
files, shown (the last lines) only when a worker fails.

Supervision, polled every 50 ms:
- a worker exits with an error -> the others are stopped; exit status 1 (or the chief's
  own status when the chief is the one that failed: 2 for a bad spec or data);
- not every worker has created its strategy (joined the cluster) within the start-up
  timeout -> all are stopped; exit status 1. A worker whose peer never starts waits
  inside MultiWorkerMirroredStrategy's constructor and ignores SIGTERM there;
- the chief finished but another worker is still running after FINISH_TIMEOUT -> it is
  stopped; exit status 1.
"Stopped" is SIGTERM, then SIGKILL after STOP_GRACE seconds: every path ends in bounded
time. The workers run in their own sessions (a Ctrl-C reaches the launcher, which stops
them) and, on Linux, are killed by the kernel if the launcher itself dies.

A worker counts as started when it creates the file named by KSPEC_WORKER_READY
(strategy.signal_ready, right after the strategy's constructor returns).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from .cluster import free_ports
from .strategy import READY_ENV

START_TIMEOUT = 300.0      # seconds for every worker to import TensorFlow and join the cluster
STOP_GRACE = 5.0           # seconds between SIGTERM and SIGKILL
FINISH_TIMEOUT = 120.0     # seconds the other workers may run on after the chief has finished
START_TIMEOUT_ENV = "KSPEC_WORKER_START_TIMEOUT"
LOG_TAIL = 25              # lines of a failed worker's log shown


@dataclass
class Worker:
    index: int
    command: list[str]
    process: subprocess.Popen
    ready_file: Path
    log: Path | None = None
    returncode: int | None = None
    stopped: bool = False           # ended by the launcher
    ready: bool = False
    ended_at: float | None = None
    notes: list[str] = field(default_factory=list)

    def poll(self) -> int | None:
        if self.returncode is None:
            rc = self.process.poll()
            if rc is not None:
                self.returncode, self.ended_at = rc, time.monotonic()
        if not self.ready and self.ready_file.exists():
            self.ready = True
        return self.returncode


def launch_local(spec: str, worker_args: Sequence[str], workers: int, host: str = "127.0.0.1",
                 start_timeout: float | None = None, err: IO[str] | None = None) -> int:
    """Train `spec` with `workers` local processes; return the exit status for the command line."""
    ports = free_ports(workers, host)
    cluster = ",".join(f"{host}:{port}" for port in ports)
    commands = [[sys.executable, "-m", "compiler", "train", str(spec), *worker_args,
                 "--cluster", cluster, "--worker-index", str(i)] for i in range(workers)]
    if start_timeout is None:
        start_timeout = float(os.environ.get(START_TIMEOUT_ENV) or START_TIMEOUT)
    say(err, f"starting {workers} workers on {cluster} (worker 0 is the chief and writes the run directory)")
    return run_workers(commands, start_timeout=start_timeout, err=err)


def run_workers(commands: Sequence[Sequence[str]], start_timeout: float = START_TIMEOUT,
                stop_grace: float = STOP_GRACE, finish_timeout: float = FINISH_TIMEOUT, poll: float = 0.05,
                env: dict[str, str] | None = None, err: IO[str] | None = None) -> int:
    """Run one process per command (command 0 is the chief) and supervise them; see the module doc."""
    scratch = Path(tempfile.mkdtemp(prefix="kspec-workers-"))
    workers: list[Worker] = []
    try:
        for i, command in enumerate(commands):
            workers.append(_spawn(i, list(command), scratch, env))
        return _supervise(workers, start_timeout, stop_grace, finish_timeout, poll, err)
    finally:
        # Whatever happened (an exception, Ctrl-C): no worker outlives the launcher.
        stop([w for w in workers if w.poll() is None], stop_grace)
        shutil.rmtree(scratch, ignore_errors=True)


def _spawn(index: int, command: list[str], scratch: Path, env: dict[str, str] | None) -> Worker:
    ready = scratch / f"ready-{index}"
    child_env = {**os.environ, **(env or {}), READY_ENV: str(ready)}
    log = None if index == 0 else scratch / f"worker-{index}.log"
    out = None if log is None else open(log, "wb")
    try:
        process = subprocess.Popen(command, env=child_env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=None if out is None else subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        if out is not None:
            out.close()
    return Worker(index=index, command=command, process=process, ready_file=ready, log=log)


def _supervise(workers: list[Worker], start_timeout: float, stop_grace: float, finish_timeout: float,
               poll: float, err) -> int:
    started = time.monotonic()
    chief = workers[0]
    while True:
        for w in workers:
            w.poll()
        failed = sorted((w for w in workers if w.returncode not in (None, 0) and not w.stopped),
                        key=lambda w: (w.ended_at or 0.0, w.index))
        running = [w for w in workers if w.returncode is None]
        if failed:
            first = failed[0]
            if first is not chief and chief.returncode is None:
                # The same bad data fails every worker at about the same moment: let the chief say so
                # itself (and give its exit status) rather than stopping it mid-message.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    chief.process.wait(timeout=min(1.0, stop_grace))
                if chief.poll() not in (None, 0):
                    first = chief
                running = [w for w in workers if w.returncode is None]
            say(err, f"worker {first.index} {_how(first.returncode)}"
                     + (f"; stopping the other worker{'s' * (len(running) != 1)}" if running else ""))
            _show_log(first, err)
            stop(running, stop_grace)
            if first is chief:
                code = first.returncode
                assert code is not None, "a failed worker has exited"
                return code if code > 0 else 1
            return 1
        if not running:
            return 0
        now = time.monotonic()
        waiting = [w for w in workers if not w.ready and w.returncode is None]
        if waiting and now - started > start_timeout:
            names = ", ".join(str(w.index) for w in waiting)
            say(err, f"worker{'s' * (len(waiting) != 1)} {names} did not join the cluster within "
                     f"{start_timeout:g} s; stopping all workers")
            stop(running, stop_grace)
            for w in waiting:
                _show_log(w, err)
            return 1
        if chief.returncode == 0 and chief.ended_at is not None and now - chief.ended_at > finish_timeout:
            names = ", ".join(str(w.index) for w in running)
            say(err, f"the chief finished but worker{'s' * (len(running) != 1)} {names} still "
                     f"run{'s' * (len(running) == 1)} after {finish_timeout:g} s; stopping")
            stop(running, stop_grace)
            return 1
        time.sleep(poll)


def stop(workers: Sequence[Worker], grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL whatever is still running `grace` seconds later; reap them all."""
    alive = [w for w in workers if w.process.poll() is None]
    for w in alive:
        w.stopped = True
        with contextlib.suppress(ProcessLookupError):
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for w in alive:
        try:
            w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                w.process.kill()
            w.notes.append("killed")
    for w in alive:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=10)
        w.poll()


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"failed (exit status {returncode})"


def _show_log(worker: Worker, err) -> None:
    if worker.log is None or not worker.log.exists():
        return
    try:
        lines = worker.log.read_text(errors="replace").splitlines()
    except OSError:
        return
    lines = [line for line in lines if line.strip()][-LOG_TAIL:]
    for line in lines:
        say(err, f"  worker {worker.index} | {line}", prefix=False)


def say(err, text: str, prefix: bool = True) -> None:
    stream = err or sys.stderr
    print(("kspec: " if prefix else "") + text, file=stream, flush=True)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when the launcher dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    except Exception:
        pass
