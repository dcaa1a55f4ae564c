"""The run directory: its layout (every file name, stated once), how it is claimed and locked, and
atomic writes of every artifact. Every stage (train, diagnose, compare, export, build's `from: RUN`,
tune, serve) takes the names from here.

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
        diagnosis.txt      the learning curve in words
        update_ratio.csv   per-layer update ratios (`diagnostics: {update_ratio: true}`)
        .kspec-run         the marker: this folder is a kspec run (its run id); written by the claim
        .kspec-manifest    every file kspec wrote here, one relative path a line (what clean-up may remove)
        .kspec-lock        the lock file (fcntl.flock) held by the one process using the run

Ownership: kspec only ever replaces or removes files of a folder that carries its marker,
and a failed fresh run removes only the files listed in its manifest (by exact name), then
the folders its claim created. `--resume` on a folder without the marker is refused.
The run directory is locked (an OS file lock on `.kspec-lock`, released by the kernel when
the process ends, kill -9 included) for as long as a `kspec train` uses it.

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
from typing import Any, Sequence

from .errors import Diagnostic, KspecError


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
DIAGNOSIS = "diagnosis.txt"
UPDATE_RATIOS = "update_ratio.csv"
MARKER = ".kspec-run"
MANIFEST = ".kspec-manifest"
LOCK = ".kspec-lock"
TEMP_TAG = ".kspec.tmp"              # kspec's temporary files: `.NAME.kspec.tmp[.SUFFIX]`, next to NAME
LATEST = "latest"                    # `from: runs/NAME/latest` (a Backbone): the newest run of NAME

# The files a run writes (relative to the run directory), with the folders that hold them.
FILES = (SPEC, DATA, SUMMARY, HISTORY, METRICS, MODEL, CURVES, DIAGNOSIS, UPDATE_RATIOS,
         f"{CHECKPOINTS}/{LAST}", f"{CHECKPOINTS}/{BEST}", f"{CHECKPOINTS}/{STATE}")
FOLDERS = (TENSORBOARD, CHECKPOINTS)

# Callback arguments that name a file or folder the callback writes: relative to the run directory, and
# never outside it. Any other argument whose name ends in one of PATH_WORDS is taken as a path too.
PATH_ARGUMENTS = ("filepath", "filename", "log_dir", "backup_dir")
PATH_WORDS = ("dir", "path", "file", "filename", "filepath")

# The name of the copy of the training state stored inside each checkpoint (.keras is a zip archive;
# Keras ignores entries it does not know), so a checkpoint always says which epoch it holds.
EMBEDDED_STATE = "kspec_state.json"
WRITTEN_BY = "kspec.json"            # inside every .keras kspec saves: {"written_by": "kspec build" | "kspec"}


class RunDir:
    """Paths of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.created: list[Path] = []        # set by claim()
        self.fresh = False                   # claim() found no earlier run here
        self._lock_fd: int | None = None     # the open lock file while this process holds the run

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
    diagnosis = property(lambda self: self.path / DIAGNOSIS)
    marker = property(lambda self: self.path / MARKER)
    manifest = property(lambda self: self.path / MANIFEST)
    lock_file = property(lambda self: self.path / LOCK)

    def has_run(self) -> bool:
        """True if a run was started here (its spec or any checkpoint or model exists)."""
        return any(p.exists() for p in (self.spec, self.checkpoints, self.model, self.history))

    def is_kspec_run(self) -> bool:
        """True if kspec claimed this folder (its marker is a regular file holding a run id)."""
        return run_id(self.path) is not None

    def written(self) -> list[Path]:
        """The files kspec's manifest says it wrote here (inside the run directory, by exact name)."""
        return _manifest_entries(self.path)

    def release(self) -> None:
        """Give up the lock (the kernel also drops it when the process ends, kill -9 included)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

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


def run_id(path: str | os.PathLike) -> str | None:
    """The run id in a folder's kspec marker, or None when it is not a run kspec claimed."""
    marker = Path(path) / MARKER
    if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
        return None
    value = _read_json(marker)
    rid = value.get("run_id") if value else None
    return rid if isinstance(rid, str) and rid else None


def is_run_dir(path: str | os.PathLike) -> bool:
    """A folder that kspec claimed as a run directory (for readers: evaluate, compare, tune, serve...)."""
    return Path(path).is_dir() and run_id(path) is not None


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
    """The most recent kspec run of `name` under `root` that has checkpoints (`--resume` without --run-dir)."""
    base = Path(root) / _safe(name)
    if not base.is_dir():
        return None
    runs = sorted(p for p in base.iterdir() if (p / CHECKPOINTS).is_dir() and is_run_dir(p))
    return runs[-1] if runs else None


def open_run(name: str, run_dir, resume: bool, latest=latest_run_dir) -> RunDir:
    """The run directory for `kspec train`: `--run-dir` exactly, the latest run (`latest(name)`)
    for `--resume` without one, or a new `runs/NAME/TIMESTAMP`."""
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


def _entries(p: Path) -> list[str]:
    try:
        return sorted(e.name for e in p.iterdir())
    except OSError as exc:
        raise RunDirError(Diagnostic(f"cannot read run directory {p}: {exc.strerror or exc}")) from None


def _listing(entries: list[str]) -> str:
    return ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")


def claim(path: str | os.PathLike, resume: bool) -> RunDir:
    """Create (or, with resume, reopen) the run directory, lock it and check that it is writable.

    Without `resume`, an existing directory must be empty: nothing of an earlier run, nor
    anything else, is ever overwritten. With `resume`, it must carry kspec's marker (or be
    empty). The lock is held until `release()` or the end of the process.
    """
    run = RunDir(path)
    p = run.path
    if p.is_symlink() and not p.exists():
        raise RunDirError(Diagnostic(f"run directory {p} is a dangling symbolic link", hint="choose another --run-dir"))
    if p.exists() and not p.is_dir():
        raise RunDirError(Diagnostic(f"run directory {p} exists and is not a directory",
                                     hint="choose another --run-dir"))
    blocker = next((d for d in p.parents if d.exists() and not d.is_dir()), None)
    if blocker is not None:
        raise RunDirError(Diagnostic(f"cannot create run directory {p}: {blocker} is a file, not a directory",
                                     hint="choose another --run-dir"))
    ours = p.is_dir() and run.is_kspec_run()
    if p.is_dir():
        _refuse_foreign(run, _entries(p), resume, ours)
    missing = [d for d in (p, *p.parents) if not d.exists()]
    run.created = missing                    # the folders this claim creates (deepest first)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(Diagnostic(f"cannot create run directory {p}: {exc.strerror or exc}",
                                     hint="choose a --run-dir you can write to")) from None
    try:
        check_writable(p)
        lock(run)
        if not ours:
            # Under the lock: another process may have claimed the folder between the check and now.
            _refuse_foreign(run, [e for e in _entries(p) if e != LOCK], resume, run.is_kspec_run())
        check_free_space(p)
        run.fresh = not ours or not run.has_run()
        if not ours:
            import uuid

            atomic_write_json(run.marker, {"run_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "pid": os.getpid()})
    except BaseException:
        if not ours:
            _undo_claim(run)
        raise
    if resume and ours:
        remove_temporaries(run)
    return run


def _refuse_foreign(run: RunDir, entries: list[str], resume: bool, ours: bool) -> None:
    """An existing folder may be claimed when it is empty, or (with --resume) when kspec's marker is in it."""
    p = run.path
    if not entries or (resume and ours):
        return
    if ours:
        raise RunDirError(Diagnostic(f"run directory {p} holds an earlier run; nothing in it was changed",
                                     hint="pass --resume to continue that run, or choose another --run-dir"))
    what = "holds files that kspec did not write" if resume else "is not empty"
    raise RunDirError(Diagnostic(
        f"run directory {p} {what} ({_listing(entries)}) and is not a kspec run directory (it has no "
        f"{MARKER} marker); nothing in it was changed",
        hint="choose a new or empty --run-dir: kspec never writes into a folder it did not create"))


def lock(run: RunDir) -> None:
    """Take the run directory's OS file lock (fcntl.flock, non-blocking) or refuse: two processes
    training one run would mix their records. The kernel releases it when the process dies."""
    import fcntl

    if run._lock_fd is not None:
        return
    path = run.lock_file
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(Diagnostic(f"cannot open the lock file {path}: {exc.strerror or exc}",
                                     hint="choose a --run-dir you can write to")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = os.pread(fd, 64, 0).decode().strip()
        os.close(fd)
        raise RunDirError(Diagnostic(
            f"run directory {run.path} is in use by another kspec process{f' (pid {holder})' if holder else ''}; "
            "nothing in it was changed",
            hint="wait for it to finish (or stop it), then run the command again")) from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    run._lock_fd = fd


def _undo_claim(run: RunDir) -> None:
    """Remove exactly what a claim that failed half-way made: its marker, manifest and lock file, then
    the folders it created (only when empty)."""
    run.release()
    for name in (MARKER, MANIFEST, LOCK):
        target = run.path / name
        if target.is_file() and not target.is_symlink():
            with contextlib.suppress(OSError):
                target.unlink()
    for folder in run.created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def discard(run: RunDir) -> None:
    """Undo a fresh claim whose run failed before training began (a spec or data error): remove the
    files this run's manifest lists (by exact name), its own folders once empty, its marker and lock,
    and the folders the claim created, so the same --run-dir can be used again. Nothing that kspec
    did not provably write is touched."""
    if not getattr(run, "fresh", False) or not run.is_kspec_run():
        return
    for target in run.written():
        with contextlib.suppress(OSError):
            target.unlink()
    for folder in (run.checkpoints, run.tensorboard):
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):
                folder.rmdir()
    _forget(run.path)
    _undo_claim(run)


# -- the manifest: what kspec wrote -----------------------------------------------------------

MAX_MANIFEST_BYTES = 1 << 20
_MANIFESTS: dict[str, set[str]] = {}      # run directory -> entries this process already recorded


def _run_root(path: Path) -> Path | None:
    """The run directory a file belongs to: its folder or the one above, whichever has kspec's marker."""
    for folder in (path.parent, path.parent.parent):
        if (folder / MARKER).is_file():
            return folder
    return None


def _record(path: Path) -> None:
    """Add `path` to its run's manifest (once), after kspec wrote it."""
    root = _run_root(path)
    if root is None or path.name in (MARKER, MANIFEST, LOCK):
        return
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except (OSError, ValueError):
        return                                # written through a link out of the run: not ours to remove
    key = str(root.resolve())
    known = _MANIFESTS.get(key)
    if known is None:
        known = _MANIFESTS[key] = {p.relative_to(root).as_posix() for p in _manifest_entries(root)}
    if rel in known:
        return
    known.add(rel)
    with contextlib.suppress(OSError):
        fd = os.open(root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, (rel + "\n").encode())
        finally:
            os.close(fd)


def _forget(root: Path) -> None:
    with contextlib.suppress(OSError):
        _MANIFESTS.pop(str(root.resolve()), None)


def _manifest_entries(root: Path) -> list[Path]:
    """The regular files (not links) inside `root` that its manifest names; anything else is ignored."""
    manifest = root / MANIFEST
    if manifest.is_symlink() or not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
        return []
    try:
        lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out, seen, base = [], set(), root.resolve()
    for line in lines:
        rel = Path(line.strip())
        if not line.strip() or rel.is_absolute() or ".." in rel.parts or rel in seen:
            continue
        seen.add(rel)
        target = root / rel
        try:
            if target.is_symlink() or not target.is_file() or not target.resolve().is_relative_to(base):
                continue
        except OSError:
            continue
        out.append(target)
    return out


def remove_temporaries(run: RunDir) -> list[Path]:
    """Delete what a killed run left half-written, nothing else: kspec's own temporary files, by their
    exact names (`.NAME.kspec.tmp[.SUFFIX]` for each file of the layout and of the manifest), and the
    `tmpXXXXXXXX` weights file or folder Keras creates next to a .keras file it saves or loads, only
    when it holds just that (an HDF5 file, or a folder with only model.weights.h5) and never in a
    folder that is a symbolic link (it may be another program's)."""
    removed = []
    names = {*FILES, *(p.relative_to(run.path).as_posix() for p in run.written())}
    for rel in sorted(names):
        target = run.path / rel
        if target.parent.is_symlink():
            continue
        for tmp in temporary_names(target):
            if tmp.is_symlink() or tmp.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    for folder in (run.path, run.checkpoints):
        if folder.is_dir() and not folder.is_symlink():
            removed.extend(_remove_keras_temporaries(folder))
    return removed


def temporary_names(target: Path) -> list[Path]:
    """Every name kspec's atomic writes use as the temporary file of `target`."""
    return [target.with_name(f".{target.name}{TEMP_TAG}{suffix}") for suffix in sorted({"", ".keras", target.suffix})]


def _remove_keras_temporaries(folder: Path) -> list[Path]:
    import re
    import shutil

    keras_temp = re.compile(r"^tmp[a-z0-9_]{8}$")
    removed = []
    for entry in folder.iterdir():
        if not keras_temp.match(entry.name) or entry.is_symlink():
            continue
        try:
            if entry.is_file():
                with entry.open("rb") as f:
                    ours = f.read(8) in (b"\x89HDF\r\n\x1a\n", b"")
            elif entry.is_dir():
                inside = list(entry.iterdir())
                ours = all(p.name == "model.weights.h5" and p.is_file() and not p.is_symlink() for p in inside)
            else:
                ours = False
            if ours:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(entry)
        except OSError:
            continue
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
    """A temporary path next to `path` (`.NAME.kspec.tmp[SUFFIX]`: an exact name, so that clean-up
    never needs a pattern), moved onto `path` on success, removed on failure.

    An OSError on the way (disk full, file-size limit, read-only disk) becomes a WriteError that
    names the file; `path` itself is then untouched (the previous version stays in place).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}{TEMP_TAG}{suffix}")
        if tmp.is_symlink() or tmp.is_file():
            os.unlink(tmp)                   # a leftover of a killed write (its exact name: ours)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666 & ~_UMASK)
        os.close(fd)
        yield tmp
        _fsync(tmp)
        _crash_point(path.name)
        os.replace(tmp, path)
        _record(path)
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
    seen: BaseException | None = exc
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
                      link: str | os.PathLike | None = None, written_by: str = "kspec") -> None:
    """`model.save(path)` (optimizer state included), atomically.

    `state`: a JSON record stored inside the archive (see EMBEDDED_STATE).
    `link`: a second path that then gets the same file (a hard link when possible, else
    a copy), also atomically, after `path` is in place: used for best.keras, which is
    then free. Files are only ever replaced, never modified, so sharing an inode is safe.
    Every archive also carries WRITTEN_BY, so that kspec can later tell a file it wrote
    (which `kspec build -o` may replace) from the user's own.
    """
    path = Path(path)
    with _temp_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(WRITTEN_BY, json.dumps({"written_by": written_by}))
            if state is not None:
                archive.writestr(EMBEDDED_STATE, json.dumps(state, default=_json_default))
    if link is not None:
        atomic_link(path, Path(link))


def written_by_kspec(path: str | os.PathLike) -> bool:
    """True for a regular .keras file that kspec saved (it carries WRITTEN_BY)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return WRITTEN_BY in archive.namelist() or EMBEDDED_STATE in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def check_model_output(path: Path, protect: Sequence[str | os.PathLike] = ()) -> None:
    """`kspec build -o PATH`: a new `.keras` file, or one kspec wrote; never a spec or any other file."""
    from .errors import SpecError

    if path.suffix != ".keras":
        raise SpecError(Diagnostic(f"-o {path}: a model is saved to a file ending in .keras; nothing was written",
                                   hint=f"e.g. -o {path.with_suffix('.keras').name}"))
    resolved = path.resolve()
    if any(resolved == Path(p).resolve() for p in protect):
        raise SpecError(Diagnostic(f"-o {path} is the spec itself; nothing was written", hint="choose another -o"))
    if path.is_symlink() or (path.exists() and not written_by_kspec(path)):
        raise SpecError(Diagnostic(f"-o {path} exists and is not a model that kspec wrote; nothing was changed",
                                   hint="choose a new file name, or remove the file yourself first"))


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


# -- reading a run's files ---------------------------------------------------------------------

MAX_HISTORY_BYTES = 256 << 20              # a history.csv larger than this is not one kspec wrote


def read_history_table(path: str | os.PathLike) -> tuple[list[str], list[dict[str, float]]]:
    """The one reader of history.csv: (its column names, one {column: float} per row; an empty or
    non-numeric cell is NaN, `epoch` included). Raises OSError when the file cannot be read."""
    import csv
    import io
    import math

    path = Path(path)
    if path.stat().st_size > MAX_HISTORY_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_HISTORY_BYTES >> 20} MiB, not a kspec history")
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8", errors="replace")))
    names = [n for n in (reader.fieldnames or []) if n]
    rows = []
    for raw in reader:
        row = {}
        for name in names:
            value = raw.get(name)
            try:
                row[name] = float(value) if value not in (None, "") else math.nan
            except ValueError:
                row[name] = math.nan
        rows.append(row)
    return names, rows


# -- paths a spec writes -----------------------------------------------------------------------

def writes_path(argument: str) -> bool:
    """True for a callback argument that names a file or folder the callback writes."""
    name = argument.lower()
    return name in PATH_ARGUMENTS or name.endswith(PATH_WORDS)


_OWN = {*FILES, *FOLDERS, MARKER, MANIFEST, LOCK}


def path_problem(value: Any, argument: str = "") -> str | None:
    """Why `value` may not be a path a spec writes (relative to the run directory), or None if it may.

    Textual: used at `validate`, before any run directory exists; `resolve_inside` repeats the
    check on the real folder (symbolic links resolved) at train time."""
    import posixpath

    if not isinstance(value, str):
        return None if value is None else "must be a path (a string)"
    text = value.strip()
    if not text:
        return "is empty: it would name the run directory itself"
    if text.startswith("~") or os.path.isabs(text) or text.startswith("\\") or (len(text) > 1 and text[1] == ":"):
        return "is outside the run directory: a spec may only write inside its run directory"
    parts = [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return "leaves the run directory (`..`): a spec may only write inside its run directory"
    if not parts:
        return "names the run directory itself" + (" (BackupAndRestore deletes its backup_dir when training "
                                                    "ends)" if argument == "backup_dir" else "")
    normal = posixpath.join(*parts)
    if normal in _OWN or (argument == "backup_dir" and parts[0] in FOLDERS):
        return f"names kspec's own {normal!r} in the run directory, which the callback would overwrite or delete"
    return None


def resolve_inside(run: RunDir, value: str, argument: str = "") -> Path:
    """The absolute path of a spec-written path `value` in `run`, after resolving symbolic links; a
    RunDirError (exit 2) when it is not strictly inside the run directory (a link pointing out of it,
    say), so that no callback ever writes or deletes outside it."""
    problem = path_problem(value, argument)
    target = run.path / value
    if problem is None:
        try:
            base = run.path.resolve()
            resolved = target.resolve()
            if resolved == base or not resolved.is_relative_to(base):
                problem = f"resolves to {resolved}, outside the run directory {base} (a symbolic link?)"
        except (OSError, RuntimeError) as exc:
            problem = f"cannot be resolved ({exc})"
    if problem:
        raise RunDirError(Diagnostic(f"callback argument `{argument}: {value}` {problem}",
                                     path="train.callbacks",
                                     hint="write a path relative to the run directory that stays inside it"))
    return target
