"""Turn a split file list into streamed splits: check it against the model input, plan the cache.

The split itself is `split.split_table` on the table of file paths (seeded and
stratified exactly as for arrays); this module wraps each split into a `Stream`.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..errors import DataError, Diagnostic
from ..spec.types import DataSpec, ModelSpec
from .bind import shape_text
from .split import Arrays, Examples, Splits
from .stream import CACHE_DIR_ENV, Stream, plan_cache
from .table import Table

MASK_SAMPLE = 32


def check_streamed(table: Table, data: DataSpec, model: ModelSpec) -> Table:
    """The model input must take what the reader yields (height, width, channels)."""
    if getattr(table.reader, "batched", False):
        return _check_arrays(table, data, model)
    spec = model.inputs[0]
    reader = table.reader
    have = (*reader.size, reader.channels)
    want = tuple(spec.shape)
    if len(want) != 3 or any(w is not None and w != h for w, h in zip(want, have)):
        message = (f"input {spec.name!r} expects shape {shape_text(want)} per example but the images of "
                   f"{os.path.basename(str(table.file).rstrip('/'))} are read as {shape_text(have)}")
        if len(want) == 3:
            message += " (set the input's shape, or `size:` / `color_mode:` under data.source)"
        raise DataError(Diagnostic(message, spec.loc or data.loc, f"model.inputs.{spec.name}"))
    if spec.dtype in ("string", "bool"):
        raise DataError(Diagnostic(f"input {spec.name!r} is {spec.dtype}, but images are numbers",
                                   spec.loc or data.loc, f"model.inputs.{spec.name}"))
    return table


def _check_arrays(table: Table, data: DataSpec, model: ModelSpec) -> Table:
    """Memory-mapped inputs: each input's per-example shape as declared, as many examples as targets."""
    reader = table.reader
    n = len(next(iter(table.x.values())))
    for (name, key), shape, mm in zip(reader.keys, reader.shapes, reader.arrays().values()):
        spec = next(i for i in model.inputs if i.name == name)
        want = tuple(spec.shape)
        if len(want) != len(shape) or any(w is not None and w != h for w, h in zip(want, shape)):
            raise DataError(Diagnostic(f"input {name!r} expects shape {shape_text(want)} per example but array "
                                       f"{key!r} of {os.path.basename(str(table.file))} has shape {shape_text(shape)}",
                                       spec.loc or data.loc, f"model.inputs.{name}"))
        if len(mm) != n:
            raise DataError(Diagnostic(f"array {key!r} has {len(mm)} examples but the targets have {n}",
                                       data.loc, "data.source"))
    if data.reshape:
        raise DataError(Diagnostic("`reshape` applies to arrays read into memory, not memory-mapped ones",
                                   data.loc, "data.reshape", hint="save the arrays in their final shape"))
    return table


def stream_splits(splits: Splits, table: Table, data: DataSpec, seed: int) -> Splits:
    files = next(iter(table.x.values()))
    key = {"source": dict(data.params), "reader": repr(table.reader), "seed": seed, "classes": data.classes,
           "validation": data.validation, "test": data.test,
           "files": _fingerprint([table.file] if getattr(table.reader, "batched", False) else files)}
    plan = plan_cache(data.cache, len(files), table.reader.bytes_per_example(), key)
    if getattr(table.reader, "batched", False):        # memory-mapped: the page cache is the cache
        plan = replace(plan, mode="none", note=f"data: memory-mapping {len(files):,} examples of "
                                               f"{os.path.basename(str(table.file))}, read batch by batch")
    if plan.mode == "disk":
        _make_cache_folder(str(plan.directory), data)

    def streamed(part: Examples, name: str) -> Stream:
        assert isinstance(part, Arrays), "split_table splits the table of file references in memory"
        return Stream(part, table.reader, plan, name)

    notes = [plan.note]
    if getattr(table.reader, "paired", False):
        notes.append(f"data: {len(files):,} image/mask pairs, split by a seeded shuffle (not stratified: a "
                     "segmentation example has no single class)")
    if table.skipped:
        notes.append(f"data: skipped {len(table.skipped)} unreadable file(s) (data.on_bad_file: skip; listed in "
                     "data.json)")
    return replace(splits, train=streamed(splits.train, "train"),
                   validation=streamed(splits.validation, "validation") if splits.validation is not None else None,
                   test=streamed(splits.test, "test") if splits.test is not None else None,
                   notes=tuple(notes), skipped=table.skipped)


def bound_masks(splits: Splits, output_shapes: dict[str, tuple]) -> Splits:
    """Segmentation, once the model is built: the output must be (height, width, classes) at the masks'
    size, and the masks' readers learn `classes`, so a larger mask value is an error naming the mask
    (the first MASK_SAMPLE masks are checked now, the others as they are read)."""
    from .masks import mask_sizes_fit

    parts = splits.splits()
    first = parts.get("train")
    if not isinstance(first, Stream) or not first.paired:
        return splits
    output = next(iter(first.refs.y))
    shape = tuple(output_shapes[output])
    mask_sizes_fit(shape, first.reader, output)
    reader = replace(first.reader, classes=int(shape[-1]))
    bounded = {name: replace(part, reader=reader) for name, part in parts.items() if isinstance(part, Stream)}
    bounded["train"].sample(MASK_SAMPLE)
    return replace(splits, train=bounded["train"], validation=bounded.get("validation"), test=bounded.get("test"))


def _make_cache_folder(directory: str, data: DataSpec) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise DataError(Diagnostic(f"data.cache: disk: cannot create the cache folder {directory}: "
                                   f"{exc.strerror or exc}", data.loc, "data.cache",
                                   hint=f"pass `--cache-dir DIR` (or set {CACHE_DIR_ENV}) to cache elsewhere")) from None


def _fingerprint(files) -> str:
    """Names, sizes and modification times of the files: a changed file gives a new disk cache."""
    import hashlib

    h = hashlib.sha256()
    for path in files:
        try:
            st = os.stat(str(path))
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0-\n".encode())
    return h.hexdigest()
