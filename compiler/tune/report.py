"""What a study leaves in its directory, besides trials/NNN/ (ordinary run directories):

    trials.csv                 one row per trial: number, state, objective, seconds, parameters, run, error
    best.yaml                  the fully resolved spec of the best trial (`kspec train best.yaml` reproduces it)
    best -> trials/NNN         the best trial's run directory
    optimization_history.png   the objective of every trial, and the best so far
    parameters.png             each parameter against the objective
    tensorboard/               TensorBoard's HParams dashboard: one run per finished trial

trials.csv, best.yaml and `best` are rewritten after every finished trial (atomically); the plots
and the HParams summaries once, when this process's trials are done. Only files inside the study
directory are written. Surplus trials (asked past the budget by another machine) are left out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..rundir import SPEC, atomic_write_text
from .space import SearchSpec

TRIALS_CSV = "trials.csv"
BEST_YAML = "best.yaml"
BEST_LINK = "best"
HISTORY_PNG = "optimization_history.png"
PARAMS_PNG = "parameters.png"
TENSORBOARD = "tensorboard"


def counted(study, total: int) -> list:
    """The study's trials within the budget (surplus ones left out), by number."""
    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.number < total and not t.user_attrs.get("kspec.surplus")), key=lambda t: t.number)


def best_trial(study, total: int):
    done = [t for t in counted(study, total) if t.state.name == "COMPLETE" and t.value is not None]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / f"{number:03d}"


def params_of(trial) -> dict[str, Any]:
    """The values a trial set, from the `--set` texts it ran with (choices as written, not encoded)."""
    out = {}
    for text in trial.user_attrs.get("kspec.set", []):
        path, _, value = text.partition("=")
        out[path] = json.loads(value)
    return out


def write_progress(study, search: SearchSpec, study_dir: Path, total: int) -> None:
    """trials.csv, best.yaml and `best`: cheap, after every finished trial."""
    trials = counted(study, total)
    paths = study_paths(trials, search)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", search.metric, "seconds", *paths, "run", "error"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else ""
        params = params_of(t)
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         f"{seconds:.1f}" if seconds != "" else "",
                         *[_cell(params.get(p, "")) for p in paths],
                         os.path.join("trials", f"{t.number:03d}"), t.user_attrs.get("kspec.error", "")])
    atomic_write_text(study_dir / TRIALS_CSV, out.getvalue())
    best = best_trial(study, total)
    if best is not None and (trial_dir(study_dir, best.number) / SPEC).is_file():   # else: another machine's
        write_best(study_dir, best, search)


def study_paths(trials, search: SearchSpec) -> list[str]:
    """The parameters' columns: this spec's, then any other that a trial of the study set (a study may be
    continued with another search section)."""
    paths = [p.path for p in search.parameters]
    for t in trials:
        paths += [k for k in params_of(t) if k not in paths]
    return paths


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def write_best(study_dir: Path, best, search: SearchSpec) -> None:
    """best.yaml from the trial's own spec.yaml (the resolved spec it trained), without `search:`."""
    import yaml

    from ..spec.validate import read_tree

    run = trial_dir(study_dir, best.number)
    tree = read_tree(run / SPEC)
    tree.pop("search", None)
    header = (f"# The best trial ({best.number}) of this study: {search.metric} = {best.value:.6g}.\n"
              f"# The fully resolved spec it trained; `kspec train best.yaml` reproduces it.\n")
    atomic_write_text(study_dir / BEST_YAML, header + yaml.safe_dump(tree, sort_keys=False))
    link = study_dir / BEST_LINK
    tmp = study_dir / f".{BEST_LINK}.tmp{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.path.join("trials", run.name), tmp)
    os.replace(tmp, link)


def plot(study, search: SearchSpec, study_dir: Path, total: int) -> list[Path]:
    """optimization_history.png and parameters.png (matplotlib, Agg; no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trials = [t for t in counted(study, total) if t.state.name == "COMPLETE" and t.value is not None]
    if not trials:
        return []
    maximize = study.direction.name == "MAXIMIZE"
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    xs = [t.number for t in trials]
    ys = [t.value for t in trials]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    ax.scatter(xs, ys, s=18, label="trial")
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(search.metric)
    ax.set_title(f"optimisation history ({'maximize' if maximize else 'minimize'})")
    ax.legend(loc="best")
    fig.tight_layout()
    out = [study_dir / HISTORY_PNG, study_dir / PARAMS_PNG]
    _save(FigureCanvasAgg(fig), out[0])

    paths = study_paths(trials, search)
    logs = {p.path for p in search.parameters if p.log}
    fig = Figure(figsize=(4.0 * len(paths), 3.6))
    for i, path in enumerate(paths):
        ax = fig.add_subplot(1, len(paths), i + 1)
        pairs = [(params_of(t)[path], t.value) for t in trials if path in params_of(t)]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in pairs)
        if numeric:
            ax.scatter([v for v, _ in pairs], [y for _, y in pairs], s=18)
            if path in logs:
                ax.set_xscale("log")
        else:                                   # choices (names, mappings): one column per value seen
            labels = sorted({_cell(v) for v, _ in pairs})
            ax.scatter([labels.index(_cell(v)) for v, _ in pairs], [y for _, y in pairs], s=18)
            ax.set_xticks(range(len(labels)), [label[:18] for label in labels], rotation=20, fontsize=8)
        ax.set_xlabel(path, fontsize=8)
        ax.set_ylabel(search.metric)
    fig.tight_layout()
    _save(FigureCanvasAgg(fig), out[1])
    return out


def _save(canvas, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    canvas.print_png(str(tmp))
    os.replace(tmp, path)


def hparams(study, search: SearchSpec, study_dir: Path, total: int) -> Path | None:
    """TensorBoard's HParams dashboard: the study's config at tensorboard/, one run per finished trial.

    Written with tf.summary and the tensorboard package's hparams API, in the tuner process,
    after its trials (TensorFlow is imported here only)."""
    trials = [t for t in counted(study, total) if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    if not trials:
        return None
    from ..cli import import_tensorflow

    import_tensorflow()
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    root = study_dir / TENSORBOARD
    domains = {}
    for param in search.parameters:
        if param.kind == "choice":
            domains[param.path] = hp.HParam(param.path, hp.Discrete(sorted({_hp_value(c) for c in param.choices},
                                                                            key=str)))
        elif param.kind == "int":
            domains[param.path] = hp.HParam(param.path, hp.IntInterval(int(param.low), int(param.high)))
        else:
            domains[param.path] = hp.HParam(param.path, hp.RealInterval(float(param.low), float(param.high)))
    with tf.summary.create_file_writer(str(root)).as_default():
        hp.hparams_config(hparams=list(domains.values()),
                          metrics=[hp.Metric(search.metric, display_name=search.metric)])
    for t in trials:
        values = {domains[k]: _hp_value(v) for k, v in params_of(t).items() if k in domains}
        with tf.summary.create_file_writer(str(root / f"{t.number:03d}")).as_default():
            hp.hparams(values, trial_id=f"{t.number:03d}")
            value = t.value if t.value is not None else (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan)
            tf.summary.scalar(search.metric, value, step=max(t.intermediate_values, default=0))
    return root


def _hp_value(value: Any):
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)
