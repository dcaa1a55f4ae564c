"""The Optuna study of a `search:` section: its storage, sampler and pruner.

Storage `auto` is Optuna's JournalStorage on a file in the study directory: several local
`kspec tune` processes may append to it at once (the file lock is Optuna's open(O_EXCL) lock;
SQLite is not safe for parallel writers). `postgresql://...` is Optuna's RDB storage, shared by
every machine that names it. Optuna is imported here only, when `kspec tune` runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import Diagnostic, KspecError
from .space import SAMPLERS, SearchSpec

JOURNAL = "study.journal"
RDB_ATTEMPTS = 5
# What PostgreSQL answers a process whose CREATE TABLE / CREATE TYPE of Optuna's schema raced
# another's (psycopg2's error classes, named in the message): the schema exists now, so try again.
SCHEMA_RACE_ERRORS = ("UniqueViolation", "DuplicateTable", "DuplicateObject")


class TuneError(KspecError):
    """The study cannot be opened or run (storage unreachable, ...). Exit 2: it is the input's fault."""

    exit_code = 2


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError(Diagnostic("kspec tune needs Optuna, which is not installed",
                                   hint="pip install 'kspec[tune]'")) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage(url: str, study_dir: Path):
    optuna = import_optuna()
    if url == "auto":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = str(study_dir / JOURNAL)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.startswith("postgresql://"):   # SQLAlchemy 2.1's default driver is psycopg 3; kspec[tune] has psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    import time

    for attempt in range(RDB_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:   # SQLAlchemy / psycopg2 errors: the message names the problem, not the password
            if any(e in str(exc) for e in SCHEMA_RACE_ERRORS) and attempt + 1 < RDB_ATTEMPTS:
                time.sleep(1.0)    # another process created Optuna's tables at the same moment: they exist now
                continue
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TuneError(Diagnostic(f"cannot open the study storage {redact(url)}: {text}",
                                       hint="is the database server running and the URL right?")) from None


def redact(url: str) -> str:
    """A storage URL without its password, for messages and files."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def sampler(search: SearchSpec, seed: int):
    optuna = import_optuna()
    name = search.sampler
    assert name in SAMPLERS
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        space = {p.path: _grid_values(p) for p in search.parameters}
        return optuna.samplers.GridSampler(space, seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise TuneError(Diagnostic("sampler cmaes needs the cmaes package", hint="pip install 'kspec[tune]'")) \
                from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # tpe, and auto: Optuna's own default sampler for one objective
    return optuna.samplers.TPESampler(seed=seed)


def _grid_values(param) -> list:
    from .space import encode

    return [encode(v) for v in param.grid()]


def pruner(search: SearchSpec, epochs: int | None):
    optuna = import_optuna()
    args: dict[str, Any] = search.pruner_args
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.get("startup_trials", 5),
                                           n_warmup_steps=args.get("warmup_epochs", 0))
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=args.get("min_epochs", 1),
                                              max_resource=args.get("max_epochs", epochs or "auto"),
                                              reduction_factor=args.get("reduction_factor", 3))
    return optuna.pruners.NopPruner()


def open_study(search: SearchSpec, name: str, study_dir: Path, url: str, seed: int, epochs: int | None):
    """Create the study, or join it if it exists (another process or machine, or an earlier run)."""
    optuna = import_optuna()
    study_dir.mkdir(parents=True, exist_ok=True)
    # One seed per process: two processes sharing a study must not propose the same values.
    mixed = int(hashlib.sha256(f"{seed}:{os.getpid()}:{os.uname().nodename}".encode()).hexdigest()[:8], 16)
    try:
        return optuna.create_study(study_name=name, storage=storage(url, study_dir),
                                   sampler=sampler(search, mixed), pruner=pruner(search, epochs),
                                   direction=search.direction, load_if_exists=True)
    except TuneError:
        raise
    except ValueError as exc:   # an existing study of another direction
        raise TuneError(Diagnostic(f"cannot open study '{name}': {exc}")) from None


def check_compatible(study, search: SearchSpec) -> None:
    """A study continued with another `search:` section must keep each parameter's kind, log scale and
    choices (Optuna cannot change them within a study): say so before any trial is asked."""
    from optuna import distributions as d

    from .space import encode

    ours: dict[str, Any] = {}
    for p in search.parameters:
        if p.kind == "choice":
            ours[p.path] = d.CategoricalDistribution([encode(c) for c in p.choices])
        elif p.kind == "int":
            ours[p.path] = d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            ours[p.path] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    problems = []
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name in ours:
                try:
                    d.check_distribution_compatibility(old, ours[name])
                except ValueError:
                    loc = next(p.loc for p in search.parameters if p.path == name)
                    problems.append(Diagnostic(
                        f"study '{study.study_name}' already searched {name} as {_describe(old)}; a study keeps "
                        "each parameter's kind, log scale and choices", loc, f"search.parameters.{name}",
                        hint="keep the study's values, or start another study with --study NAME"))
                ours.pop(name)
    if problems:
        raise TuneError(problems)


def _describe(distribution) -> str:
    choices = getattr(distribution, "choices", None)
    if choices is not None:
        return "a choice of " + ", ".join(map(str, choices))
    kind = "int" if type(distribution).__name__.startswith("Int") else "float"
    return f"{kind} [{distribution.low}, {distribution.high}]" + (" (log)" if distribution.log else "")
