"""Write an export under a temporary name next to its destination, check it, then move it into place.

The check runs the export in its own runtime on the source's inputs and compares
with the Keras model's outputs. The limit is 1e-4 for float32 models (scaled up
for outputs larger than 1 in magnitude, where float32 rounding alone exceeds it;
looser for float16 / bfloat16 models). A failed write or check leaves the
destination exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import Diagnostic, KspecError
from . import ExportError, ExportReport

TOLERANCE = {"float32": 1e-4, "float64": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


EXPORT_MARKER = ".kspec-export"          # inside every SavedModel folder kspec exports: it may replace that folder
STAGING = ".kspec-export.tmp"            # `.NAME.kspec-export.tmp`: the staging folder next to NAME (exact name)
OLD = ".kspec-export.old"                # `.NAME.kspec-export.old`: the previous export, while it is replaced


def check_destination(path: Path, directory: bool, suffix: str | None, default_name: str) -> Path:
    if suffix and path.suffix != suffix and not path.is_dir():
        raise ExportError(Diagnostic(f"-o {path}: this format is saved to a file ending in {suffix}",
                                     hint=f"use -o {path.with_suffix(suffix)}"))
    if directory:
        if path.is_file() or path.is_symlink():
            raise ExportError(Diagnostic(f"-o {path} is an existing file; a SavedModel is a directory"))
        if path.is_dir() and any(path.iterdir()) and not (path / EXPORT_MARKER).is_file():
            raise ExportError(Diagnostic(f"-o {path} is a directory that kspec did not export (it is not empty and "
                                         f"has no {EXPORT_MARKER}); nothing in it was changed",
                                         hint="choose a new directory name"))
    elif path.is_dir():
        raise ExportError(Diagnostic(f"-o {path} is a directory; give a file name",
                                     hint=f"e.g. -o {path / default_name}"))
    elif path.is_symlink():
        raise ExportError(Diagnostic(f"-o {path} is a symbolic link; nothing was written",
                                     hint="give the path of a regular file"))
    return path


def _remove_own(path: Path) -> None:
    """Remove kspec's own staging or old folder, found by its exact name (a link is unlinked, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def staged(destination: Path, directory: bool):
    """Yields a temporary path (a directory or a file name) in `.NAME.kspec-export.tmp` next to the
    destination. A kill -9 leaves that folder behind; the next export to NAME removes it (its exact name)."""
    from ..rundir import _crash_point

    parent = destination.parent
    work = parent / f".{destination.name}{STAGING}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_own(work)
        work.mkdir()
    except OSError as exc:
        raise ExportError(Diagnostic(f"cannot write to {parent}: {exc.strerror or exc}")) from None
    try:
        target = work / destination.name
        if directory:
            target.mkdir()
        yield target
        if directory:
            (target / EXPORT_MARKER).write_text("written by kspec export\n")
        _crash_point("export")                 # test hook: KSPEC_CRASH_AT=export:1 (tests/test_trust.py)
        _publish(target, destination, directory)
    finally:
        with contextlib.suppress(OSError):
            _remove_own(work)


def _publish(target: Path, destination: Path, directory: bool) -> None:
    try:
        if not directory:
            os.replace(target, destination)
            return
        old = None
        if destination.exists():
            old = destination.with_name(f".{destination.name}{OLD}")
            _remove_own(old)
            os.rename(destination, old)         # a folder kspec exported (check_destination saw its marker)
        os.rename(target, destination)
        if old is not None:
            _remove_own(old)
    except OSError as exc:
        raise ExportError(Diagnostic(f"cannot move the export into place at {destination}: "
                                     f"{exc.strerror or exc}")) from None


def export_checked(writer, source, destination: Path, fmt: str) -> ExportReport:
    with staged(destination, writer.DIRECTORY) as target:
        info = _guarded(lambda: writer.write(source, target), f"cannot export the model to {fmt}")
        got = _guarded(lambda: writer.run(target, source, info),
                       f"the {fmt} export does not run in {writer.runtime_name()}")
        diff = max_abs_diff(source.expected, got)
        limit = tolerance(source.model, source.expected)
        if not diff <= limit:
            raise KspecError(Diagnostic(
                f"export differs from the Keras model by {diff:.3g} (limit {limit:.3g}) on "
                f"{source.n_examples} inputs; nothing was written to {destination}"))
    notes = list(source.notes) + list(info.get("notes", []))
    return ExportReport(fmt, destination, diff, source.n_examples, writer.runtime_name(), source.inputs_from, notes)


def _guarded(step, what: str):
    """Run one step; an unexpected exception from TensorFlow or a converter becomes a KspecError (exit 1)."""
    try:
        return step()
    except KspecError:
        raise
    except Exception as exc:
        if os.environ.get("KSPEC_DEBUG"):
            raise
        from ..builder.errors import keras_message

        raise KspecError(Diagnostic(f"{what}: {keras_message(exc)}")) from None


def max_abs_diff(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    if len(expected) != len(got):
        raise KspecError(Diagnostic(f"the export has {len(got)} outputs, the Keras model {len(expected)}"))
    worst = 0.0
    for i, (a, b) in enumerate(zip(expected, got)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            if a.size != b.size:
                raise KspecError(Diagnostic(f"output {i} of the export has shape {b.shape}, "
                                            f"the Keras model's {a.shape}"))
            b = b.reshape(a.shape)
        both_nan = np.isnan(a) & np.isnan(b)
        d = np.where(both_nan, 0.0, np.abs(a - b))
        if d.size:
            worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max()))
    return worst


def tolerance(model, expected: list[np.ndarray]) -> float:
    dtype = getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32")
    base = TOLERANCE.get(str(dtype), 1e-4)
    scale = max([1.0] + [float(np.nanmax(np.abs(np.asarray(e, np.float64)), initial=0.0)) for e in expected])
    return base * scale
