"""Streamed splits: examples that stay in their files until `tf.data` reads them, batch by batch.

A `Stream` is the streamed counterpart of `Arrays` and offers what every consumer
of a split needs: `len()`, the targets `y` (class indices are a few bytes per
example, so they are in memory: the split, `check_labels` and class weights use
them as for arrays), `take(index)`, `sample(n)` (decoded `Arrays` of the first n
examples, for export checks and `kspec check --overfit`) and `dataset(...)`, the
batched pipeline. `pipeline.make_dataset` and `pipeline.input_dataset` accept both,
so train, evaluate, predict and adapt never need to know which one they hold.

Caching (`data.cache`): `memory` keeps the decoded examples after the first epoch,
`disk` writes them to a tf.data cache in kspec's own cache folder (`cache_root`), named
after a hash of everything that determines them, so a later run of the same spec reuses
it; `none` decodes every epoch; `auto` (the default) caches in memory when the decoded
data set fits comfortably (AUTO_CACHE_FRACTION of the memory available, at most
AUTO_CACHE_MAX) and otherwise streams; the choice is printed and kept in data.json.

A spec never names the cache folder (kspec writes only inside its run directory and its
own folders): the command line may, with `--cache-dir DIR` (which sets CACHE_DIR_ENV, so
tune trials and local workers inherit it).

A disk cache is filled once, before the first epoch, under a temporary name in the cache
folder, then published by renaming its folder: a rename is atomic and fails when the
name exists, so two runs filling the same cache at once each write their own copy and
the first to finish wins, and a run killed half-way leaves only a `.partial-*` folder,
never a cache that looks complete (tf.data alone would leave a `.lockfile` that makes the
next run fail). Partial folders untouched for STALE_PARTIAL_S are removed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import DataError, Diagnostic
from .shard import Sharding
from .split import Arrays

CACHE_MODES = ("auto", "memory", "none", "disk")
CACHE_DIR_ENV = "KSPEC_CACHE_DIR"               # set by --cache-dir
CACHE_PREFIX = "kspec-cache-"
STALE_PARTIAL_S = 3600
FILL_BATCH = 256
AUTO_CACHE_FRACTION = 0.25
AUTO_CACHE_MAX = 4 * 2 ** 30
DISK_SHUFFLE_BUFFER = 4096


@dataclass(frozen=True)
class CachePlan:
    mode: str                        # "memory" | "none" | "disk"
    directory: str | None = None
    key: str = ""                    # hash of what determines the decoded examples (disk cache file names)
    note: str = ""


@dataclass(frozen=True)
class Stream:
    """One split of a streamed source: each example's file (`refs.x`) and its targets (`refs.y`)."""

    refs: Arrays
    reader: Any                      # images.ImageReader: file path tensor -> input tensor
    cache: CachePlan
    split: str = "train"

    @property
    def paired(self) -> bool:
        """Segmentation: the targets are mask files (refs.y holds their paths), decoded like the inputs."""
        return getattr(self.reader, "paired", False)

    @property
    def y(self) -> dict[str, np.ndarray]:
        return {} if self.paired else self.refs.y     # no per-example targets in memory for masks

    @property
    def masks(self) -> np.ndarray:
        return next(iter(self.refs.y.values()))

    @property
    def origin(self) -> np.ndarray | None:
        return self.refs.origin

    @property
    def files(self) -> np.ndarray:
        return next(iter(self.refs.x.values()))

    def __len__(self) -> int:
        return len(self.refs)

    def take(self, index: np.ndarray) -> "Stream":
        return replace(self, refs=self.refs.take(index), cache=replace(self.cache, mode="none"))

    def sample(self, n: int) -> Arrays:
        """The first `n` examples, decoded, as Arrays."""
        k = min(n, len(self))
        if getattr(self.reader, "batched", False):
            return Arrays(self.reader.read_many(self.files[:k]), {o: v[:k] for o, v in self.y.items()},
                          self.origin[:k] if self.origin is not None else None)
        x = {name: np.stack([self.reader.read(str(p)) for p in files[:k]]) if k else np.zeros((0,))
             for name, files in self.refs.x.items()}
        if self.paired:                 # masks decoded, their values checked against the output's units
            y = {o: np.stack([self.reader.read_mask(str(p)) for p in v[:k]]) if k else np.zeros((0,), np.uint8)
                 for o, v in self.refs.y.items()}
            return Arrays(x, y, self.origin[:k] if self.origin is not None else None)
        return Arrays(x, {o: v[:k] for o, v in self.y.items()},
                      self.origin[:k] if self.origin is not None else None)

    def dataset(self, batch_size: int, shuffle: bool, seed: int, targets: bool = True, cache: bool = True,
                sharding: Sharding | None = None):
        """Batched (x, y) (or x) pipeline: shuffle the file list, decode in parallel, cache as planned, prefetch.
        With `sharding` (one input pipeline of several workers, shard.py), only this worker's share of the
        files is decoded, batched by `batch_size` (the per-replica batch)."""
        import tensorflow as tf

        if getattr(self.reader, "batched", False):
            return register(self._batched(batch_size, shuffle, seed, targets, cache), self)
        names = list(self.refs.x)
        files = tuple(self.refs.x[n].astype(str) for n in names)
        paired = self.paired
        y = (self.masks.astype(str) if paired else _structure(self.y)) if targets and self.refs.y else None
        ds = tf.data.Dataset.from_tensor_slices((files, y) if y is not None else (files,))
        stream = self
        if sharding is not None:                 # before decoding: each file is read by one worker
            ds = ds.shard(sharding.workers, sharding.index)
            stream = replace(self, cache=replace(self.cache, key=f"{self.cache.key}-worker{sharding.index}of"
                                                                f"{sharding.workers}"))   # its own disk cache
        reader = self.reader

        def decode(paths, *rest):
            decoded = [reader.element(p) for p in paths]
            x = decoded[0] if len(decoded) == 1 else dict(zip(names, decoded))
            if not rest:
                return x
            return x, (reader.mask(rest[0]) if paired else rest[0])

        mode = self.cache.mode if cache else "none"
        auto = tf.data.AUTOTUNE
        if mode == "none":
            if shuffle:
                ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
            ds = ds.map(decode, num_parallel_calls=auto, deterministic=True)
        else:
            ds = ds.map(decode, num_parallel_calls=auto, deterministic=True)
            if mode == "disk":
                ds = stream._disk_cached(ds)
            else:
                ds = ds.cache()
            if shuffle:
                buffer = len(self) if mode == "memory" else min(len(self), DISK_SHUFFLE_BUFFER)
                ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
        if paired and y is not None:
            ds = ds.map(lambda x, mask: (x, reader.bounded(mask)), num_parallel_calls=auto, deterministic=True)
        ds = ds.batch(batch_size).prefetch(auto)
        options = tf.data.Options()
        shard_policy = tf.data.experimental.AutoShardPolicy
        options.experimental_distribute.auto_shard_policy = shard_policy.OFF if sharding else shard_policy.DATA
        return register(ds.with_options(options), self)

    def _batched(self, batch_size: int, shuffle: bool, seed: int, targets: bool, cache: bool):
        """Readers of whole batches (memory-mapped arrays): shuffle indices, batch them, gather the rows."""
        import tensorflow as tf

        index = self.files.astype(np.int64)
        y = _structure(self.y) if targets and self.y else None
        ds = tf.data.Dataset.from_tensor_slices((index, y) if y is not None else index)
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        reader = self.reader
        ds = ds.batch(batch_size).map((lambda i, t: (reader.batch(i), t)) if y is not None else reader.batch,
                                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    def cache_file(self) -> str:
        """The folder of this split's disk cache (its tf.data cache files are `cache.*` inside)."""
        return os.path.join(str(self.cache.directory), f"{CACHE_PREFIX}{self.cache.key}-{self.split}")

    def _disk_cached(self, decoded):
        """`decoded` read back from the split's disk cache, which is filled first if no run has yet."""
        folder = self.cache_file()
        prefix = os.path.join(folder, "cache")
        if not os.path.exists(prefix + ".index"):
            import tensorflow as tf

            try:
                fill_disk_cache(decoded, folder)
            except tf.errors.OpError:
                self.find_bad_file()            # name the file that failed, if one did
                raise
        return decoded.cache(prefix)            # the index exists: tf.data only reads

    def find_bad_file(self) -> None:
        """Decode every file eagerly; raise a DataError naming the first that fails (after a failed epoch)."""
        import tensorflow as tf

        columns = list(self.refs.x.values()) + ([self.masks] if self.paired else [])
        for column, files in enumerate(columns):
            read = self.reader.read_mask if column == len(self.refs.x) else self.reader.read
            for path in files:
                try:
                    read(str(path))             # a mask value above the output's units: a DataError naming it
                except (tf.errors.OpError, ValueError) as exc:
                    text = getattr(exc, "message", str(exc)).split("[Op:")[0].strip()
                    raise DataError(Diagnostic(f"cannot decode image: {text.splitlines()[-1] if text else exc}",
                                               _loc(str(path)),
                                               hint="replace or remove the file, or set "
                                                    "`data.on_bad_file: skip`")) from None


def fill_disk_cache(decoded, folder: str) -> None:
    """Write the tf.data cache of `decoded` into a temporary folder next to `folder`, then rename it
    to `folder` (atomic; if another run published it meanwhile, that copy, of the same examples, stays)."""
    _remove_stale_partials(folder)
    partial = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".partial-", dir=os.path.dirname(folder))
    try:
        for _ in decoded.cache(os.path.join(partial, "cache")).batch(FILL_BATCH).prefetch(1):
            pass
        try:
            os.rename(partial, folder)
        except OSError:                         # published by a run that finished first
            if not os.path.exists(os.path.join(folder, "cache.index")):
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _remove_stale_partials(folder: str) -> None:
    """Partial caches of killed runs: a filling run writes to its folder constantly, these stopped long ago."""
    for partial in glob.glob(glob.escape(folder) + ".partial-*"):
        try:
            newest = max([os.stat(partial).st_mtime] + [os.stat(os.path.join(partial, f)).st_mtime
                                                         for f in os.listdir(partial)])
        except OSError:
            continue
        if time.time() - newest > STALE_PARTIAL_S:
            shutil.rmtree(partial, ignore_errors=True)


def cache_root(environ=None) -> str:
    """Where `data.cache: disk` keeps decoded examples: `--cache-dir` / $KSPEC_CACHE_DIR, else
    $XDG_CACHE_HOME/kspec/data, else ~/.cache/kspec/data (as pip, Keras and Hugging Face keep theirs)."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(CACHE_DIR_ENV, "").strip()
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    base = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "kspec", "data")


_STREAMS: dict[int, Any] = {}


def register(ds, stream):
    """Remember which streamed split `ds` reads, so that a failed epoch can name the bad file."""
    _STREAMS[id(ds)] = stream
    weakref.finalize(ds, _STREAMS.pop, id(ds), None)
    return ds


def explain_failure(*datasets) -> None:
    """Called when fit/evaluate fails: if a dataset is streamed from files, raise a DataError naming
    the file that cannot be read (tf.data errors name no file); otherwise return."""
    for ds in datasets:
        stream = _STREAMS.get(id(ds)) if ds is not None else None
        if stream is not None:
            stream.find_bad_file()


def _loc(path: str):
    from ..errors import Loc

    return Loc(path)


def _structure(arrays: dict):
    return next(iter(arrays.values())) if len(arrays) == 1 else dict(arrays)


def plan_cache(setting: Any, examples: int, bytes_per_example: int, key_parts: dict) -> CachePlan:
    """What to cache, from `data.cache` and the decoded size of the whole data set."""
    total = examples * bytes_per_example
    size = _size_text(total)
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if setting == "disk":
        directory = cache_root()
        return CachePlan("disk", directory, key, f"data: caching {examples:,} decoded examples ({size}) on disk "
                                                 f"in {directory} (data.cache: disk)")
    if setting == "memory":
        return CachePlan("memory", note=f"data: caching {examples:,} decoded examples ({size}) in memory "
                                        "(data.cache: memory)")
    if setting == "none":
        return CachePlan("none", note=f"data: streaming {examples:,} examples from their files each epoch "
                                      "(data.cache: none)")
    budget = min(AUTO_CACHE_MAX, int(AUTO_CACHE_FRACTION * _available_memory()))
    if total <= budget:
        return CachePlan("memory", note=f"data: caching {examples:,} decoded examples ({size}) in memory "
                                        f"(data.cache: auto; fits in {_size_text(budget)})")
    return CachePlan("none", note=f"data: streaming {examples:,} examples from their files each epoch: decoded "
                                  f"they take {size}, more than data.cache: auto keeps in memory "
                                  f"({_size_text(budget)}); set `data.cache: disk` to decode once")


def _available_memory() -> int:
    """MemAvailable (free memory plus what the page cache can give back), in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 30


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
