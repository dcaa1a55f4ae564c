"""`train.ensemble: N`: train N networks that differ only in their seed, and average their predictions.

    train_ensemble(spec, run_dir=None, resume=False, workers=1, verbose=None) -> Path

The run directory of an ensemble:

    RUN/
        spec.yaml            the resolved spec, as written (train.ensemble: N, the ensemble's seed)
        data.json            as in any run (copied from the first member: all members see the same data)
        members/member_0/    an ordinary, complete kspec run (spec.yaml, model.keras, history.csv,
        members/member_1/    metrics.json, checkpoints, ...) of the same spec with seed + i and
        ...                  train.ensemble 1
        model.keras          ONE Keras model: the spec's inputs -> each member model (named member_i)
                             -> keras.layers.Average per output (named after the output)
        metrics.json         train / validation / test: the averaged model's metrics (as in any run);
                             "ensemble": the same three sections again; "members": each member's
                             metrics, as its own metrics.json has them; "member_mean": their average
        summary.txt          the averaged model's summary

There is no history.csv (nor curves.png, tensorboard/) at the top: the ensemble itself has no
epochs. Each member's learning curves are in its own run directory.

What differs between members: the seed of the weight initialisation, of dropout and of the
order in which the training examples are shuffled (seed + i). What does not: the data. Each
member's spec pins `data.split.seed` to the ensemble's seed, so all members and the ensemble
share one train / validation / test split (otherwise a member's test examples would be another
member's training data), and `kspec evaluate members/member_i` re-creates that same split.

`--resume` (`resume=True`): a member whose run finished is not trained again, an unfinished one
continues from its last checkpoint (see run.py), a missing one starts; then the averaged
model and metrics are (re)written. A finished ensemble is not redone.

`model.keras` loads with plain `keras.saving.load_model` after `import compiler.layers` (kspec's
own layers, e.g. Log1p, may be inside the members), and `kspec evaluate` / `predict` work on
the ensemble's run directory as on any other.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, Diagnostic, SpecError
from ..rundir import (
    DATA,
    METRICS,
    MODEL,
    RunDir,
    RunDirError,
    atomic_copy,
    atomic_save_model,
    atomic_write_json,
    atomic_write_text,
    default_run_dir,
    discard,
    open_run,
    read_json,
)
from ..spec.types import Spec

MEMBERS = "members"
CHECKED = "train_ensemble checked the spec's sections (run.check_trainable)"


def member_name(i: int) -> str:
    return f"member_{i}"


def member_spec(spec: Spec, i: int) -> Spec:
    """The spec of member `i`: seed + i, train.ensemble 1, the name member_i (the Keras model's name)."""
    from ..spec.tree import plain

    tree = plain(spec.tree) if spec.tree is not None else None
    if isinstance(tree, dict):
        tree["name"] = member_name(i)
        tree["seed"] = spec.seed + i
        if isinstance(tree.get("train"), dict):
            tree["train"].pop("ensemble", None)
        if isinstance(tree.get("data"), dict):   # every member sees the ensemble's split
            tree["data"].setdefault("split", {}).setdefault("seed", spec.seed)
    data = spec.data
    if data is not None and data.split_seed is None:
        data = dataclasses.replace(data, split_seed=spec.seed)
    return dataclasses.replace(spec, name=member_name(i), seed=spec.seed + i, tree=tree, data=data,
                               train=dataclasses.replace(spec.train, ensemble=1) if spec.train is not None else None)


def train_ensemble(spec: Spec, run_dir=None, resume: bool = False, workers: int = 1,
                   verbose: int | None = None, splits=None) -> Path:
    """Train `spec.train.ensemble` members into RUN/members/, then save and evaluate their average.
    The members share one split of the data (`member_spec`), loaded once (or given as `splits`)."""
    from . import run as run_module

    run_module.check_workers(workers)
    check_single_process(spec)
    data, train = run_module.check_trainable(spec)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()
    count = int(train.ensemble)
    if splits is None:
        from ..data import load_splits

        splits = load_splits(data, spec.model, spec.seed)      # bad data fails before a run exists
    run = _open(spec, run_dir, resume)            # claimed and locked (rundir.claim); released below
    try:
        _write_spec(run, spec, resume)

        if resume and run.model.exists() and run.metrics.exists() and all(
                _finished(run.path / MEMBERS / member_name(i)) for i in range(count)):
            _say(verbose, f"the ensemble in {run.path} is already complete ({count} members); nothing to do")
            return run.path

        member_dirs = [run.path / MEMBERS / member_name(i) for i in range(count)]
        try:
            for i, directory in enumerate(member_dirs):
                if _finished(directory):
                    _say(verbose, f"member {i + 1}/{count} (seed {spec.seed + i}): already trained, in {directory}")
                    continue
                _say(verbose, f"member {i + 1}/{count} (seed {spec.seed + i}) -> {directory}")
                again = directory.is_dir() and RunDir(directory).has_run()
                _clear_session()
                run_module.train(member_spec(spec, i), run_dir=directory, resume=again, workers=workers,
                                 verbose=verbose, splits=splits)
        except (SpecError, DataError, RunDirError):
            # A wrong spec or data, found before any member trained: leave no half-made run behind
            # (as run.py does), so the corrected spec can use the same --run-dir.
            if run.fresh and not any(RunDir(d).has_run() for d in member_dirs):
                discard(run)
            raise

        return _finish(spec, run, member_dirs, verbose, started, splits)
    finally:
        run.release()


def check_single_process(spec: Spec, several_processes: bool = False) -> None:
    """The one check that an ensemble trains in one process (exit 2, at `train.ensemble`).

    Members train one after another in this process: never as one of several workers, whether
    asked on the command line (`several_processes`: --workers N, --cluster, --worker-index, checked
    by `kspec train` before TensorFlow loads) or by TF_CONFIG / `train.distribute: multi_worker`
    (checked again by the trainer), where every worker would claim the same run directory."""
    if spec.train is None or spec.train.ensemble <= 1:
        return
    from ..distribute.cluster import ClusterError
    from ..distribute.strategy import plan as distribution_plan

    if several_processes or distribution_plan(spec.train).multi_worker:
        tree = spec.tree
        train = tree.get("train") if isinstance(tree, dict) else None
        loc = getattr(train, "value_locs", {}).get("ensemble") if train is not None else None
        raise ClusterError(Diagnostic(
            "train.ensemble trains its members one after another in one process; it cannot be combined "
            "with multi-worker training (--workers, --cluster, TF_CONFIG, or train.distribute: multi_worker)",
            loc or spec.train.loc, path="train.ensemble",
            hint="train the ensemble on one machine (mirrored or single-device)"))


# -- the run directory ---------------------------------------------------------------------------

def _open(spec: Spec, run_dir, resume: bool) -> RunDir:
    return open_run(spec.name, run_dir, resume, latest_ensemble)


def latest_ensemble(name: str, root: str = "runs") -> Path | None:
    """The most recent ensemble run of `name` (one with a members/ folder), for --resume without --run-dir."""
    base = default_run_dir(name, root).parent          # runs/NAME, with NAME made safe for a path
    if not base.is_dir():
        return None
    runs = sorted(p for p in base.iterdir() if (p / MEMBERS).is_dir())
    return runs[-1] if runs else None


def _write_spec(run: RunDir, spec: Spec, resume: bool) -> None:
    """spec.yaml; on resume the model, data, seed and ensemble size must be those of the run."""
    import yaml

    from ..spec.tree import plain

    assert spec.data is not None, CHECKED
    tree = plain(spec.tree)
    source = (tree.get("data") or {}).get("source") if isinstance(tree, dict) else None
    if "path" in spec.data.params and isinstance(source, dict) and spec.data.source in source:
        source[spec.data.source] = str(spec.data.params["path"])   # spec.yaml lives elsewhere
    if resume and run.spec.exists():
        try:
            old = yaml.safe_load(run.spec.read_text()) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        changed = [k for k in ("model", "data", "seed") if old.get(k) != tree.get(k)]
        if (old.get("train") or {}).get("ensemble") != (tree.get("train") or {}).get("ensemble"):
            changed.append("train.ensemble")
        if changed:
            raise RunDirError(Diagnostic(
                f"--resume: the spec's {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from those of the ensemble in {run.path} "
                f"(see {run.spec}); a run can only be continued with the same model, data and members",
                hint="use the run's own spec.yaml, or start a new run without --resume"))
    atomic_write_text(run.spec, yaml.safe_dump(tree, sort_keys=False))


def _finished(directory: Path) -> bool:
    state = read_json(RunDir(directory).state) if directory.is_dir() else None
    return bool(state and state.get("finished")) and (directory / MODEL).exists()


def _clear_session() -> None:
    """Drop the previous member's graph state (each member is a fresh model; the seed is set by run.py)."""
    import keras

    keras.backend.clear_session()


# -- the averaged model ------------------------------------------------------------------------

def average_model(spec: Spec, members: list) -> Any:
    """One Functional model: the spec's inputs, each member applied to them, outputs averaged."""
    import keras

    inputs = [keras.Input(shape=tuple(i.shape), dtype=i.dtype, name=i.name) for i in spec.model.inputs]
    feed = inputs[0] if len(inputs) == 1 else inputs
    results = []
    for i, member in enumerate(members):
        member.name = member_name(i)
        out = member(feed)
        results.append(list(out) if isinstance(out, (list, tuple)) else
                       [out[o] for o in spec.model.outputs] if isinstance(out, dict) else [out])
    outputs = [keras.layers.Average(name=name)([r[k] for r in results])
               for k, name in enumerate(spec.model.outputs)]
    return keras.Model(feed, outputs[0] if len(outputs) == 1 else outputs, name=_model_name(spec.name))


def _model_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "ensemble"


def _finish(spec: Spec, run: RunDir, member_dirs: list[Path], verbose: int, started: float, splits) -> Path:
    assert spec.train is not None, CHECKED
    import keras

    import compiler.layers  # noqa: F401  (kspec's own layers, for loading the members)

    from ..builder import compile_model
    from ..data import make_dataset

    _clear_session()
    members = [keras.saving.load_model(d / MODEL) for d in member_dirs]
    model = average_model(spec, members)
    compile_model(model, spec.train, spec.model)
    # Create the optimizer's variables now (fit would): a model saved with an unbuilt optimizer
    # warns, when loaded, that it skips the optimizer variables it expected.
    model.optimizer.build(model.trainable_variables)
    atomic_save_model(model, run.model)
    if (member_dirs[0] / DATA).exists():
        atomic_copy(member_dirs[0] / DATA, run.data)
    try:
        from ..builder import describe

        atomic_write_text(run.summary, describe(model, None) + "\n")
    except Exception:       # a summary is a convenience, never a reason to fail a run
        pass

    ensemble = {}
    for name, part in splits.splits().items():
        ds = make_dataset(part, spec.train.batch_size, shuffle=False, seed=spec.seed)
        ensemble[name] = _floats(model.evaluate(ds, verbose=0, return_dict=True))

    member_metrics = []
    for i, directory in enumerate(member_dirs):
        m = read_json(directory / METRICS) or {}
        member_metrics.append({"name": member_name(i), "seed": spec.seed + i,
                               "run": str(Path(MEMBERS) / member_name(i)),
                               **{k: m[k] for k in ("train", "validation", "test") if k in m},
                               "epochs": m.get("epochs"), "seconds": m.get("seconds")})
    metrics: dict[str, Any] = dict(ensemble)
    metrics.update({
        "ensemble": ensemble,
        "members": member_metrics,
        "member_mean": _mean_sections(member_metrics),
        "ensemble_size": len(member_dirs),
        "seconds": round(sum(m.get("seconds") or 0.0 for m in member_metrics), 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
    })
    atomic_write_json(run.metrics, metrics)

    if verbose:
        print(f"run directory: {run.path}")
        part = "test" if "test" in ensemble else "validation" if "validation" in ensemble else "train"
        mean = metrics["member_mean"].get(part, {})
        print(f"{part}, ensemble of {len(member_dirs)}: " + "  ".join(f"{k} {v:.4g}" for k, v in ensemble[part].items()))
        print(f"{part}, member average: " + "  ".join(f"{k} {v:.4g}" for k, v in mean.items()))
        sys.stdout.flush()
    return run.path


def _mean_sections(members: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for section in ("train", "validation", "test"):
        rows = [m[section] for m in members if section in m]
        if rows:
            keys = [k for k in rows[0] if all(k in r for r in rows)]
            out[section] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return out


def _floats(logs: dict) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        try:
            out[key] = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            continue
    return out


def _say(verbose: int, text: str) -> None:
    if verbose:
        print(text, flush=True)
