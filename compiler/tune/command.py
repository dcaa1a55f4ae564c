"""`kspec tune SPEC [--trials N] [--parallel K] [--storage URL] [--study NAME] [--resume] [--set ...]`.

The spec is validated first (its `search:` included), then the study opened (created, or joined:
another process, another machine, an earlier run) and its trials run until the study holds
`trials` of them. The study directory is `runs/NAME-study/` (NAME: --study, else the spec's name).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Diagnostic, Loc, SpecError
from .space import MAX_TRIALS, STORAGE_URL

MAX_PARALLEL = 256


def tune(spec_path: str, overrides: list[str], plugins: list[str], trials: int | None, parallel: int,
         storage: str | None, study_name: str | None, resume: bool, root: str = "runs") -> int:
    from ..spec.validate import load_spec

    spec = load_spec(spec_path, overrides)
    if spec.search is None:
        raise SpecError(Diagnostic("the spec has no `search:` section: nothing to tune", Loc(spec_path, 1, 1), "search",
                                   hint="add search: {objective: ..., parameters: ...} (see README, kspec tune)"))
    if spec.train is None:
        raise SpecError(Diagnostic("the spec has no `train:` section: a trial trains it", Loc(spec_path, 1, 1),
                                   "train"))
    search = spec.search
    if trials is not None and not 1 <= trials <= MAX_TRIALS:
        raise SpecError(Diagnostic(f"--trials must be 1..{MAX_TRIALS}, got {trials}"))
    if not 1 <= parallel <= MAX_PARALLEL:
        raise SpecError(Diagnostic(f"--parallel must be 1..{MAX_PARALLEL}, got {parallel}"))
    url = storage or search.storage
    if not STORAGE_URL.match(url):
        raise SpecError(Diagnostic(f"--storage is `auto` or postgresql://USER@HOST/DB, got {url.split('://')[0]}://..."))
    total = trials or search.trials
    name = study_name or spec.name
    from ..rundir import _safe

    study_dir = Path(root) / f"{_safe(name)}-study"
    from .report import hparams, plot
    from .runner import Tuner
    from .study import check_compatible, open_study, redact

    study = open_study(search, name, study_dir, url, spec.seed, spec.train.epochs)
    check_compatible(study, search)
    before = len(study.get_trials(deepcopy=False))
    where = "" if url == "auto" else f" on {redact(url)}"
    print(f"study '{name}'{where}: {min(before, total)} of {total} trials so far; "
          f"up to {parallel} at once; directory {study_dir}", flush=True)
    tuner = Tuner(spec_path=spec_path, search=search, study=study, study_dir=study_dir, total=total,
                  parallel=parallel, overrides=list(overrides), plugins=list(plugins), resume=resume)
    tuner.run()
    from .report import best_trial, counted, write_progress

    write_progress(study, search, study_dir, total)
    plot(study, search, study_dir, total)
    if os.environ.get("KSPEC_TUNE_NO_HPARAMS") is None:
        hparams(study, search, study_dir, total)
    trials_now = counted(study, total)
    states = {s: sum(t.state.name == s for t in trials_now) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    best = best_trial(study, total)
    print(f"study '{name}': {len(trials_now)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in states.items() if v))
    if best is not None:
        print(f"best: trial {best.number}, {search.metric} = {best.value:.6g}; "
              f"{study_dir / 'best.yaml'} reproduces it (kspec train {study_dir / 'best.yaml'})")
        return 0
    print("no trial completed: see trials.csv and each trial's error.txt")
    return 1
