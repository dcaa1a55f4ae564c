"""`kspec export RUN --format keras|saved_model|tflite|onnx -o PATH`: a run's model in a deployable format.

    export_run(run, fmt, output) -> ExportReport

Every export is written next to its destination under a temporary name, run in
its own runtime on a few inputs (real test examples when the run's spec.yaml
names a data source, else seeded random inputs) and compared with the Keras
model's predictions; only an export that matches is moved into place. So a
failed export never leaves a half-written or wrong file at PATH.

    source.py      find and load the model (run directory or .keras file) and the check inputs
    signature.py   the model's inputs and outputs as TensorSpecs and names, shared by the formats
    keras_file.py, saved_model.py, tflite.py, onnx.py   one writer + runner per format
    verify.py      staging next to the destination, comparison, publication

Importing this package is cheap; TensorFlow is imported when `export_run` is called.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Diagnostic, KspecError

FORMATS = ("keras", "saved_model", "tflite", "onnx")

__all__ = ["FORMATS", "ExportError", "ExportReport", "export_run"]


class ExportError(KspecError):
    """The export cannot be attempted (no such run, unusable destination, missing extra). Exit 2."""

    exit_code = 2


@dataclass
class ExportReport:
    format: str
    path: Path
    max_abs_diff: float
    n_examples: int
    runtime: str                           # what ran the export for the check, e.g. "onnxruntime 1.31.1"
    inputs: str = "random"                 # where the check inputs came from: "test split", "random", ...
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"exported {self.format} to {self.path} (checked with {self.runtime} on {self.n_examples} inputs: "
                f"max |difference| = {self.max_abs_diff:.1e})")


def export_run(run: str | os.PathLike, fmt: str, output: str | os.PathLike, *, n_examples: int = 8,
               verbose: bool = True) -> ExportReport:
    """Export the model of `run` (a run directory or a .keras file) as `fmt` to `output`, checked."""
    if fmt not in FORMATS:
        raise ExportError(Diagnostic(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}"))
    from . import verify
    from .source import load_source

    writer = _writer(fmt)
    writer.check_available()                       # a missing extra fails before the model loads
    destination = verify.check_destination(Path(output), directory=writer.DIRECTORY, suffix=writer.SUFFIX,
                                             default_name=writer.DEFAULT_NAME)
    source = load_source(Path(run), n_examples)
    report = verify.export_checked(writer, source, destination, fmt)
    if verbose:
        print(report.line(), flush=True)
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
    return report


def _writer(fmt: str):
    """The writer module of `fmt`, imported only when asked for (each pulls in its own runtime)."""
    if fmt == "keras":
        from . import keras_file
        return keras_file
    if fmt == "saved_model":
        from . import saved_model
        return saved_model
    if fmt == "tflite":
        from . import tflite
        return tflite
    from . import onnx
    return onnx
