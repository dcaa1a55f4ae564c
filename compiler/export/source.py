"""What an export starts from: the model (from a run directory or a .keras file) and the check inputs.

Check inputs are a few real examples of the run's test split when its spec.yaml
names a data source (validation or train split if there is no test split), and
otherwise seeded random inputs shaped like the model's inputs: standard normal
floats, integers in [0, 10) for integer inputs (token ids, category indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Diagnostic, KspecError
from ..rundir import CHECKPOINTS, LAST, MODEL, SPEC
from . import ExportError
from .signature import flat_inputs, keras_outputs


@dataclass
class Source:
    model: Any
    model_path: Path
    run_dir: Path | None
    inputs: list[np.ndarray]               # one array per model input, in keras.tree.flatten(model.input) order
    expected: list[np.ndarray]             # the Keras model's outputs for them, flattened
    inputs_from: str                       # "test split", "random", ...
    notes: list[str] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return int(len(self.inputs[0])) if self.inputs else 0


def load_source(run: Path, n_examples: int) -> Source:
    model_path, run_dir = _locate(run)
    notes: list[str] = []
    spec = _read_spec(run_dir, notes) if run_dir is not None else None
    # The run's `plugins:` are declared, never imported here: the command line loads them (--plugin).
    model = load_model(model_path)
    if not hasattr(model, "input") or _no_inputs(model):
        raise ExportError(Diagnostic(f"cannot export {model_path}: the model has no declared inputs "
                                     "(only Functional and built Sequential models can be exported)"))
    inputs, inputs_from = None, "random"
    if spec is not None and spec.data is not None:
        inputs, inputs_from = _data_inputs(spec, model, n_examples, notes)
    if inputs is None:
        inputs = random_inputs(model, n_examples)
    expected = keras_outputs(model, inputs)
    return Source(model, model_path, run_dir, inputs, expected, inputs_from, notes)


def _locate(run: Path) -> tuple[Path, Path | None]:
    if run.is_file():
        if run.suffix != ".keras":
            raise ExportError(Diagnostic(f"{run} is not a run directory or a .keras model file"))
        return run, None
    if not run.exists():
        raise ExportError(Diagnostic(f"run directory {run} does not exist"))
    if not run.is_dir():
        raise ExportError(Diagnostic(f"{run} is not a run directory or a .keras model file"))
    model = run / MODEL
    if not model.is_file():
        last = run / CHECKPOINTS / LAST
        hint = (f"the run did not finish; continue it with `kspec train SPEC --run-dir {run} --resume`, "
                f"or export its last checkpoint: kspec export {last} ..." if last.is_file() else "")
        raise ExportError(Diagnostic(f"{run} holds no {MODEL}; is it a kspec run directory?", hint=hint))
    return model, run


def load_model(path: Path):
    import keras

    import compiler.layers  # noqa: F401  (registers kspec's own layers for deserialization)

    from .. import trust

    try:
        return keras.saving.load_model(path, safe_mode=trust.safe_mode_for(path), compile=False)
    except Exception as exc:
        from ..builder.errors import keras_message

        if trust.is_safe_mode_refusal(exc):
            raise ExportError(trust.refused(path, str(exc))) from None
        raise ExportError(Diagnostic(f"cannot load {path}: {keras_message(exc)}")) from None


def _no_inputs(model) -> bool:
    try:
        return not flat_inputs(model)
    except (AttributeError, ValueError):
        return True


def _read_spec(run_dir: Path, notes: list[str]):
    path = run_dir / SPEC
    if not path.is_file():
        return None
    from ..spec.validate import load_spec

    try:
        return load_spec(str(path))
    except KspecError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        notes.append(f"the run's spec.yaml does not validate ({first}); checked on random inputs")
        return None


def _data_inputs(spec, model, n: int, notes: list[str]) -> tuple[list[np.ndarray] | None, str]:
    from ..data import load_splits

    try:
        splits = load_splits(spec.data, spec.model, spec.seed)
    except KspecError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        notes.append(f"cannot load the run's data ({first}); checked on random inputs")
        return None, "random"
    # the first non-empty split of test, validation, train (train, the last resort, always exists)
    name, chosen = next(((name, part) for name, part in (("test split", splits.test), ("validation split", splits.validation))
                         if part is not None and len(part)), ("train split", splits.train))
    part = chosen.sample(n)           # decoded, for a streamed split
    out = []
    for tensor in flat_inputs(model):
        array = part.x.get(tensor.name)
        if array is None and len(part.x) == 1 and len(flat_inputs(model)) == 1:
            array = next(iter(part.x.values()))
        if array is None:
            notes.append(f"the data has no values for model input {tensor.name!r}; checked on random inputs")
            return None, "random"
        out.append(np.asarray(array[:n]).astype(_numpy_dtype(tensor.dtype), copy=False))
    return out, name


def random_inputs(model, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for tensor in flat_inputs(model):
        shape = (n,) + tuple(4 if d is None else int(d) for d in tensor.shape[1:])
        dtype = _numpy_dtype(tensor.dtype)
        if np.issubdtype(dtype, np.bool_):
            out.append(rng.integers(0, 2, shape).astype(bool))
        elif np.issubdtype(dtype, np.integer):
            out.append(rng.integers(0, 10, shape).astype(dtype))
        elif np.issubdtype(dtype, np.floating):
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            raise ExportError(Diagnostic(f"cannot make check inputs of dtype {tensor.dtype} for model input "
                                         f"{tensor.name!r}; export a run directory whose spec has data"))
    return out


def _numpy_dtype(dtype) -> np.dtype:
    import tensorflow as tf

    return np.dtype(tf.as_dtype(str(dtype)).as_numpy_dtype)
