"""`kspec compare RUN... [-o compare.png]`: the learning curves of several runs side by side, and a table.

    compare_runs(runs, output) -> Comparison(png path, table text)

For each run directory it reads `history.csv` and `metrics.json`. The PNG has
one panel per curve — the loss, then every metric all runs share — with one
colour per run (labelled by the run's name), training solid and validation
dashed. The table has one row per run and one column per final metric of the
test section (the validation section for a run without a test split, marked so).
A missing or unreadable file is a KspecError (exit 2) naming the run and the file.
matplotlib only (Agg, no pyplot state); no TensorFlow.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .diagnose.curves import HistoryError, read_history_columns
from .errors import Diagnostic
from .rundir import HISTORY, METRICS

NOT_CURVES = ("epoch", "epoch_seconds", "learning_rate")


@dataclass(frozen=True)
class Run:
    path: Path
    label: str
    history: dict[str, list[float]]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    png: Path
    table: str
    runs: tuple[Run, ...]


def compare_runs(runs: Sequence[str | os.PathLike], output: str | os.PathLike = "compare.png") -> Comparison:
    """Read the runs, draw their curves into `output` (PNG), and return it with the table of final metrics."""
    if not runs:
        raise HistoryError(Diagnostic("kspec compare needs at least one run directory"))
    paths = [p for r in runs for p in study_runs(Path(r))]
    labels = run_labels(paths)
    loaded = tuple(Run(p, label, read_history_columns(p / HISTORY, str(p)), _read_metrics(p))
                   for p, label in zip(paths, labels))
    png = plot_runs(loaded, Path(output))
    return Comparison(png, metrics_table(loaded), loaded)


def study_runs(path: Path) -> list[Path]:
    """A `kspec tune` study directory stands for its finished trials (trials/NNN with metrics.json)."""
    trials = path / "trials"
    if (path / HISTORY).exists() or not trials.is_dir():
        return [path]
    return sorted(p for p in trials.iterdir() if (p / METRICS).is_file()) or [path]


def run_labels(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing part of each path that tells the runs apart (`iris/20240101-120000`, or `a`);
    a time-stamped run folder (`runs/NAME/TIME`) keeps its NAME."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    stamped = any(re.fullmatch(r"\d{8}-\d{6}(-\d+)?", p[-1]) for p in parts if p)
    for depth in range(2 if stamped else 1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _read_metrics(run: Path) -> dict[str, Any]:
    path = run / METRICS
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise HistoryError(Diagnostic(f"run {run}: cannot read {path}: {exc.strerror or exc}",
                                      hint="a run writes metrics.json when training finishes; "
                                           "is the run complete?")) from None
    except json.JSONDecodeError as exc:
        raise HistoryError(Diagnostic(f"run {run}: {path} is not valid JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise HistoryError(Diagnostic(f"run {run}: {path} does not hold a JSON object"))
    return data


def shared_curves(runs: Sequence[Run]) -> list[str]:
    """`loss` first, then every other training metric that all runs logged."""
    names = None
    for run in runs:
        mine = [k for k in run.history if k not in NOT_CURVES and not k.startswith("val_")]
        names = mine if names is None else [k for k in names if k in mine]
    names = names or []
    return sorted(names, key=lambda k: (k != "loss", names.index(k)))


def plot_runs(runs: Sequence[Run], output: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = shared_curves(runs) or ["loss"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, name in zip(axes.flat, panels):
        values: list[float] = []
        for run, colour in zip(runs, colours):
            epochs = run.history.get("epoch") or list(range(len(run.history.get(name, []))))
            for key, style, suffix in ((name, "-", ""), (f"val_{name}", "--", " (validation)")):
                points = [(e, v) for e, v in zip(epochs, run.history.get(key, [])) if math.isfinite(v)]
                if points:
                    xs, ys = zip(*points)
                    values.extend(ys)
                    ax.plot(xs, ys, style, color=colour, label=f"{run.label}{suffix}")
        if (name == "loss" or name.endswith("_loss")) and values and min(values) > 0 \
                and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set_title(f"{name} (solid: train, dashed: validation)", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, output)
    return output


def metrics_table(runs: Sequence[Run]) -> str:
    """One row per run, one column per metric of its test section (validation if it has no test split)."""
    sections, columns = [], []
    for run in runs:
        split = next((s for s in ("test", "validation", "train") if isinstance(run.metrics.get(s), dict)), None)
        section = run.metrics.get(split, {}) if split else {}
        sections.append((split or "-", section))
        for key in section:
            if key not in columns:
                columns.append(key)
    columns = sorted(columns, key=lambda k: (k != "loss", columns.index(k)))
    header = ["run", "split", *columns, "epochs"]
    rows = [[run.label, split, *[_number(section.get(c)) for c in columns], _number(run.metrics.get("epochs"))]
            for run, (split, section) in zip(runs, sections)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"
