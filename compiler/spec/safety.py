"""What a spec may not do by itself: enable code execution, write outside its run directory, or
monitor a validation metric there is no validation split for. Checked at `validate` (no Keras),
each at the value's own file:line:col.

- Trust comes from the command line only. `Backbone: {from: FILE, safe_mode: false}` would let a
  model file run code on `build`/`train`: refused here; the person running the command trusts a
  file with `--trust PATH` (compiler/trust.py).
- Every path a spec writes (a callback's `filepath`, `filename`, `log_dir`, `backup_dir`, or any
  argument whose name says dir/path/file) is relative to the run directory and stays inside it:
  an absolute path, a `..`, `~`, or the run directory itself (`.`, which BackupAndRestore would
  delete) is an error, and so is a name of kspec's own files. `compiler/train/run.py` checks again
  at train time, after resolving symbolic links (`rundir.resolve_inside`).
- `data.cache: {disk: DIR}` would make kspec write cache files into any folder a spec names:
  refused; `data.cache: disk` caches in kspec's own folder, and only the command line
  (`--cache-dir DIR`) chooses another.
- A callback's `monitor: val_*` needs a validation split (as `train.monitor` does at train time).
"""

from __future__ import annotations

from typing import Any

from ..errors import Collector
from ..rundir import path_problem, writes_path
from .tree import Map, Seq, locate

# Keras callbacks whose `monitor` defaults to val_loss (a spec that leaves it out monitors val_loss too).
DEFAULT_MONITOR = {"EarlyStopping": "val_loss", "ReduceLROnPlateau": "val_loss", "ModelCheckpoint": "val_loss"}


def check(tree: Any, errors: Collector, display_path) -> None:
    if not isinstance(tree, Map):
        return
    model = tree.get("model")
    layers = model.get("layers") if isinstance(model, Map) else None
    if isinstance(layers, Seq):
        for index, item in enumerate(layers):
            if isinstance(item, Map) and isinstance(item.get("Backbone"), Map):
                _backbone(item, item["Backbone"], display_path(["model", "layers", index, "Backbone"]), errors)
    data = tree.get("data")
    if isinstance(data, Map) and isinstance(data.get("cache"), Map):
        _cache_folder(data["cache"], errors)
    train = tree.get("train")
    callbacks = train.get("callbacks") if isinstance(train, Map) else None
    if isinstance(callbacks, Seq):
        data = tree.get("data")
        split = data.get("split") if isinstance(data, Map) else None
        validation = split.get("validation", 0) if isinstance(split, Map) else 0
        # Without a data section (a recipe template) there is nothing to say about the split yet.
        has_validation = not isinstance(data, Map) or (isinstance(validation, (int, float)) and validation > 0)
        for index, item in enumerate(callbacks):
            if isinstance(item, Map) and len(item) == 1:
                (name, args), = item.items()
                if isinstance(args, Map):
                    _callback(str(name), args, f"train.callbacks[{index}].{name}", has_validation, errors)


def _backbone(item: Map, args: Map, where: str, errors: Collector) -> None:
    if args.get("safe_mode") is False:
        loc, via = locate(args, ["safe_mode"])
        source = args.get("from")
        if isinstance(source, str):
            import os

            from .extends import relative_to

            source = os.path.abspath(relative_to(args.value_loc("from"), os.path.expanduser(source)))
        errors.add(f"Backbone '{item.get('name')}': a spec cannot turn Keras safe mode off (`safe_mode: false` "
                   "would let the model file run the Python code inside it); trust is given on the command "
                   "line, by the person running the command",
                   loc, f"{where}.safe_mode", via=via,
                   hint=f"remove `safe_mode: false`; if you trust the file, pass `--trust {source or 'PATH'}` "
                        "to kspec build/train/check")


def _cache_folder(cache: Map, errors: Collector) -> None:
    loc, via = locate(cache, ["disk"]) if "disk" in cache else (cache.loc, ())
    errors.add(f"`data.cache: {{disk: {cache.get('disk')}}}`: a spec cannot choose where kspec writes outside its "
               "run directory", loc, "data.cache.disk", via=via,
               hint="write `data.cache: disk` (cached in ~/.cache/kspec/data) or pass `--cache-dir DIR`")


def _callback(name: str, args: Map, where: str, has_validation: bool, errors: Collector) -> None:
    for key, value in args.items():
        if writes_path(str(key)):
            problem = path_problem(value, str(key))
            if problem:
                loc, via = locate(args, [key])
                errors.add(f"{name}: `{key}: {value}` {problem}", loc, f"{where}.{key}", via=via,
                           hint="write a path relative to the run directory, e.g. "
                                f"`{key}: {_example(name, str(key))}`")
    monitor = args.get("monitor", DEFAULT_MONITOR.get(name))
    if isinstance(monitor, str) and monitor.startswith("val_") and not has_validation:
        loc, via = locate(args, ["monitor"]) if "monitor" in args else (args.loc, ())
        errors.add(f"{name} monitors {monitor!r}, but there is no validation split, so no val_* metric is "
                   "ever logged", loc, f"{where}.monitor", via=via,
                   hint=f"add `data: {{split: {{validation: 0.2}}}}`, or monitor {monitor.removeprefix('val_')!r}")


def _example(name: str, key: str) -> str:
    return {"backup_dir": "backup", "log_dir": "logs", "filename": "log.csv"}.get(
        key, "checkpoints/epoch{epoch:02d}.keras" if name == "ModelCheckpoint" else "out")
