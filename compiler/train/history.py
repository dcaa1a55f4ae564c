"""history.csv (one row per finished epoch, rewritten atomically after each) and the learning-curve plot.

Columns: `epoch` (counting from 0), every logged metric in the order Keras logs
them (training metrics, then `val_*`), `learning_rate` and `epoch_seconds`.
A resumed run first truncates the file to the epochs its checkpoint holds, so
every epoch appears exactly once.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..rundir import atomic_write_text, read_history_table

FIRST = ("epoch",)
LAST = ("learning_rate", "epoch_seconds")


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a history.csv (numbers as floats, `epoch` as int, empty cells left out); [] if there
    is none. Read by the run directory's one reader (compiler.rundir.read_history_table)."""
    try:
        _, table = read_history_table(path)
    except OSError:
        return []
    rows = []
    for raw in table:
        row: dict = {k: v for k, v in raw.items() if not math.isnan(v)}
        if "epoch" in row:
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def columns(rows: list[dict]) -> list[str]:
    """epoch, training metrics, val_* metrics, learning_rate, epoch_seconds (first-seen order within each)."""
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    middle = [k for k in seen if k not in FIRST + LAST]
    train = sorted((k for k in middle if not k.startswith("val_")), key=lambda k: k != "loss")
    val = sorted((k for k in middle if k.startswith("val_")), key=lambda k: k != "val_loss")
    return [*FIRST, *train, *val, *[k for k in LAST if k in seen]]


def format_history(rows: list[dict]) -> str:
    out = io.StringIO()
    names = columns(rows)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(k)) for k in names])
    return out.getvalue()


def write_history(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, format_history(rows))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return repr(value)


# -- curves ---------------------------------------------------------------------------------

def plot_curves(rows: list[dict], path: str | Path, best_epoch: int | None = None) -> Path | None:
    """One subplot per metric (loss first), training vs validation, against the epoch;
    the learning rate too when it changed; a dotted line at `best_epoch`.

    Written atomically; returns None (and writes nothing) when there are no rows.
    """
    if not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: safe off the main thread, no global state

    names = [k for k in columns(rows) if k not in FIRST + LAST and not k.startswith("val_")]
    names.sort(key=lambda k: k != "loss")
    lr = [r.get("learning_rate") for r in rows]
    show_lr = len({v for v in lr if v is not None}) > 1
    panels = names + (["learning_rate"] if show_lr else [])
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes.flat, panels):
        if name == "learning_rate":
            ax.plot(epochs, lr, color="tab:gray")
            ax.set_yscale("log")
        else:
            _line(ax, epochs, rows, name, "train")
            _line(ax, epochs, rows, f"val_{name}", "validation")
            if name == "loss" or name.endswith("_loss"):
                values = [r[name] for r in rows if _finite(r.get(name))]
                if values and min(values) > 0 and max(values) / min(values) > 50:
                    ax.set_yscale("log")
            ax.legend(fontsize="small")
        if best_epoch is not None and len(rows) > 1:
            ax.axvline(best_epoch, color="gray", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    from ..rundir import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _line(ax, epochs, rows, key, label) -> None:
    points = [(e, r[key]) for e, r in zip(epochs, rows) if _finite(r.get(key))]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=label)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))
