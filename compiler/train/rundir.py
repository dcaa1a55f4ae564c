"""The run directory: its layout, how it is claimed, and atomic writes of every artifact.

    runs/<name>/<YYYYmmdd-HHMMSS>/   (or exactly --run-dir DIR)
        spec.yaml          the fully resolved spec, written first
        data.json          what predict/evaluate need to know about the data (class and feature names)
        summary.txt        the model summary
        history.csv        one row per finished epoch (rewritten after every epoch)
        metrics.json       train / validation / test metrics, written at the end
        model.keras        the trained model (best or last weights, per train.keep), written at the end
        curves.png         learning curves
        tensorboard/       TensorBoard event files
        checkpoints/
            last.keras     the full model after the last finished epoch, optimizer state included
            best.keras     the best model so far by train.monitor (train.keep: best)
            state.json     epoch_done, phase, best value... (written after last.keras)

Every file is written to a temporary file in the same directory and moved into
place with `os.replace`, so a reader (or a `--resume` after `kill -9`) sees
either the old file or the new one, never half of one. Nothing here imports
Keras at module level: `kspec build -o` uses `atomic_save_model` too.

A write that fails (disk full, file-size limit, read-only disk) raises WriteError
(exit 1) naming the file, and leaves the previous version in place; `claim` refuses
a run directory below a regular file or on a full disk before anything is trained,
and on `--resume` removes the temporary files a killed run left. `_crash_point` is a
test-only hook (KSPEC_CRASH_AT, see tests/test_crash.py) that kills the process in
the window between a complete temporary file and its `os.replace`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from ..errors import Diagnostic, KspecError


class RunDirError(KspecError):
    """The run directory cannot be used (exists without --resume, not writable...). Exit 2."""

    exit_code = 2


class WriteError(RunDirError):
    """A file of the run could not be written (disk full, file-size limit, read-only disk...). Exit 1:
    nothing is wrong with the spec, and the files already in place (the last checkpoint) are intact."""

    exit_code = 1


# A run refuses to start on a disk with less free space than this: it could not even hold a checkpoint.
MIN_FREE_BYTES = 1 << 20


SPEC = "spec.yaml"
DATA = "data.json"
SUMMARY = "summary.txt"
HISTORY = "history.csv"
METRICS = "metrics.json"
MODEL = "model.keras"
CURVES = "curves.png"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
LAST = "last.keras"
BEST = "best.keras"
STATE = "state.json"

# The name of the copy of the training state stored inside each checkpoint (.keras is a zip archive;
# Keras ignores entries it does not know), so a checkpoint always says which epoch it holds.
EMBEDDED_STATE = "kspec_state.json"


class RunDir:
    """Paths of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created: list[Path] = []        # set by claim()
        self.fresh = False                   # claim() found no earlier run here

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    spec = property(lambda self: self.path / SPEC)
    data = property(lambda self: self.path / DATA)
    summary = property(lambda self: self.path / SUMMARY)
    history = property(lambda self: self.path / HISTORY)
    metrics = property(lambda self: self.path / METRICS)
    model = property(lambda self: self.path / MODEL)
    curves = property(lambda self: self.path / CURVES)
    tensorboard = property(lambda self: self.path / TENSORBOARD)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    last = property(lambda self: self.path / CHECKPOINTS / LAST)
    best = property(lambda self: self.path / CHECKPOINTS / BEST)
    state = property(lambda self: self.path / CHECKPOINTS / STATE)

    def has_run(self) -> bool:
        """True if a run was started here (its spec or any checkpoint or model exists)."""
        return any(p.exists() for p in (self.spec, self.checkpoints, self.model, self.history))

    def read_state(self) -> dict | None:
        """The training state to resume from, or None if no epoch checkpoint exists.

        `state.json` is written after `last.keras`, so a kill between the two leaves a
        checkpoint one epoch ahead of state.json; the copy of the state embedded in the
        checkpoint settles it: whichever says more epochs are done wins (on a tie,
        state.json, which also records phase changes that need no new checkpoint).
        """
        state = _read_json(self.state)
        embedded = read_embedded_state(self.last) if self.last.exists() else None
        if embedded is None:
            return state if (state and self.last.exists()) else None
        if state is None or embedded.get("epoch_done", 0) > state.get("epoch_done", 0):
            state = embedded
        self._repair_best(state)
        return state

    def _repair_best(self, state: dict) -> None:
        """best.keras is linked to last.keras just after last.keras is replaced; a kill in between
        leaves an older best.keras although the state says the last epoch was the best: re-link."""
        best_epoch = state.get("best_epoch")
        if best_epoch is None or state.get("epoch_done") != best_epoch + 1 or not self.best.parent.exists():
            return
        embedded = read_embedded_state(self.best) if self.best.exists() else None
        if embedded is None or embedded.get("epoch_done") != best_epoch + 1:
            if self.best.exists() or state.get("save_best"):
                atomic_link(self.last, self.best)


# -- claiming a run directory ---------------------------------------------------------------

def default_run_dir(name: str, root: str | os.PathLike = "runs") -> Path:
    """`runs/<name>/<YYYYmmdd-HHMMSS>`, with a suffix if that second is taken."""
    base = Path(root) / _safe(name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, k = base / stamp, 2
    while path.exists() and any(path.iterdir()):
        path, k = base / f"{stamp}-{k}", k + 1
    return path


def latest_run_dir(name: str, root: str | os.PathLike = "runs") -> Path | None:
    """The most recent run of `name` under `root` that has checkpoints (for `--resume` without --run-dir)."""
    base = Path(root) / _safe(name)
    if not base.is_dir():
        return None
    runs = sorted(p for p in base.iterdir() if (p / CHECKPOINTS).is_dir())
    return runs[-1] if runs else None


def open_run(name: str, run_dir, resume: bool, latest=latest_run_dir) -> RunDir:
    """The run directory for `kspec train`: `--run-dir` exactly, the latest run (`latest(name)`)
    for `--resume` without one, or a new `runs/NAME/TIMESTAMP`."""
    from ..errors import Diagnostic

    if run_dir is None:
        if resume:
            run_dir = latest(name)
            if run_dir is None:
                raise RunDirError(Diagnostic(f"--resume: no earlier run of '{name}' under runs/{_safe(name)}/",
                                             hint="name the run to continue with --run-dir DIR"))
        else:
            run_dir = default_run_dir(name)
    elif resume and not Path(run_dir).is_dir():
        raise RunDirError(Diagnostic(f"--resume: run directory {run_dir} does not exist",
                                     hint="drop --resume to start a new run there"))
    return claim(run_dir, resume)


def claim(path: str | os.PathLike, resume: bool) -> RunDir:
    """Create (or, with resume, reopen) the run directory and check that it is writable.

    Without `resume`, an existing directory must be empty: nothing of an earlier
    run is ever overwritten.
    """
    run = RunDir(path)
    p = run.path
    if p.exists() and not p.is_dir():
        raise RunDirError(Diagnostic(f"run directory {p} exists and is not a directory",
                                     hint="choose another --run-dir"))
    blocker = next((d for d in p.parents if d.exists() and not d.is_dir()), None)
    if blocker is not None:
        raise RunDirError(Diagnostic(f"cannot create run directory {p}: {blocker} is a file, not a directory",
                                     hint="choose another --run-dir"))
    if p.is_dir() and not resume:
        try:
            entries = sorted(e.name for e in p.iterdir())
        except OSError as exc:
            raise RunDirError(Diagnostic(f"cannot read run directory {p}: {exc.strerror or exc}")) from None
        if entries:
            what = "holds an earlier run" if run.has_run() else f"is not empty ({', '.join(entries[:5])}" + \
                (", ..." if len(entries) > 5 else "") + ")"
            raise RunDirError(Diagnostic(
                f"run directory {p} {what}; nothing in it was changed",
                hint="pass --resume to continue that run, or choose another --run-dir"))
    missing = [d for d in (p, *p.parents) if not d.exists()]
    run.created = missing                    # the folders this claim creates (deepest first)
    run.fresh = not resume or not run.has_run()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(Diagnostic(f"cannot create run directory {p}: {exc.strerror or exc}",
                                     hint="choose a --run-dir you can write to")) from None
    check_writable(p)
    check_free_space(p)
    if resume:
        remove_temporaries(run)
    return run


def discard(run: RunDir) -> None:
    """Undo a fresh claim whose run failed before training began (a spec or data error): remove
    what this run wrote and the folders the claim created, so the same --run-dir can be used again."""
    import shutil

    if not getattr(run, "fresh", False):
        return
    for entry in list(run.path.iterdir()) if run.path.is_dir() else []:
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for folder in getattr(run, "created", []):
        with contextlib.suppress(OSError):
            folder.rmdir()


def remove_temporaries(run: RunDir) -> list[Path]:
    """Delete what a killed run left half-written, nothing else: kspec's own temporary files
    (`.NAME.XXXX.tmp...`) and the `tmpXXXXXXXX` file or folder Keras creates next to a .keras file
    it saves or loads when the weights do not fit in memory."""
    import re
    import shutil

    keras_temp = re.compile(r"^tmp[a-z0-9_]{8}$")
    removed = []
    for folder in (run.path, run.checkpoints):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            ours = entry.is_file() and entry.name.startswith(".") and ".tmp" in entry.name
            if ours or (keras_temp.match(entry.name) and not entry.is_symlink()):
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                    removed.append(entry)
    return removed


def check_writable(directory: Path) -> None:
    """Write and remove a probe file (os.access is wrong for root and for read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".kspec-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(Diagnostic(f"run directory {directory} is not writable: {exc.strerror or exc}",
                                     hint="choose a --run-dir you can write to")) from None


def check_free_space(directory: Path, minimum: int = MIN_FREE_BYTES) -> None:
    """Refuse a run directory on a (nearly) full disk before anything is trained."""
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return                               # no statistics (some network file systems): find out on write
    if free < minimum:
        raise RunDirError(Diagnostic(f"the disk holding run directory {directory} is full ({free:,} bytes free)",
                                     hint="free some disk space or choose a --run-dir on another disk"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "run"


# -- atomic writes ------------------------------------------------------------------------

@contextlib.contextmanager
def _temp_path(path: Path, suffix: str = ""):
    """A fresh temporary path next to `path`, moved onto `path` on success, removed on failure.

    An OSError on the way (disk full, file-size limit, read-only disk) becomes a WriteError that
    names the file; `path` itself is then untouched (the previous version stays in place).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp's 0600 -> what open() would have given
        yield Path(tmp)
        _fsync(tmp)
        _crash_point(path.name)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        error = _write_error(path, exc)
        if error is None:
            raise
        raise error from None


def _write_error(path: Path, exc: BaseException) -> WriteError | None:
    """A WriteError for an OSError (also one Keras or h5py wrapped in their own exception), else None."""
    seen = exc
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or isinstance(exc, KspecError) or not isinstance(exc, Exception):
        return None
    code = seen.errno
    reason = (seen.strerror or os.strerror(code)) if code else (str(seen) or type(seen).__name__)
    blocker = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
    if blocker is not None:
        return WriteError(Diagnostic(f"cannot write {path}: {blocker} is a file, not a folder",
                                     hint="choose another location (--run-dir, -o)"))
    run = next((d for d in (path.parent, path.parent.parent) if (d / SPEC).is_file()), None)
    if run is not None and (run / CHECKPOINTS / LAST).is_file():
        again = (f"then continue the run with `kspec train SPEC --run-dir {run} --resume` "
                 "(the files already written are intact)")
    else:
        again = "then run the command again"
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = f"the disk is full (or a file-size limit was reached): free some space, {again}"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = f"the folder is not writable: fix its permissions or choose another location (--run-dir, -o); {again}"
    else:
        hint = f"check the disk, {again}"
    return WriteError(Diagnostic(f"cannot write {path}: {reason}", hint=hint))


def _crash_point(name: str) -> None:
    """Test hook for crash safety (tests/test_crash.py). With KSPEC_CRASH_AT=NAME:N in the environment,
    the process SIGKILLs itself the N-th time a file called NAME (last.keras, best.keras, state.json,
    history.csv, model.keras, metrics.json, ...) is complete in its temporary file but not yet moved
    into place: the worst moment for a crash. Only tests set it; unset, it costs one dict lookup."""
    target = os.environ.get("KSPEC_CRASH_AT")
    if not target:
        return
    wanted, _, count = target.rpartition(":")
    if wanted != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if str(_CRASH_COUNTS[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)


_CRASH_COUNTS: dict[str, int] = {}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync(path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise                            # the data did not reach the disk: do not move it into place
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with _temp_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def atomic_save_model(model, path: str | os.PathLike, state: dict | None = None,
                      link: str | os.PathLike | None = None) -> None:
    """`model.save(path)` (optimizer state included), atomically.

    `state`: a JSON record stored inside the archive (see EMBEDDED_STATE).
    `link`: a second path that then gets the same file (a hard link when possible, else
    a copy), also atomically, after `path` is in place: used for best.keras, which is
    then free. Files are only ever replaced, never modified, so sharing an inode is safe.
    """
    path = Path(path)
    with _temp_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))
        if state is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(EMBEDDED_STATE, json.dumps(state, default=_json_default))
    if link is not None:
        atomic_link(path, Path(link))


def atomic_link(source: Path, target: Path) -> None:
    with _temp_path(target, suffix=".keras") as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            import shutil

            shutil.copyfile(source, tmp)


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a file atomically (model.keras from best.keras)."""
    import shutil

    with _temp_path(Path(target), suffix=Path(target).suffix) as tmp:
        shutil.copyfile(source, tmp)


def read_embedded_state(path: str | os.PathLike) -> dict | None:
    try:
        with zipfile.ZipFile(path) as archive:
            if EMBEDDED_STATE not in archive.namelist():
                return None
            return json.loads(archive.read(EMBEDDED_STATE))
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_json(path: str | os.PathLike) -> dict | None:
    return _read_json(Path(path))
