"""Learning curves, diagnosed in words, with the numbers behind each verdict.

    diagnose(history)              {"loss": [...], "val_loss": [...], ...} -> [Finding]
    diagnose_run(run_dir)          the same for a run directory's history.csv
    write_diagnosis(run_dir, fs)   diagnosis.txt in the run directory (written atomically)
    report_run(run_dir, verbose)   both, and print the findings: the end-of-training hook

What is recognised (the training loss first, then the gap to validation):
- diverging: the loss became NaN/inf, ended above where it started, climbed
  back up most of the way it had come down, or went back up from its minimum
  and stayed there for the last epochs -> the learning rate is too high;
- diverging too: the loss more than doubled from one epoch to the next;
- stalled: epoch 0 was more than 10x epoch 1 and the loss hardly moved after
  that -> probably too high (the first updates killed or saturated units);
- oscillating: the epoch-to-epoch change keeps flipping sign with large upward
  jumps -> the learning rate is too high;
- flat: the loss improved by less than 1% over the whole run -> the learning
  rate is too low (or the model cannot learn: check the loss and the output layer);
- overfitting: over the last epochs the validation loss rises while the
  training loss falls, and the validation/training gap widens -> dropout,
  weight decay, more data or early stopping;
- healthy: none of the above.

Nothing here imports Keras or TensorFlow.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import Diagnostic, KspecError
from ..rundir import DIAGNOSIS, HISTORY

NOT_CURVES = ("epoch", "epoch_seconds", "learning_rate")

# Thresholds (all relative, so they hold for any loss scale).
FLAT = 0.01              # less than 1% better than the first epoch's loss: flat
RISE = 0.01              # ended more than 1% above the first epoch's loss: diverging
CLIMB_BACK = 0.5         # gave back more than half of the progress made: diverging
STAYED_UP = 0.10         # every one of the last epochs more than 10% above the minimum: diverging
JUMP = 0.10              # an epoch-to-epoch rise of more than 10% of the loss is a "large" jump
VAL_RISE = 0.10          # validation loss more than 10% above its minimum ...
SPIKE = 2.0              # the loss more than doubled from one epoch to the next: diverging
STALL_DROP = 10.0        # epoch 0 more than 10x epoch 1 ...
STALL_LATER = 0.05       # ... and less than 5% better after that: stalled (the first updates blew up)
NOISE = 1e-4             # a change of the loss smaller than this is noise (a converged loss wiggles)
GAP_WIDENING = 1.5       # ... and the val/train loss ratio 1.5x what it was at the best epoch: overfitting


class HistoryError(KspecError):
    """A run directory lacks the file a diagnosis or comparison needs. Exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Finding:
    """One verdict about a run: `kind` (diverging, oscillating, stalled, flat, overfitting, healthy,
    too_short),
    a plain-words `message` (what is wrong and what to try), and the `numbers` it rests on."""

    kind: str
    message: str
    numbers: Mapping[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.kind == "healthy"

    def __str__(self) -> str:
        return self.message


def _g(x: float) -> str:
    """A number as a person writes it: 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.3g}"


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope of `values` against their index (per epoch)."""
    n = len(values)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def _lr_text(history: Mapping[str, Sequence[float]]) -> str:
    lrs = [v for v in history.get("learning_rate", ()) if _finite(v)]
    return f" (it is {_g(lrs[0])})" if lrs and len({round(v, 12) for v in lrs}) == 1 else ""


def diagnose(history: Mapping[str, Sequence[float]]) -> list[Finding]:
    """Diagnose learning curves: `history` maps a metric (`loss`, `val_loss`, ...; Keras's
    `History.history` or the columns of history.csv) to one value per epoch."""
    loss = [float(v) for v in history.get("loss", ())]
    n = len(loss)
    if n < 2:
        return [Finding("too_short", f"{n} epoch{'s' * (n != 1)} of history: too few to diagnose the curves",
                        {"epochs": n})]
    lr = _lr_text(history)

    bad = next((i for i, v in enumerate(loss) if not math.isfinite(v)), None)
    if bad is not None:
        before = f" (it was {_g(loss[bad - 1])} at epoch {bad - 1})" if bad else ""
        return [Finding(
            "diverging",
            f"learning rate too high: the training loss became {loss[bad]} at epoch {bad}{before}; lower the "
            f"learning rate{lr} (e.g. 10x), clip gradients (clipnorm: 5), and check the inputs are standardized",
            {"nan_epoch": bad, "first_loss": loss[0], "last_finite_loss": loss[bad - 1] if bad else math.nan})]

    first, final = loss[0], loss[-1]
    best_epoch = min(range(n), key=loss.__getitem__)
    best = loss[best_epoch]
    scale = abs(first) or 1.0
    numbers = {"first_loss": first, "final_loss": final, "best_loss": best, "best_epoch": best_epoch, "epochs": n}

    if final > first + RISE * scale:
        return [Finding(
            "diverging",
            f"learning rate too high: the training loss rose from {_g(first)} (epoch 0) to {_g(final)} "
            f"(epoch {n - 1}){_best_note(best, best_epoch, first)}; lower the learning rate{lr} (e.g. 10x) "
            "or clip gradients (clipnorm: 5)", numbers)]
    progress = first - best
    if progress > FLAT * scale and final - best > CLIMB_BACK * progress:
        return [Finding(
            "diverging",
            f"learning rate too high: the training loss fell from {_g(first)} to {_g(best)} (epoch {best_epoch}), "
            f"then climbed back to {_g(final)} (epoch {n - 1}), giving back "
            f"{100 * (final - best) / progress:.0f}% of its progress; lower the learning rate{lr}, "
            "or decay it (ReduceLROnPlateau), or clip gradients", numbers)]

    k = max(3, n // 5)
    stuck = min(loss[-k:])
    if best_epoch < n - k and stuck > best + STAYED_UP * abs(best) and stuck - best > NOISE \
            and progress > FLAT * scale:
        return [Finding(
            "diverging",
            f"learning rate too high: the training loss reached {_g(best)} at epoch {best_epoch}, then went back "
            f"up and stayed there: {_g(stuck)} or more over the last {k} epochs ({_g(final)} at epoch {n - 1}; "
            f"{_g(first)} at epoch 0); lower the learning rate{lr} (e.g. 10x), or decay it (ReduceLROnPlateau)",
            {**numbers, "min_last_epochs": stuck, "last_epochs": k})]

    spike = next((t for t in range(1, n) if loss[t] > SPIKE * loss[t - 1] > 0 and loss[t] - loss[t - 1] > NOISE),
                 None)
    if spike is not None:
        return [Finding(
            "diverging",
            f"learning rate too high: the training loss jumped from {_g(loss[spike - 1])} (epoch {spike - 1}) to "
            f"{_g(loss[spike])} (epoch {spike}), {loss[spike] / loss[spike - 1]:.3g}x in one epoch "
            f"({_g(first)} -> {_g(final)} over the run); lower the learning rate{lr} (e.g. 10x) or clip "
            "gradients (clipnorm: 5)", {**numbers, "spike_epoch": spike, "spike_factor": loss[spike] / loss[spike - 1]})]

    oscillating = _oscillation(loss)
    if oscillating is not None:
        rises, changes, biggest = oscillating
        return [Finding(
            "oscillating",
            f"learning rate too high: the training loss oscillates — it rose in {rises} of {n - 1} epochs, "
            f"by up to {100 * biggest:.0f}% in one epoch, and the direction of its change flipped {changes} "
            f"times (from {_g(first)} to {_g(final)} overall); lower the learning rate{lr} (e.g. 3-10x)",
            {**numbers, "rises": rises, "sign_changes": changes, "largest_rise": biggest})]

    improvement = (first - best) / scale
    if improvement < FLAT:
        return [Finding(
            "flat",
            f"learning rate too low (or the model cannot learn): the training loss went from {_g(first)} to "
            f"{_g(final)} over {n} epochs, {100 * improvement:.2g}% better at best; raise the learning rate{lr} "
            "(e.g. 10x), and check the loss matches the output layer (softmax + categorical cross-entropy, "
            "sigmoid + binary, linear + MSE)", {**numbers, "improvement": improvement})]

    if n >= 5 and loss[1] > 0 and first > STALL_DROP * loss[1]:
        later = (loss[1] - min(loss[1:])) / abs(loss[1])
        if later < STALL_LATER:
            return [Finding(
                "stalled",
                f"learning rate too high (probably): the training loss fell from {_g(first)} (epoch 0) to "
                f"{_g(loss[1])} (epoch 1) and has hardly moved since ({_g(final)} at epoch {n - 1}, "
                f"{100 * later:.2g}% better at best). A first epoch {first / loss[1]:.3g}x above the next usually "
                f"means the first updates blew the weights up (dead ReLUs, saturated units); lower the learning "
                f"rate{lr} — unless the model has simply converged already", {**numbers, "later_improvement": later})]

    findings = []
    overfit = _overfitting(history, loss)
    if overfit is not None:
        findings.append(overfit)
    if not findings:
        val = [float(v) for v in history.get("val_loss", ())]
        val_text = ""
        if len(val) == n and all(map(math.isfinite, val)):
            vbest = min(range(n), key=val.__getitem__)
            val_text = f"; validation loss {_g(val[-1])} (best {_g(val[vbest])} at epoch {vbest})"
            numbers = {**numbers, "final_val_loss": val[-1], "best_val_loss": val[vbest], "best_val_epoch": vbest}
        findings.append(Finding(
            "healthy",
            f"healthy: the training loss fell from {_g(first)} to {_g(final)} over {n} epochs "
            f"({100 * improvement:.0f}% lower){val_text}; no sign of a learning rate too high or too low, "
            "or of overfitting", {**numbers, "improvement": improvement}))
    return findings


def _best_note(best: float, best_epoch: int, first: float) -> str:
    return f", after reaching {_g(best)} at epoch {best_epoch}" if best < first and best_epoch > 0 else ""


def _oscillation(loss: list[float]) -> tuple[int, int, float] | None:
    """(epochs the loss rose, sign changes of the epoch-to-epoch change, largest relative rise),
    if the loss oscillates: its change flips sign often AND it often jumps up by a lot."""
    diffs = [b - a for a, b in zip(loss, loss[1:])]
    if len(diffs) < 4:
        return None
    signs = [1 if d > 0 else -1 for d in diffs if d != 0]
    changes = sum(1 for a, b in zip(signs, signs[1:]) if a != b)
    rel_rises = [d / abs(a) for a, d in zip(loss, diffs) if d > NOISE and a != 0]
    big = [r for r in rel_rises if r > JUMP]
    if _still_improving(loss):   # noisy but converging (a small batch near zero loss): not too high
        return None
    if changes >= 3 and changes >= 0.3 * (len(diffs) - 1) and len(big) >= max(2, 0.15 * len(diffs)):
        return len(rel_rises), changes, max(rel_rises)
    return None


def _still_improving(loss: list[float]) -> bool:
    """The last third of the run sits well below its first third (epoch 0 aside)."""
    k = max(2, (len(loss) - 1) // 3)
    if len(loss) < 2 * k + 1:
        return False
    first, last = sorted(loss[1:k + 1]), sorted(loss[-k:])
    return last[len(last) // 2] < 0.5 * first[len(first) // 2]


def _overfitting(history: Mapping[str, Sequence[float]], loss: list[float]) -> Finding | None:
    val = [float(v) for v in history.get("val_loss", ())]
    n = len(loss)
    if len(val) != n or n < 5 or not all(map(math.isfinite, val)):
        return None
    k = max(3, n // 5)
    vbest = min(range(n), key=val.__getitem__)
    if vbest > n - 1 - k // 2 or val[-1] <= val[vbest] * (1 + VAL_RISE) or val[vbest] <= 0:
        return None
    if not (_slope(val[-k:]) > 0 and (_slope(loss[-k:]) <= 0 or loss[-1] < loss[vbest])):
        return None
    if loss[-1] <= 0 or loss[vbest] <= 0:
        return None
    gap_then, gap_now = val[vbest] / loss[vbest], val[-1] / loss[-1]
    if gap_now < gap_then * GAP_WIDENING:
        return None
    return Finding(
        "overfitting",
        f"overfitting: the validation loss rose from {_g(val[vbest])} (its minimum, epoch {vbest}) to "
        f"{_g(val[-1])} (epoch {n - 1}) while the training loss fell from {_g(loss[vbest])} to {_g(loss[-1])}; "
        f"the validation/training loss ratio widened from {gap_then:.2g} to {gap_now:.2g}. Try dropout, weight "
        f"decay (kernel_regularizer), more data or early stopping (the best epoch was {vbest})",
        {"best_val_epoch": vbest, "best_val_loss": val[vbest], "final_val_loss": val[-1],
         "loss_at_best_val": loss[vbest], "final_loss": loss[-1], "gap_ratio_at_best": gap_then,
         "final_gap_ratio": gap_now, "epochs": n})


# -- run directories ------------------------------------------------------------------------

def read_history_columns(path: str | os.PathLike, run: str | None = None) -> dict[str, list[float]]:
    """history.csv -> {column: one float per epoch} (a missing cell is NaN; `epoch` included).

    Raises HistoryError (exit 2) naming the run and the file when it is missing or unreadable.
    """
    from ..rundir import read_history_table

    path = Path(path)
    where = f"run {run}: " if run else ""
    try:
        names, rows = read_history_table(path)
    except OSError as exc:
        raise HistoryError(Diagnostic(f"{where}cannot read {path}: {exc.strerror or exc}",
                                      hint="is this a run directory written by `kspec train`?")) from None
    columns: dict[str, list[float]] = {name: [row[name] for row in rows] for name in names}
    if not columns or "loss" not in columns:
        raise HistoryError(Diagnostic(f"{where}{path} has no 'loss' column", hint="it is not a kspec history.csv"))
    return columns


def diagnose_run(run_dir: str | os.PathLike) -> list[Finding]:
    """diagnose() on a run directory's history.csv."""
    history = read_history_columns(Path(run_dir) / HISTORY, str(run_dir))
    return diagnose({k: v for k, v in history.items() if k not in ("epoch", "epoch_seconds")})


def format_findings(findings: Sequence[Finding], numbers: bool = False) -> str:
    lines = []
    for f in findings:
        lines.append(f"diagnosis: {f.message}")
        if numbers and f.numbers:
            lines.append("  numbers: " + ", ".join(f"{k}={_g(v) if isinstance(v, float) else v}"
                                                   for k, v in f.numbers.items()))
    return "\n".join(lines)


def write_diagnosis(run_dir: str | os.PathLike, findings: Sequence[Finding]) -> Path:
    """Write diagnosis.txt (each finding and its numbers) into the run directory, atomically."""
    path = Path(run_dir) / DIAGNOSIS
    text = format_findings(findings, numbers=True) + "\n"
    from ..rundir import atomic_write_text

    atomic_write_text(path, text)
    return path


def report_run(run_dir: str | os.PathLike, verbose: int = 1) -> list[Finding]:
    """The end-of-training hook: diagnose the run's history.csv, write diagnosis.txt, print the findings.

    Never raises: a diagnosis is advice, not a reason to fail a finished run (problems become one
    warning line on stderr)."""
    import sys

    try:
        findings = diagnose_run(run_dir)
        write_diagnosis(run_dir, findings)
    except Exception as exc:
        print(f"kspec: warning: could not diagnose the learning curves of {run_dir}: {exc}", file=sys.stderr)
        return []
    if verbose:
        print(format_findings(findings), flush=True)
    return findings
