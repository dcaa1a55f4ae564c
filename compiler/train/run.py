"""The training driver: a validated Spec in, a trained model and a complete run directory out.

    claim the run directory (empty, or --resume)  -> write spec.yaml
    seeds, determinism, mixed precision
    data: load_splits -> input_layers (fitted on train) -> build_model -> compile_model -> check_labels
    for each phase (train.phases, or one phase of train.epochs):
        set `trainable`, re-compile if the phase changes anything, fit(initial_epoch=...)
        (per epoch: history.csv row, checkpoints/last.keras, checkpoints/state.json)
    model.keras (best or last weights), metrics.json, curves.png

Phases: epochs are counted globally, so history.csv is continuous. A phase that
sets `trainable`, `optimizer` or `learning_rate` re-compiles the model with a
fresh optimizer (as a hand-written fine-tuning step does). EarlyStopping ends the
phase it stops, and the next phase starts at the next epoch.

Resume (`--resume`) reloads checkpoints/last.keras (weights, optimizer state and
compile state), cuts history.csv back to the epochs it holds, puts back the
counters of the spec's stateful callbacks (EarlyStopping, ReduceLROnPlateau,
ModelCheckpoint: wait, best, best_epoch, cooldown...) and the best monitored
value, and continues with `fit(initial_epoch=epoch_done)` in the phase it was in.
EarlyStopping's in-memory best weights (restore_best_weights) come back from
best.keras when it monitors the same quantity as train.monitor. What is NOT
restored exactly: the shuffling order of later epochs (tf.data's reshuffle state
is not saved; the resumed run draws a different, still seeded, order), other
state of user callbacks, and EarlyStopping's best weights when it monitors
something other than train.monitor. The model and data sections of the spec must
be those of the run; the train section may change (e.g. more epochs), except what the
checkpoint was compiled with (loss, loss_weights, metrics, optimizer): a resume that changes
those is refused, naming what changed (rather than training on with the checkpoint's old loss
while spec.yaml records the new one). A finished run is not extended: resuming it does nothing.

Why not Keras's BackupAndRestore / ModelCheckpoint: both write their files in
place (a kill mid-write leaves a corrupt file), BackupAndRestore deletes its
backup when training ends and knows nothing of phases. kspec's RunRecorder
writes everything atomically instead (see rundir.py and callbacks.py).

A spec or data error found after the run directory was claimed (a label out of
range, a bad class_weight...) removes what this run wrote, so the corrected spec
can use the same --run-dir.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..data.split import Splits
from ..errors import DataError, Diagnostic, KspecError, SpecError, TrainingError
from ..rundir import (
    RunDir,
    RunDirError,
    atomic_save_model,
    atomic_write_json,
    atomic_write_text,
    claim,
    discard,
    latest_run_dir,
    open_run,
    resolve_inside,
    writes_path,
)
from ..spec.types import Component, DataSpec, PhaseSpec, Spec, TrainSpec
from . import history as history_io
from .interrupt import interruptible, shielded
from .state import ResumeState, where_to_start

# The stages below `train()` run only after `check_trainable`.
SPEC_CHECKED = "train() called check_trainable, so the spec has `data` and `train`"


def check_workers(workers: int) -> None:
    """`train()` is one worker: N > 1 local processes are started by the command line's launcher."""
    if workers is not None and int(workers) > 1:
        raise KspecError(Diagnostic(
            f"train() runs one worker process; {workers} workers are started by `kspec train SPEC --workers "
            f"{workers}` (compiler.distribute.launch)",
            hint="or start each worker yourself with --cluster HOST:PORT,... --worker-index I"))
    if workers is not None and int(workers) < 1:
        raise KspecError(Diagnostic(f"--workers must be at least 1, got {workers}"))


def check_trainable(spec: Spec) -> tuple[DataSpec, TrainSpec]:
    """The spec's `data` and `train` sections, which training needs; a SpecError (exit 2) without one."""
    if spec.data is None:
        raise SpecError(Diagnostic("the spec has no `data` section, so there is nothing to train on",
                                   path="data"))
    if spec.train is None:
        raise SpecError(Diagnostic("the spec has no `train` section (optimizer, loss, epochs...)", path="train"))
    return spec.data, spec.train


def train(spec: Spec, run_dir: str | os.PathLike | None = None, resume: bool = False, workers: int = 1,
          verbose: int | None = None, splits: Splits | None = None) -> Path:
    """Train `spec`; return the run directory. Raises SpecError/DataError (exit 2), TrainingError (exit 1).

    `splits`: the spec's data, when the caller has loaded it already (`kspec train` does, before
    TensorFlow starts, so that bad data is reported in a second rather than after TF's start-up).
    """
    check_workers(workers)
    check_trainable(spec)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    started = time.perf_counter()

    from ..distribute.strategy import plan as distribution_plan

    plan = distribution_plan(spec.train)
    if not plan.is_chief:
        return _train_worker(spec, run_dir, resume, verbose, started, plan, splits)
    run = _open_run(spec, run_dir, resume)          # claimed and locked (rundir.claim)
    try:
        return _train(spec, run, resume, verbose, started, plan, splits)
    except (SpecError, DataError, RunDirError):
        # Wrong input found before any training: leave no half-made run behind, so that the
        # corrected spec can be run with the same --run-dir (only files kspec wrote are removed).
        if run.fresh and not run.last.exists():
            discard(run)
        raise
    finally:
        run.release()


def _train_worker(spec: Spec, run_dir, resume: bool, verbose: int, started: float, plan,
                  splits: Splits | None) -> Path:
    """A multi-worker run's other workers (not the chief): the very same training, every file written to
    a temporary directory that is deleted at the end (the chief alone writes the run directory). Saving
    a model reads its variables, which may take collective ops; so every worker must save as the chief
    does, as in TensorFlow's multi-worker tutorial. With --resume, the chief's checkpoint is copied in
    first, so that every worker restores the same state."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=f"kspec-worker{plan.rank}-"))
    try:
        if resume:
            _copy_run(RunDir(_chief_run_dir(spec, run_dir)), RunDir(scratch / "run"))
        run = claim(scratch / "run", resume=resume)
        try:
            _train(spec, run, resume, 0, started, plan, splits)
        finally:
            run.release()
        _say(verbose, f"worker {plan.rank} of {plan.workers}: done (the chief, worker 0, wrote the run directory)")
        return Path(run_dir) if run_dir is not None else run.path
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _chief_run_dir(spec: Spec, run_dir) -> Path:
    """The run directory a resuming worker restores from (the chief's, on a shared file system)."""
    if run_dir is None:
        latest = latest_run_dir(spec.name)
        if latest is None:
            raise RunDirError(Diagnostic(f"--resume: no earlier run of '{spec.name}' under runs/{spec.name}/",
                                         hint="name the run to continue with --run-dir DIR"))
        return latest
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(Diagnostic(
            f"--resume: run directory {run_dir} does not exist on this worker",
            hint="put the run directory on storage all workers share, or copy the chief's run directory here"))
    return path


def _copy_run(source: RunDir, target: RunDir) -> None:
    """What a resume reads (kspec's marker, spec, history, checkpoints and their state), copied file by file."""
    import shutil

    target.checkpoints.mkdir(parents=True, exist_ok=True)
    for src, dst in ((source.marker, target.marker), (source.spec, target.spec), (source.history, target.history), (source.data, target.data),
                     (source.last, target.last), (source.best, target.best), (source.state, target.state)):
        if src.is_file():
            shutil.copyfile(src, dst)


def _train(spec: Spec, run: RunDir, resume: bool, verbose: int, started: float, plan,
           splits: Splits | None = None) -> Path:
    assert spec.train is not None, SPEC_CHECKED
    state = ResumeState.from_json(run.read_state()) if resume else None
    phases = _phases(spec)
    if state is not None and state.finished:
        _write_spec(run, spec, resume=True, check_only=True)
        _say(verbose, f"the run in {run.path} is already complete ({state.epoch_done} epochs); nothing to do")
        return run.path
    _write_spec(run, spec, resume=state is not None)
    if resume and state is None and run.has_run():
        _say(verbose, f"no checkpoint in {run.path} yet: training from the beginning")

    import keras
    import tensorflow as tf

    import compiler.layers  # noqa: F401  (kspec's own layers must be registered to load checkpoints)

    from ..distribute.strategy import start as start_distribution

    # First of all: GPU memory growth, and the strategy (a multi-worker one waits here for its cluster).
    distribution = start_distribution(plan, spec.train)
    caller_policy = keras.config.dtype_policy()
    precision = _configure(spec, keras, tf)
    if distribution.replicas > 1 or distribution.mode == "multi_worker":
        _say(verbose, distribution.describe(spec.train.batch_size))
    if precision.setting == "auto" or precision.policy != "float32":
        _say(verbose, precision.describe())
    try:
        with distribution.strategy.scope():
            return _train_in_scope(spec, run, state, phases, verbose, started, distribution, splits, precision)
    finally:
        # The policy is global Keras state: a caller's models built after train() (a notebook, a
        # test, the next ensemble member) must not silently become bfloat16 because this run was.
        keras.mixed_precision.set_global_policy(caller_policy)


def _train_in_scope(spec: Spec, run: RunDir, state: ResumeState | None, phases, verbose: int, started: float,
                    distribution, splits: Splits | None, precision=None) -> Path:
    """Data, model, fit, evaluate: everything that creates or reads variables, inside the strategy's scope."""
    assert spec.train is not None, SPEC_CHECKED
    import keras

    from ..data import bound_masks, check_labels, input_layers, load_splits, make_dataset

    prechecked = splits is not None            # `kspec train` loaded the data and checked the losses (warnings)
    if splits is None:
        assert spec.data is not None, SPEC_CHECKED
        splits = load_splits(spec.data, spec.model, spec.seed)
    _write_data_info(run, splits, spec)
    for note in splits.notes:
        _say(verbose, note)
    if splits.validation is None and spec.train.monitor.startswith("val_"):
        monitor = spec.train.monitor.removeprefix("val_")
        _say(verbose, f"note: no validation split, so train.monitor {spec.train.monitor} falls back to {monitor}")
    else:
        monitor = spec.train.monitor

    if state is not None:
        model = _load_checkpoint(run, keras)
        rows = [r for r in history_io.read_history(run.history) if r["epoch"] < state.epoch_done]
        history_io.write_history(run.history, rows)
    else:
        model = _build(spec, splits, input_layers, log=lambda line: _say(verbose, line))
        from ..diagnose.gradcheck import check_before_training

        check_before_training(spec, model, verbose)   # `diagnostics: {gradient_check: true}`
        if distribution.synchronized:
            from ..distribute.strategy import synchronize_batchnorm

            synchronize_batchnorm(model, spec.model)   # global batch statistics across replicas
        rows = []
        if run.history.exists():
            history_io.write_history(run.history, rows)
    from .losscheck import check_losses

    check_losses(spec, splits, _output_units(spec, model), warn=not prechecked)   # loss vs labels (issue 13)
    check_labels(splits, _output_units(spec, model))
    splits = bound_masks(splits, _output_shapes(spec, model))
    _write_summary(run, model)

    batch = spec.train.batch_size
    begin = where_to_start(state, [p.epochs for p in phases])
    done = begin.done
    if distribution.mode == "multi_worker":       # image files: each decoded by one worker only (shard.py)
        from ..data.shard import distributed_dataset

        def feed(part, shuffle: bool, seed: int):
            return distributed_dataset(part, distribution.strategy, distribution.plan.workers, batch, shuffle, seed)
    else:
        def feed(part, shuffle: bool, seed: int):
            return make_dataset(part, batch, shuffle=shuffle, seed=seed)
    train_ds = feed(splits.train, True, spec.seed + done)
    val_ds = feed(splits.validation, False, spec.seed) if splits.validation else None
    class_weight = _class_weight(spec, splits, model)

    from .callbacks import EpochGuard, EpochPrinter, EpochTensorBoard, RunRecorder

    guard = EpochGuard()
    spec_callbacks = _spec_callbacks(spec, run)
    stateful = {f"{i}:{type(cb).__name__}": cb for i, cb in enumerate(spec_callbacks)}
    callbacks: list[Any] = [guard, *spec_callbacks]
    if not any(isinstance(cb, keras.callbacks.TensorBoard) for cb in spec_callbacks):
        callbacks.append(EpochTensorBoard(str(run.tensorboard)))
    recorder = RunRecorder(run, guard, rows, monitor=monitor, save_best=spec.train.keep == "best",
                           monitor_loc=spec.train.loc,
                           best_value=state.best_value if state else None,
                           best_epoch=state.best_epoch if state else None,
                           phase={}, stateful=stateful, every_seconds=_checkpoint_seconds(spec, distribution))
    callbacks.append(recorder)
    from ..diagnose.update_ratio import diagnostic_callbacks

    callbacks.extend(diagnostic_callbacks(spec, run.path, verbose=verbose))   # `diagnostics: {update_ratio: true}`
    printer = EpochPrinter(0, guard) if verbose == 2 else None
    if printer:
        callbacks.append(printer)

    # Where to start: a fresh run at phase 0; a resumed one in its phase, or the next if that one ended.
    index, start, restore, fresh_phase = begin.phase, begin.start, begin.restore, begin.fresh_phase

    for i in range(index, len(phases)):
        phase = phases[i]
        if i > index:
            start, fresh_phase, restore = done, True, None
        if fresh_phase:
            _apply_phase(model, phase, spec)
        end = start + phase.epochs
        recorder.phase = {"index": i, "name": phase.name, "start": start, "epochs": phase.epochs}
        recorder.restore = restore
        if printer:
            printer.total = start + sum(p.epochs for p in phases[i:])
            printer.phase = phase.name if len(phases) > 1 else None
        if done == 0 and state is None:
            # An initial checkpoint: a run that fails in its first epoch still leaves a loadable model.
            initial = recorder.state(0).to_json()
            atomic_save_model(model, run.last, state=initial)
            atomic_write_json(run.state, initial)
        if len(phases) > 1 and verbose:
            _say(verbose, f"phase {i + 1}/{len(phases)} '{phase.name}': epochs {start}..{end - 1}, "
                          f"{_trainable_count(model):,} trainable parameters")
        if done < end:
            _fit(model, train_ds, val_ds, done, end, callbacks, 1 if verbose == 1 else 0, class_weight, guard, run,
                 recorder)
        done = len(recorder.rows) and recorder.rows[-1]["epoch"] + 1
        if i + 1 < len(phases):
            # Phase boundary: checkpoint the weights the next phase starts from (EarlyStopping may have
            # restored its best ones) and say so in the state, so a resume starts the next phase.
            boundary = recorder.state(done, phase_finished=True).to_json()
            atomic_save_model(model, run.last, state=boundary)
            atomic_write_json(run.state, boundary)

    return _finish(run, spec, model, splits, recorder, make_dataset, batch, verbose, started, keras, precision)


# -- run directory ------------------------------------------------------------------------

def _open_run(spec: Spec, run_dir, resume: bool) -> RunDir:
    return open_run(spec.name, run_dir, resume, latest_run_dir)


def _spec_text(spec: Spec) -> str:
    """The resolved spec as YAML, with the data file (and masks folder) made absolute (spec.yaml lives elsewhere)."""
    from ..spec.tree import plain

    tree = plain(spec.tree)
    source = (tree.get("data") or {}).get("source") if isinstance(tree, dict) else None
    if spec.data is not None and "path" in spec.data.params and isinstance(source, dict) \
            and spec.data.source in source:
        source[spec.data.source] = str(spec.data.params["path"])
        if "masks" in source and "masks" in spec.data.params:       # segmentation's second folder
            source["masks"] = str(spec.data.params["masks"])
    return yaml.safe_dump(tree, sort_keys=False)


def _write_spec(run: RunDir, spec: Spec, resume: bool, check_only: bool = False) -> None:
    """spec.yaml at the start; on resume the model, data and seed must be those of the run
    (the train section may change, e.g. more epochs, and spec.yaml is updated to match)."""
    text = _spec_text(spec)
    if resume and run.spec.exists():
        try:
            old = yaml.safe_load(run.spec.read_text()) or {}
        except (OSError, yaml.YAMLError):
            old = {}
        new = yaml.safe_load(text) or {}
        changed = [k for k in ("model", "data", "seed") if old.get(k) != new.get(k)]
        if changed:
            raise RunDirError(Diagnostic(
                f"--resume: the spec's {', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} from those of the run in {run.path} "
                f"(see {run.spec}); a run can only be continued with the same model and data",
                hint="use the run's own spec.yaml, or start a new run without --resume"))
        compiled = _compile_changes(old.get("train"), new.get("train"))
        if compiled:
            raise RunDirError(Diagnostic(
                f"--resume: the spec's train.{', train.'.join(compiled)} "
                f"{'differs' if len(compiled) == 1 else 'differ'} from the run in {run.path} (see {run.spec}); its checkpoint was compiled with the old "
                f"{' and '.join(compiled)} (and holds that optimizer's state), so continuing would train with "
                "one thing and record another",
                path=f"train.{compiled[0]}",
                hint="start a new run without --resume (or put the old value back to continue this one); "
                     "epochs, callbacks and phases may change on --resume"))
        if old == new:
            return
    if not check_only:
        atomic_write_text(run.spec, text)


# The train keys a checkpoint was compiled with: a resume refuses to change them (it would load the old
# compiled loss and optimizer state while spec.yaml records the new ones). Everything else may change.
COMPILED_KEYS = ("loss", "loss_weights", "metrics", "optimizer")


def _compile_changes(old: Any, new: Any) -> list[str]:
    old, new = (old if isinstance(old, dict) else {}), (new if isinstance(new, dict) else {})
    return [k for k in COMPILED_KEYS if old.get(k) != new.get(k)]


def _write_data_info(run: RunDir, splits, spec: Spec) -> None:
    atomic_write_json(run.data, {
        "source": splits.source,
        "inputs": [i.name for i in spec.model.inputs],
        "outputs": list(spec.model.outputs),
        "tasks": splits.tasks,
        "class_names": splits.class_names,
        "feature_names": splits.feature_names,
        "targets": splits.targets,
        "sizes": {name: len(part) for name, part in splits.splits().items()},
        "notes": list(splits.notes),
        "skipped": [{"file": f, "why": why} for f, why in splits.skipped],
    })


def _write_summary(run: RunDir, model) -> None:
    try:
        from ..builder import describe

        atomic_write_text(run.summary, describe(model, None) + "\n")
    except Exception:       # a summary is a convenience, never a reason to fail a run
        pass


def _say(verbose: int, text: str) -> None:
    if verbose:
        print(text, flush=True)


# -- setup ------------------------------------------------------------------------------------

def _configure(spec: Spec, keras, tf):
    """Seeds, determinism and the dtype policy; returns the PrecisionChoice (printed and recorded)."""
    assert spec.train is not None, SPEC_CHECKED
    from ..distribute.strategy import choose_precision

    keras.utils.set_random_seed(spec.seed)
    if spec.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = choose_precision(spec.train, spec.model, spec.data)
    keras.mixed_precision.set_global_policy(precision.policy)
    return precision


def _build(spec: Spec, splits, input_layers, log=print):
    assert spec.train is not None, SPEC_CHECKED
    from ..builder import build_model, compile_model
    from ..builder.adapt import adapt_on_split

    layers = input_layers(spec.data, spec.model, splits.train)
    model = build_model(spec.model, spec.name, layers)
    adapt_on_split(model, splits.train, spec.train.batch_size, log, spec.model)   # an in-model Normalization: {}
    check_phase_patterns(model, spec)
    compile_model(model, spec.train, spec.model)
    return model


def _load_checkpoint(run: RunDir, keras):
    import warnings

    try:
        with warnings.catch_warnings():
            # The epoch-0 checkpoint is saved before the optimizer has variables; Keras says so.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return keras.saving.load_model(run.last)
    except Exception as exc:
        from ..builder.errors import keras_message

        raise TrainingError(Diagnostic(f"cannot load the checkpoint {run.last}: {keras_message(exc)}",
                                       hint="start a new run without --resume")) from None


def _output_units(spec: Spec, model) -> dict[str, int]:
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    return {name: int(t.shape[-1]) if len(t.shape) > 1 else 1 for name, t in zip(spec.model.outputs, outputs)}


def _output_shapes(spec: Spec, model) -> dict[str, tuple]:
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    return {name: tuple(t.shape[1:]) for name, t in zip(spec.model.outputs, outputs)}


def _class_weight(spec: Spec, splits, model) -> dict[int, float] | None:
    assert spec.train is not None, SPEC_CHECKED
    value = spec.train.class_weight
    if value is None:
        return None
    outputs = list(spec.model.outputs)
    if len(outputs) != 1:
        raise SpecError(Diagnostic("class_weight applies to single-output models; this one has "
                                   f"{len(outputs)} outputs ({', '.join(outputs)})", spec.train.loc,
                                   "train.class_weight"))
    output = outputs[0]
    if splits.tasks.get(output) != "classification":
        raise SpecError(Diagnostic(f"class_weight applies to classification targets, but output {output!r} "
                                   f"is a {splits.tasks.get(output, 'regression')} target", spec.train.loc,
                                   "train.class_weight"))
    from ..data.table import labels_of

    labels = labels_of(splits.train.y[output])
    units = max(_output_units(spec, model)[output], 2)
    if value == "balanced":
        counts = np.bincount(labels, minlength=units).astype(np.float64)
        present = int((counts > 0).sum())
        return {c: (float(len(labels) / (present * counts[c])) if counts[c] else 1.0) for c in range(units)}
    if not isinstance(value, dict):
        raise SpecError(Diagnostic(f"class_weight must be a mapping class -> weight or 'balanced', got {value!r}",
                                   spec.train.loc, "train.class_weight"))
    bad = [c for c in value if not 0 <= int(c) < units]
    if bad:
        raise SpecError(Diagnostic(f"class_weight names class {bad[0]}, but output {output!r} has {units} classes "
                                   f"(0..{units - 1})", spec.train.loc, "train.class_weight"))
    return {c: float(value.get(c, 1.0)) for c in range(units)}


def _spec_callbacks(spec: Spec, run: RunDir) -> list:
    """The spec's `train.callbacks`, created by the registry; relative file arguments go in the run dir."""
    assert spec.train is not None, SPEC_CHECKED
    from .. import registry
    from ..builder.compile import spec_value
    from ..builder.errors import keras_message

    out: list[Any] = []
    problems: list[Diagnostic] = []
    for component in spec.train.callbacks:
        args = dict(component.args)
        for key, value in list(args.items()):
            if writes_path(key) and isinstance(value, str):
                try:       # checked at validate; again here with symbolic links resolved (issue 13)
                    args[key] = str(resolve_inside(run, value, key))
                except RunDirError as exc:
                    where = f"train.callbacks.{component.name}.{key}"
                    problems.extend(dataclasses.replace(d, loc=component.loc, path=where) for d in exc.diagnostics)
                    continue
        try:
            out.append(registry.create("callbacks", spec_value(dataclasses.replace(component, args=args))))
        except SpecError as exc:
            problems.extend(exc.diagnostics)
        except Exception as exc:
            problems.append(Diagnostic(f"callback {component.name}: {keras_message(exc)}", component.loc,
                                       component.path or "train.callbacks"))
    if problems:
        raise SpecError(problems)
    return out


def _checkpoint_seconds(spec: Spec, distribution) -> float:
    """train.checkpoint.every_seconds; 0 (every epoch) with several workers: a save reads variables through
    collective ops, so every worker must save at the same epochs, which a clock of its own cannot promise."""
    assert spec.train is not None, SPEC_CHECKED
    return 0.0 if distribution.mode == "multi_worker" else spec.train.checkpoint_every_seconds


def _phases(spec: Spec) -> tuple[PhaseSpec, ...]:
    assert spec.train is not None, SPEC_CHECKED
    return spec.train.phases or (PhaseSpec(name="train", epochs=spec.train.epochs),)


# -- phases ----------------------------------------------------------------------------------

def _apply_phase(model, phase: PhaseSpec, spec: Spec) -> None:
    """Set `trainable` and re-compile when the phase changes the optimizer, learning rate or trainability.

    A re-compile starts a fresh optimizer (as a hand-written fine-tuning step does).
    """
    assert spec.train is not None, SPEC_CHECKED
    changed = False
    if phase.trainable is not None:
        set_trainable(model, phase.trainable, _backbone_names(spec))
        changed = True
    optimizer = phase.optimizer or spec.train.optimizer
    if phase.learning_rate is not None:
        optimizer = _with_learning_rate(optimizer, phase.learning_rate)
        changed = True
    if phase.optimizer is not None:
        changed = True
    if changed:
        from ..builder import compile_model

        compile_model(model, dataclasses.replace(spec.train, optimizer=optimizer), spec.model)


def _with_learning_rate(optimizer: Component, lr: float) -> Component:
    return dataclasses.replace(optimizer, args={**dict(optimizer.args), "learning_rate": float(lr)})


def _backbone_names(spec: Spec) -> list[str]:
    return [n.name for n in spec.model.nodes if n.layer == "Backbone" and not n.shares]


def _trainable_roots(model, scope: list[str] | None) -> list:
    return [model.get_layer(name) for name in (scope or []) if _has_layer(model, name)] or [model]


def set_trainable(model, trainable: bool | str, scope: list[str] | None = None) -> None:
    """`trainable: true|false|PATTERN` for the backbone layers (or, without a backbone, every layer),
    by the one implementation a Backbone node uses (build/backbone.py `apply_trainable`)."""
    from ..builder.backbone import apply_trainable

    for root in _trainable_roots(model, scope):
        apply_trainable(root, trainable)


def check_phase_patterns(model, spec: Spec) -> None:
    """Before any training: every phase's `trainable` pattern matches a layer of its scope (else the
    phase would silently freeze the whole backbone), as on a Backbone node: a located error with the
    closest layer name."""
    assert spec.train is not None, SPEC_CHECKED
    from ..builder.backbone import TRAINABLE_HINT, leaf_names, pattern_matches
    from ..suggest import did_you_mean

    errors = []
    roots = _trainable_roots(model, _backbone_names(spec))
    for i, phase in enumerate(spec.train.phases):
        if isinstance(phase.trainable, str) and not any(pattern_matches(r, phase.trainable) for r in roots):
            names = [n for r in roots for n in leaf_names(r)]
            scope = "the backbone" if _backbone_names(spec) else "the model"
            errors.append(Diagnostic(
                f"phase '{phase.name}': the `trainable` pattern {phase.trainable!r} matches no layer of "
                f"{scope}{did_you_mean(phase.trainable, names)}", phase.trainable_loc or phase.loc,
                f"train.phases[{i}].trainable", hint=TRAINABLE_HINT))
    if errors:
        raise SpecError(errors)


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def _trainable_count(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# -- fit ---------------------------------------------------------------------------------------

def _fit(model, train_ds, val_ds, initial_epoch: int, epochs: int, callbacks, keras_verbose: int,
         class_weight, guard, run: RunDir, recorder=None) -> None:
    try:
        with interruptible():
            model.fit(train_ds, validation_data=val_ds, initial_epoch=initial_epoch, epochs=epochs,
                      callbacks=callbacks, verbose=keras_verbose, class_weight=class_weight,
                      shuffle=False)   # the tf.data pipeline shuffles
    except KspecError:
        raise
    except KeyboardInterrupt:
        # SIGINT/SIGTERM: the epochs finished but not yet checkpointed are saved before exiting.
        if recorder is not None:
            with shielded():
                recorder.flush()
        raise
    except Exception as exc:
        from ..data.stream import explain_failure

        explain_failure(train_ds, val_ds)      # a file that a streamed pipeline could not read: name it
        raise _training_error(exc, guard, run) from None
    if guard.failed is not None:
        epoch, batch, what = guard.failed
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"the end of epoch {epoch}"
        raise TrainingError(Diagnostic(
            f"{what} at {where}; the last good checkpoint is kept in {run.last}",
            hint="lower the learning rate, clip gradients (clipnorm), or standardize the inputs "
                 "(epochs and batches count from 0)"))


def _training_error(exc: BaseException, guard, run: RunDir) -> TrainingError:
    from ..builder.errors import keras_message

    text = keras_message(exc)
    name = type(exc).__name__
    if "ResourceExhausted" in name or "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return TrainingError(Diagnostic(
            f"out of memory during epoch {guard.epoch}: {text}",
            hint=f"use a smaller train.batch_size or a smaller model; the last good checkpoint is in {run.last}"))
    return TrainingError(Diagnostic(
        f"training failed during epoch {guard.epoch}: {name}: {text}",
        hint=f"the last good checkpoint is kept in {run.last}"))


# -- the end ---------------------------------------------------------------------------------

def _finish(run: RunDir, spec: Spec, model, splits, recorder, make_dataset, batch: int, verbose: int,
            started: float, keras, precision=None) -> Path:
    assert spec.train is not None, SPEC_CHECKED
    rows = recorder.rows
    if spec.train.keep == "best" and run.best.exists() and not _holds_best(recorder):
        model.load_weights(run.best)
    atomic_save_model(model, run.model)

    # The curves are drawn on a thread while the splits are evaluated (TensorFlow releases the GIL).
    plot = _Background(history_io.plot_curves, list(rows), run.curves, recorder.best_epoch)
    metrics: dict[str, Any] = {}
    for name, part in splits.splits().items():
        ds = make_dataset(part, batch, shuffle=False, seed=spec.seed)
        metrics[name] = _floats(model.evaluate(ds, verbose=0, return_dict=True))
    epochs = len(rows)
    seconds = float(sum(r.get("epoch_seconds", 0.0) for r in rows))
    metrics.update({
        "epochs": epochs,
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(splits.train) * epochs / seconds, 1) if seconds > 0 else None,
        "best_epoch": recorder.best_epoch if recorder.best_epoch is not None else (epochs - 1 if epochs else None),
        "monitor": recorder.monitor,
        "best_value": recorder.best_value,
        "keep": spec.train.keep,
        "wall_seconds": round(time.perf_counter() - started, 3),
    })
    if precision is not None:
        metrics["precision"] = precision.to_json()   # the dtype policy trained under, and why
    from .timing import since_start

    first_step = getattr(recorder.guard, "first_step_at", None)
    metrics["first_step_seconds"] = since_start(first_step) if first_step else None   # process start -> step 1
    atomic_write_json(run.metrics, metrics)
    try:
        plot.result()
    except Exception as exc:          # the model and metrics are saved: a plot is not worth failing for
        print(f"kspec: warning: could not draw {run.curves}: {type(exc).__name__}: {exc}", file=sys.stderr)
    final = recorder.state(epochs, phase_finished=True, finished=True)
    atomic_write_json(run.state, final.to_json())
    from ..diagnose.curves import report_run

    report_run(run.path, verbose)   # the learning curve in words -> diagnosis.txt

    if verbose:
        print(f"run directory: {run.path}")
        if "test" in metrics:
            print("test: " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics["test"].items()))
        elif "validation" in metrics:
            print("validation: " + "  ".join(f"{k} {_fmt(v)}" for k, v in metrics["validation"].items()))
        sys.stdout.flush()
    return run.path


def _holds_best(recorder) -> bool:
    """True when the model's weights are already best.keras's: the best epoch is the last one trained (its
    checkpoint is written at the end of its phase, from these weights) and no callback may have put other
    weights back since (EarlyStopping's restore_best_weights, at the end of training). Loading best.keras
    again cost 0.8 s for a MobileNetV3Small here."""
    rows = recorder.rows
    restores = any(getattr(cb, "restore_best_weights", False) for cb in recorder.stateful.values())
    return bool(rows) and recorder.best_epoch == rows[-1]["epoch"] and not restores


class _Background:
    """Run a function on a thread; `result()` joins it and re-raises its exception."""

    def __init__(self, fn, *args) -> None:
        import threading

        self._error: BaseException | None = None
        self._value = None

        def target():
            try:
                self._value = fn(*args)
            except BaseException as exc:      # re-raised on the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=target, name="kspec-curves", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _floats(logs: dict) -> dict[str, float]:
    out = {}
    for key, value in logs.items():
        try:
            out[key] = float(np.asarray(value).reshape(()))
        except (TypeError, ValueError):
            continue
    return out


def _fmt(value: float) -> str:
    from .callbacks import format_number

    return format_number(value)
