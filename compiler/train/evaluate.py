"""`kspec evaluate RUN [--data FILE]`: the metrics of a saved run.

Without --data: the run's own test split, re-created from its spec.yaml (same
source, same seed, so the same examples) and evaluated with the run's batch size:
the numbers match metrics.json's test section. With --data: a CSV or NPZ file
holding inputs and targets (NPZ: `y`, or one array per output name; CSV: the
spec's target column(s), or a column named after the output).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from ..rundir import MODEL, SPEC, RunDir, RunDirError, read_json
from ..spec.types import Spec


@dataclass
class LoadedRun:
    run: RunDir
    spec: Spec
    model: Any
    info: dict            # data.json: tasks, class names, feature names


def load_run(path: str | os.PathLike, with_model: bool = True) -> LoadedRun:
    """The run's re-validated spec, its model.keras and data.json."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise RunDirError(Diagnostic(f"run directory {run.path} does not exist"))
    for required in (run.spec, run.model):
        if not required.exists():
            what = SPEC if required == run.spec else MODEL
            hint = ("the run did not finish; continue it with `kspec train SPEC --run-dir "
                    f"{run.path} --resume`" if required == run.model and run.last.exists() else "")
            raise RunDirError(Diagnostic(f"{run.path} holds no {what}; is it a kspec run directory?", hint=hint))
    from ..spec.validate import load_spec

    spec = load_spec(run.spec)
    # The run's `plugins:` are declared, never imported here: the command line loads them (--plugin).
    model = _load_model(run.model) if with_model else None
    return LoadedRun(run, spec, model, read_json(run.data) or {})


def _load_model(path: Path):
    import keras

    import compiler.layers  # noqa: F401  (registers kspec's own layers for deserialization)

    from .. import trust

    try:
        return keras.saving.load_model(path, safe_mode=trust.safe_mode_for(path))
    except Exception as exc:
        from ..builder.errors import keras_message

        if trust.is_safe_mode_refusal(exc):
            raise RunDirError(trust.refused(path, str(exc))) from None
        raise RunDirError(Diagnostic(f"cannot load {path}: {keras_message(exc)}")) from None


def info_or_splits(loaded: LoadedRun) -> dict:
    """data.json, or (for a run without one) the same facts from re-loading the data."""
    if loaded.info.get("tasks") is not None:
        return loaded.info
    if loaded.spec.data is None:   # a model built from a spec without `data`: nothing to re-load
        return {}
    from ..data import load_splits

    splits = load_splits(loaded.spec.data, loaded.spec.model, loaded.spec.seed)
    return {"tasks": splits.tasks, "class_names": splits.class_names, "feature_names": splits.feature_names,
            "targets": splits.targets}


def evaluate_run(run: str | os.PathLike, data: str | None = None, verbose: bool = True) -> dict[str, float]:
    """Metrics of the run's model on its test split (or on `data`); printed and returned."""
    loaded = load_run(run)
    spec = loaded.spec
    batch = spec.train.batch_size if spec.train else 32
    from ..data import make_dataset
    from ..data.split import Arrays

    if data is None:
        if spec.data is None:
            raise RunDirError(Diagnostic(f"the spec of {loaded.run.path} has no data section; pass --data FILE"))
        from ..data import bound_masks, load_splits

        splits = load_splits(spec.data, spec.model, spec.seed)
        outputs = loaded.model.outputs if isinstance(loaded.model.outputs, (list, tuple)) else [loaded.model.outputs]
        splits = bound_masks(splits, {o: tuple(t.shape[1:]) for o, t in zip(spec.model.outputs, outputs)})
        part, name = splits.test, "test"
        if part is None:
            part, name = splits.validation, "validation"
        if part is None:
            raise RunDirError(Diagnostic(f"the run {loaded.run.path} has no test or validation split",
                                         hint="pass --data FILE to evaluate on other data"))
    else:
        info = info_or_splits(loaded)
        from ..data import read_inputs

        if os.path.isdir(data) and len(spec.model.inputs) == 1 and len(spec.model.outputs) == 1:
            from ..data.inputs import image_folder_split  # class sub-folders, streamed

            names = (info.get("class_names") or {}).get(spec.model.outputs[0]) or []
            one_hot = spec.data is not None and any(p.name == "one_hot" for p in spec.data.preprocess)
            part = image_folder_split(data, spec.model, list(names), one_hot,
                                      spec.data.on_bad_file if spec.data is not None else "error")
            name = os.path.basename(data.rstrip("/"))
        else:
            x = read_inputs(data, spec.model, info.get("feature_names") or {})
            part, name = (Arrays(x, read_targets(data, spec, info, len(next(iter(x.values()))))),
                          os.path.basename(data))
    ds = make_dataset(part, batch, shuffle=False, seed=spec.seed, cache=False)
    try:
        metrics = loaded.model.evaluate(ds, verbose=0, return_dict=True)
    except Exception as exc:
        from ..builder.errors import keras_message
        from ..data.stream import explain_failure

        explain_failure(ds)            # a streamed file that cannot be read: name it

        raise DataError(Diagnostic(f"cannot evaluate on {name}: {keras_message(exc)}")) from None
    metrics = {k: float(np.asarray(v).reshape(())) for k, v in metrics.items()}
    if verbose:
        from .callbacks import format_number

        print(f"{name} ({len(part)} examples): " + "  ".join(f"{k} {format_number(v)}" for k, v in metrics.items()))
    return metrics


# -- targets of a --data file ----------------------------------------------------------------

def read_targets(path: str, spec: Spec, info: dict, n: int) -> dict[str, np.ndarray]:
    """Output name -> targets encoded as in training (class indices, one-hot, float32 values)."""
    outputs = list(spec.model.outputs)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        raw = _npz_targets(path, spec, outputs)
    elif ext in (".csv", ".tsv", ".txt"):
        raw = _csv_targets(path, spec, outputs, "\t" if ext == ".tsv" else ",")
    else:
        raise DataError(Diagnostic("--data takes a .csv or .npz file with inputs and targets", Loc(path)))
    out = {}
    for output, values in raw.items():
        if len(values) != n:
            raise DataError(Diagnostic(f"{os.path.basename(path)} has {n} inputs but {len(values)} targets for "
                                       f"output {output!r}", Loc(path)))
        out[output] = _encode(values, output, spec, info, path)
    return out


def _npz_targets(path: str, spec: Spec, outputs: list[str]) -> dict[str, np.ndarray]:
    given = spec.data.params.get("y") if spec.data is not None and spec.data.source == "npz" else None
    with np.load(path, allow_pickle=False) as archive:
        present = list(archive.files)
        keys = {}
        for output in outputs:
            candidates = []
            if isinstance(given, dict):
                candidates.append(given.get(output))
            elif isinstance(given, str) and len(outputs) == 1:
                candidates.append(given)
            candidates += [output] + (["y"] if len(outputs) == 1 else [])
            key = next((c for c in candidates if c and c in present), None)
            if key is None:
                raise DataError(Diagnostic(f"{os.path.basename(path)} has no targets for output {output!r} "
                                           f"(looked for {', '.join(repr(c) for c in candidates if c)}; arrays: "
                                           f"{', '.join(present)})", Loc(path)))
            keys[output] = key
        return {o: archive[k] for o, k in keys.items()}


def _csv_targets(path: str, spec: Spec, outputs: list[str], delimiter: str) -> dict[str, np.ndarray]:
    from ..data.csvfile import parse_column, read_csv

    f = read_csv(path, delimiter)
    target = spec.data.params.get("target") if spec.data is not None and spec.data.source == "csv" else None
    out = {}
    for output in outputs:
        if isinstance(target, dict):
            cols = target[output]          # training checked that the mapping names every output
        elif target is not None and len(outputs) == 1:
            cols = target
        else:
            cols = output if output in f.header else ("target" if "target" in f.header and len(outputs) == 1
                                                      else output)
        cols = [cols] if isinstance(cols, str) else list(cols)
        for c in cols:
            f.index(c, "target column")
        out[output] = parse_column(f, cols[0]) if len(cols) == 1 else np.stack([parse_column(f, c) for c in cols], 1)
    return out


def _encode(values: np.ndarray, output: str, spec: Spec, info: dict, path: str) -> np.ndarray:
    task = (info.get("tasks") or {}).get(output, "regression")
    if task != "classification":
        values = np.asarray(values, dtype=np.float32)
        return values[:, None] if values.ndim == 1 else values
    names = (info.get("class_names") or {}).get(output) or []
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] > 1:          # already one-hot
        return values.astype(np.float32)
    flat = values.reshape(len(values))
    index = {str(n): i for i, n in enumerate(names)}
    labels = np.empty(len(flat), dtype=np.int32)
    for i, v in enumerate(flat):
        key = str(int(v)) if isinstance(v, (np.integer, np.floating)) and float(v).is_integer() else str(v)
        if key not in index:
            if isinstance(v, (np.integer, np.floating)) and float(v).is_integer() and not names:
                labels[i] = int(v)
                continue
            raise DataError(Diagnostic(f"target {v!r} (example {i}, counting from 0) is not one of the classes the "
                                       f"run was trained on ({', '.join(names)})", Loc(path)))
        labels[i] = index[key]
    one_hot = any(p.name == "one_hot" for p in (spec.data.preprocess if spec.data else ()))
    if one_hot:
        return np.eye(max(len(names), int(labels.max()) + 1), dtype=np.float32)[labels]
    return labels
