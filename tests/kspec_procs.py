"""Run many `kspec` command lines as separate processes, cheaply: a fork server for the slow tests.

Each `python -m compiler train ...` spends most of its few seconds importing TensorFlow.
The tests that start dozens of them (tests/test_crash.py, tests/test_bad_data.py) use a
server process that imports TensorFlow, Keras and kspec once, then `fork()`s one child per
command line. The child is a real, separate process: it gets its own environment, working
directory, stdout/stderr files and resource limits, runs `compiler.cli.main(argv)` (what the
`kspec` console script runs) and exits with its exit status; `kill -9` kills it for real.

The server forks before TensorFlow has run anything (no op, no device listed, no thread pool
started), which is when forking is safe. Set KSPEC_TEST_FORK=0 to run every command as a plain
`python -m compiler` subprocess instead (slower, same results).

    procs = Procs()                       # or Procs(fork=False)
    p = procs.start(["train", spec, "--run-dir", run], env={...}, file_limit=None)
    p.poll(); p.wait(timeout); p.kill(); p.returncode, p.stdout, p.stderr
    result = procs.run([...], timeout=...)    # like subprocess.run(capture_output=True, text=True)
    procs.close()
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = r"""
import json, os, resource, signal, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import tensorflow, keras, sklearn.datasets, sklearn.model_selection, matplotlib.figure
import matplotlib.backends.backend_agg, PIL.Image, yaml, jsonschema
import compiler.cli, compiler.layers, compiler.data, compiler.builder.graph, compiler.builder.compile
import compiler.train.run, compiler.train.callbacks, compiler.train.history

requests = os.fdopen(0, "r")
reply = lambda value: os.write(1, (json.dumps(value) + "\n").encode())
children = {}
reply({"ready": True})
for line in requests:
    req = json.loads(line)
    op = req["op"]
    if op == "start":
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.setpgid(0, 0)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
                os.dup2(os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                sys.stdin = open(0, "r", closefd=False)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                os.chdir(req["cwd"])
                os.environ.clear()
                os.environ.update(req["env"])
                if req.get("file_limit"):
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (req["file_limit"], req["file_limit"]))
                code = compiler.cli.main(req["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        children[pid] = None
        reply({"pid": pid})
    elif op == "poll":
        pid = req["pid"]
        if children.get(pid) is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children[pid] = os.waitstatus_to_exitcode(status)
        reply({"returncode": children.get(pid)})
for pid, code in children.items():
    if code is None:
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
"""


class Proc:
    """One running `kspec` command (a fork of the server, or a plain subprocess)."""

    def __init__(self, procs: "Procs", pid: int, out: Path, err: Path, popen: subprocess.Popen | None = None):
        self.procs, self.pid, self._out, self._err, self._popen = procs, pid, out, err, popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                self.returncode = self.procs._ask({"op": "poll", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise subprocess.TimeoutExpired(f"kspec (pid {self.pid})", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.02)

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")


class Procs:
    def __init__(self, fork: bool | None = None):
        if fork is None:
            fork = os.environ.get("KSPEC_TEST_FORK", "1") != "0"
        self.fork = fork
        self._lock = threading.Lock()
        self._logs = Path(tempfile.mkdtemp(prefix="kspec-procs-"))
        self._count = 0
        self._server = None
        if fork:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            self._server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env, bufsize=0,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL)
            self._pending = b""
            self._read(timeout=600)                  # {"ready": true}, after the imports

    def _read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        fd = self._server.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("the kspec fork server does not answer")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError("the kspec fork server died")
                self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        with self._lock:
            self._server.stdin.write((json.dumps(request) + "\n").encode())
            return self._read(timeout=60)

    def start(self, argv, env: dict | None = None, cwd: str | os.PathLike = ROOT,
              file_limit: int | None = None) -> Proc:
        """Start `kspec ARGV...`; `env` replaces the environment (default: this one), `file_limit`
        sets RLIMIT_FSIZE with SIGXFSZ ignored, so writes past it fail with EFBIG (a full disk)."""
        argv = [str(a) for a in argv]
        env = dict(os.environ if env is None else env)
        with self._lock:
            self._count += 1
            out, err = self._logs / f"{self._count}.out", self._logs / f"{self._count}.err"
        if not self.fork:
            def limit():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

            with open(out, "w") as o, open(err, "w") as e:
                popen = subprocess.Popen([sys.executable, "-m", "compiler", *argv], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                         preexec_fn=limit if file_limit else None)
            return Proc(self, popen.pid, out, err, popen)
        pid = self._ask({"op": "start", "argv": argv, "env": env, "cwd": str(cwd), "out": str(out),
                         "err": str(err), "file_limit": file_limit})["pid"]
        return Proc(self, pid, out, err)

    def run(self, argv, timeout: float, **kw) -> subprocess.CompletedProcess:
        proc = self.start(argv, **kw)
        proc.wait(timeout)
        return subprocess.CompletedProcess([str(a) for a in argv], proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        import shutil

        shutil.rmtree(self._logs, ignore_errors=True)
