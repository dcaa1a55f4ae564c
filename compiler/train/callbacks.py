"""kspec's own Keras callbacks: the epoch guard (timing, NaN), the run recorder (history,
checkpoints, resume state) and the one-line-per-epoch printer.

Order in the list handed to `fit` (Keras calls callbacks in list order, sharing `logs`):

    EpochGuard, <the spec's callbacks>, TensorBoard, RunRecorder, EpochPrinter

so the guard sees a bad epoch before anything records it, and the recorder sees
what the spec's callbacks decided this epoch (EarlyStopping's `stop_training`,
ReduceLROnPlateau's counters) before it saves the resume state.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import keras
import numpy as np

from ..errors import Diagnostic, Loc, SpecError
from ..rundir import RunDir, atomic_save_model, atomic_write_json, read_embedded_state
from . import history as history_io
from .state import ResumeState

# Attributes of Keras's stateful callbacks (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint...)
# that are saved in the resume state and put back after their `on_train_begin` resets them.
STATEFUL_ATTRIBUTES = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")


def learning_rate(model) -> float | None:
    """The optimizer's current learning rate (a schedule's value at the current step)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:
        return None


class EpochGuard(keras.callbacks.Callback):
    """Times each epoch and stops training when it goes numerically bad.

    Checks the loss after every batch (TerminateOnNaN's test) and, at the end of
    each epoch, the loss and every weight: a NaN weight can hide behind a finite
    running-mean loss when it appears in the last batch. Marked `async_safe`, so
    Keras may run the batch check off the training thread.
    """

    async_safe = True

    def __init__(self) -> None:
        super().__init__()
        self.failed: tuple[int, int | None, str] | None = None    # (epoch, batch or None, what)
        self.epoch = 0
        self.epoch_seconds = 0.0
        self._start = 0.0
        self.first_step_at: float | None = None     # Unix time at the end of the run's first training step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if self.failed is not None or not logs:
            return
        loss = logs.get("loss")
        if loss is not None and not _finite(loss):
            self.failed = (self.epoch, int(batch), f"loss became {_kind(loss)}")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds = time.perf_counter() - self._start
        if self.failed is not None:
            return
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.failed = (epoch, None, f"loss became {_kind(loss)}")
        elif not weights_finite(self.model):
            self.failed = (epoch, None, "the weights became NaN or infinite")
        if self.failed is not None:
            self.model.stop_training = True


def weights_finite(model) -> bool:
    """True if no floating-point weight holds NaN or inf (checked on the device, nothing copied out)."""
    for w in model.weights:
        if "float" in str(w.dtype) and not bool(keras.ops.all(keras.ops.isfinite(w.value))):
            return False
    return True


class RunRecorder(keras.callbacks.Callback):
    """After every good epoch: append the history row; then, per the checkpoint policy, save the
    checkpoint and the state.

    Write order, each atomic: history.csv, checkpoints/last.keras (with the state
    embedded; best.keras linked to it when the monitored value improved), then
    checkpoints/state.json. A kill at any point leaves a consistent state to resume
    from: resume trusts the checkpoint and cuts history.csv back to it.

    Checkpoint policy (`train.checkpoint.every_seconds`, N): a checkpoint is saved at the end of
    an epoch when N seconds or more have passed since the last one (N = 0: every epoch), at the
    end of every phase (its last epoch, or EarlyStopping), and on SIGTERM/SIGINT (`flush`). So an
    epoch of N seconds or more is always saved (kill -9 loses at most the epoch in progress), and
    a run of tiny epochs pays one save per N seconds (kill -9 loses at most N seconds of epochs
    besides the one in progress). An epoch that is not saved leaves a snapshot in memory (weights
    and optimizer variables, copied to numpy), which `flush` writes when the run is interrupted;
    an improved epoch that is not saved keeps its weights, so best.keras always holds the best
    epoch when it is next written.
    """

    def __init__(self, run: RunDir, guard: EpochGuard, rows: list[dict], *, monitor: str, save_best: bool,
                 best_value: float | None, best_epoch: int | None, phase: dict, stateful: dict[str, Any],
                 restore: dict | None = None, monitor_loc: Loc | None = None, every_seconds: float = 0.0):
        super().__init__()
        self.run = run
        self.guard = guard
        self.rows = rows
        self.monitor = monitor
        self.monitor_loc = monitor_loc        # where the spec sets train.monitor (for the error below)
        self.save_best = save_best
        self.best_value = best_value
        self.best_epoch = best_epoch
        self.phase = dict(phase)              # index, name, start, epochs
        self.stateful = stateful              # key -> callback instance
        self.restore = restore                # callback states to put back at the next on_train_begin
        self.every_seconds = float(every_seconds)
        self.saves = 0                        # checkpoints written (for the log and the tests)
        self.saved_seconds = 0.0              # time spent writing them
        self._better: str | None = None
        self.checked_monitor = False
        self._last_save = time.monotonic()
        # Not yet on disk: (state, weights, optimizer variables) of the last finished epoch, and the
        # weights + state of a best epoch newer than best.keras.
        self._pending: tuple[ResumeState, list, list] | None = None
        self._pending_best: tuple[ResumeState, list] | None = None
        self._saved_best: tuple[float | None, int | None] = (best_value, best_epoch)

    # -- resume ---------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._last_save = time.monotonic()
        if not self.restore:
            return
        for key, values in self.restore.items():
            callback = self.stateful.get(key)
            if callback is None:
                continue
            for attr, value in values.items():
                if hasattr(callback, attr):
                    setattr(callback, attr, value)
            self._restore_best_weights(callback)
        self.restore = None

    def _restore_best_weights(self, callback) -> None:
        """EarlyStopping(restore_best_weights) keeps its best weights in memory; after a resume they
        come from best.keras when that holds the same epoch (same monitored quantity)."""
        if not getattr(callback, "restore_best_weights", False) or getattr(callback, "best_weights", None):
            return
        if not self.run.best.exists():
            return
        embedded = ResumeState.from_json(read_embedded_state(self.run.best))
        if embedded is None or embedded.epoch_done - 1 != getattr(callback, "best_epoch", -1):
            return
        try:
            callback.best_weights = keras.saving.load_model(self.run.best, compile=False).get_weights()
        except Exception:
            pass

    # -- each epoch ---------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.guard.failed is not None:
            return                            # a NaN epoch is never recorded: the last checkpoint stays good
        logs = dict(logs or {})
        row: dict[str, Any] = {"epoch": int(epoch)}
        for key, value in logs.items():
            if key in ("epoch_seconds",):
                continue
            number = _number(value)
            if number is not None:
                row[key] = number
        lr = learning_rate(self.model)
        if "learning_rate" not in row and lr is not None:
            row["learning_rate"] = lr
        row["epoch_seconds"] = round(self.guard.epoch_seconds, 4)
        self.rows.append(row)
        history_io.write_history(self.run.history, self.rows)

        improved = self._improved(logs, epoch)
        phase_end = bool(self.model.stop_training) or (
            self.phase.get("epochs") is not None and epoch + 1 >= self.phase.get("start", 0) + self.phase["epochs"])
        state = self.state(epoch + 1, phase_finished=bool(self.model.stop_training))
        if phase_end or self.every_seconds <= 0 or time.monotonic() - self._last_save >= self.every_seconds:
            self._save(state, improved)
        else:
            # Deferred: keep what a save would have written, for `flush` and for best.keras.
            weights = self.model.get_weights()
            if improved and self.save_best:
                self._pending_best = (state, weights)
            self._pending = (state, weights, _optimizer_values(self.model))

    def _save(self, state: ResumeState, improved: bool) -> None:
        """last.keras (+ best.keras) then state.json. A best epoch that was not saved when it happened
        is written to best.keras first, from its weights."""
        started = time.perf_counter()
        link = self.run.best if (improved and self.save_best) else None
        if link is None and self._pending_best is not None:
            best_state, best_weights = self._pending_best
            current = self.model.get_weights()
            self.model.set_weights(best_weights)
            try:
                atomic_save_model(self.model, self.run.best, state=best_state.to_json())
            finally:
                self.model.set_weights(current)
        atomic_save_model(self.model, self.run.last, state=state.to_json(), link=link)
        atomic_write_json(self.run.state, state.to_json())
        self._pending = self._pending_best = None
        self.saves += 1
        self.saved_seconds += time.perf_counter() - started
        self._last_save = time.monotonic()

    def flush(self) -> bool:
        """Write the last finished epoch if it is not on disk yet (SIGTERM/SIGINT mid-epoch: the epoch in
        progress is dropped, the weights go back to the end of the one before). True if it wrote."""
        if self._pending is None:
            return False
        state, weights, optimizer = self._pending
        self.model.set_weights(weights)
        _set_optimizer_values(self.model, optimizer)
        best = self._pending_best
        self._save(state, improved=best is not None and best[0].epoch_done == state.epoch_done)
        return True

    def _improved(self, logs: dict, epoch: int) -> bool:
        value = logs.get(self.monitor)
        if value is None:
            if not self.checked_monitor:
                from ..suggest import did_you_mean

                names = [k for k in logs if k not in ("learning_rate",)]
                raise SpecError(Diagnostic(
                    f"train.monitor is {self.monitor!r}, which is not a logged metric"
                    f"{did_you_mean(self.monitor, names)} (logged: {', '.join(names)})",
                    self.monitor_loc, "train.monitor",
                    hint="set train.monitor to one of the logged names (val_* needs a validation split)"))
            return False
        self.checked_monitor = True
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.best_value is None or self._is_better(value, self.best_value):
            self.best_value, self.best_epoch = value, int(epoch)
            return True
        return False

    def _is_better(self, value: float, best: float) -> bool:
        if self._better is None:
            self._better = direction(self.model, self.monitor)
        return value > best if self._better == "max" else value < best

    def state(self, epoch_done: int, phase_finished: bool = False, finished: bool = False) -> ResumeState:
        return ResumeState(
            epoch_done=int(epoch_done),
            phase=self.phase.get("index", 0),
            phase_name=self.phase.get("name"),
            phase_start=self.phase.get("start", 0),
            phase_epochs=self.phase.get("epochs"),
            phase_finished=bool(phase_finished),
            finished=bool(finished),
            monitor=self.monitor,
            save_best=self.save_best,
            best_value=self.best_value,
            best_epoch=self.best_epoch,
            callbacks=callback_states(self.stateful),
            time=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )


def _optimizer_values(model) -> list:
    optimizer = getattr(model, "optimizer", None)
    return [keras.ops.convert_to_numpy(v) for v in getattr(optimizer, "variables", None) or []]


def _set_optimizer_values(model, values: list) -> None:
    optimizer = getattr(model, "optimizer", None)
    for variable, value in zip(getattr(optimizer, "variables", None) or [], values):
        variable.assign(value)


def callback_states(stateful: dict[str, Any]) -> dict[str, dict]:
    out = {}
    for key, callback in stateful.items():
        values = {}
        for attr in STATEFUL_ATTRIBUTES:
            if hasattr(callback, attr):
                value = getattr(callback, attr)
                if value is None or isinstance(value, (bool, int, float, np.generic)):
                    values[attr] = value.item() if isinstance(value, np.generic) else value
                else:
                    number = _number(value)
                    if number is not None:
                        values[attr] = number
        if values:
            out[key] = values
    return out


def direction(model, monitor: str) -> str:
    """"max" for accuracy-like quantities, "min" for losses and errors (Keras's MonitorCallback rule)."""
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    for metric in _all_metrics(model):
        if metric.name == name or name.endswith("_" + metric.name):
            if getattr(metric, "_direction", None) == "up":
                return "max"
            if getattr(metric, "_direction", None) == "down":
                return "min"
    lowered = name.lower()
    if any(word in lowered for word in ("acc", "auc", "precision", "recall", "f1", "iou", "r2")):
        return "max"
    return "min"


def _all_metrics(model) -> list:
    from ..keras_compat import metric_containers

    out = []
    for metric in getattr(model, "metrics", []) or []:
        if isinstance(metric, metric_containers()):
            out.extend(metric.metrics)
        else:
            out.append(metric)
    return out


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback writing epoch summaries only (kspec's default).

    With `update_freq="epoch"` and no profiling, Keras's per-batch hooks write nothing,
    but their mere presence makes Keras run every callback synchronously after each
    batch (a host sync per step, which starves a GPU). They are skipped here, and the
    train-step graph is written at the end of the first epoch instead of the first batch.
    """

    async_safe = True

    def __init__(self, log_dir: str):
        super().__init__(log_dir=log_dir, update_freq="epoch", profile_batch=0)

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        if self._should_write_train_graph:
            self._should_write_train_graph = False
            try:
                self._write_keras_model_train_graph()
            except Exception:          # a graph for TensorBoard is never worth failing a run
                pass
        super().on_epoch_end(epoch, logs)


class EpochPrinter(keras.callbacks.Callback):
    """`epoch 3/20  loss 0.4102  accuracy 0.8813  val_loss 0.4410  val_accuracy 0.8667  0.8s`"""

    def __init__(self, total_epochs: int, guard: EpochGuard, stream=None, phase: str | None = None):
        super().__init__()
        self.total = total_epochs
        self.guard = guard
        self.stream = stream
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.failed is not None:
            return
        parts = [f"epoch {epoch + 1}/{self.total}"]
        if self.phase:
            parts[0] += f" [{self.phase}]"
        logs = logs or {}
        for key in [k for k in history_io.columns([logs]) if k in logs]:
            number = _number(logs[key])
            if number is None or key in ("learning_rate", "epoch_seconds"):
                continue
            parts.append(f"{key} {format_number(number)}")
        parts.append(f"{self.guard.epoch_seconds:.1f}s")
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def format_number(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _number(value) -> float | None:
    try:
        array = np.asarray(value)
    except Exception:
        return None
    if array.size != 1 or array.dtype.kind not in "biuf":
        return None
    return float(array.reshape(()))


def _finite(value) -> bool:
    number = _number(value)
    return number is None or math.isfinite(number)


def _kind(value) -> str:
    number = _number(value)
    return "NaN" if number is not None and math.isnan(number) else "infinite"
