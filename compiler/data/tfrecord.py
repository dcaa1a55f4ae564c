"""TFRecord files (one file or a glob of shards) of `tf.train.Example`s, streamed.

    source:
      tfrecord: shards/train-*.tfrecord
      features:                       # the feature description, as tf.io.parse_example takes it
        image: {dtype: string}        # encoded image bytes -> decoded for a (height, width, channels) input
        pixels: {dtype: float32, shape: [64]}
        label: {dtype: int64}
      x: pixels                       # or {INPUT: FEATURE, ...}; default: the feature named like the input
      y: label                        # or {OUTPUT: FEATURE}; default: the feature named like the output

One pass over the label feature only (the rest of each record is not parsed) counts the
records and collects the labels: the split (a seeded hash of each record's position, as for a
streamed CSV), the task and the class names come from it. The shards are read in sorted
order, so positions and splits are the same every run. A record that lacks a feature fails
its batch; `find_bad_file` then names the shard and the record.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from .split import Arrays
from .table import file_error, source_error

DTYPES = ("float32", "int64", "string")
MAX_FILES = 100_000


@dataclass(frozen=True)
class Record:
    files: tuple[str, ...]
    features: dict[str, tuple[str, tuple[int, ...]]]     # name -> (dtype, shape)
    x: dict[str, str]                                     # input -> feature
    y: dict[str, str]                                     # output -> feature
    images: dict[str, tuple[int, int, int]]               # input -> (height, width, channels) for string features
    encode: dict[str, Any]                                # output -> label vocabulary (text) or None


def _spec(data, model) -> Record:
    from .table import check_params

    check_params(data, ("path", "features", "x", "y", "task"), "a tfrecord source")
    pattern = str(data.params.get("path") or "")
    files = tuple(sorted(glob.glob(pattern)))[:MAX_FILES + 1] if any(c in pattern for c in "*?[") else (pattern,)
    if not files or len(files) > MAX_FILES:
        raise source_error(data, f"no TFRecord files match {pattern!r}" if not files else
                           f"{pattern!r} matches more than {MAX_FILES:,} files")
    from .files import check_regular

    for f in files:
        check_regular(f, "TFRecord file")
    given = data.params.get("features")
    if not isinstance(given, Mapping) or not given:
        raise source_error(data, "a tfrecord source needs `features: {NAME: {dtype: float32|int64|string, "
                           "shape: [...]}}` (the feature description)")
    features = {}
    for name, desc in given.items():
        desc = desc or {}
        dtype, shape = desc.get("dtype", "float32"), desc.get("shape", [])
        if dtype not in DTYPES or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2 ** 24 for d in shape):
            raise source_error(data, f"feature {name!r}: dtype must be one of {', '.join(DTYPES)} and shape a list "
                               f"of sizes, got {desc!r}")
        features[str(name)] = (dtype, tuple(shape))
    x = _names(data, "x", [i.name for i in model.inputs], features)
    y = _names(data, "y", list(model.outputs), features)
    images = {}
    for spec in model.inputs:
        dtype, shape = features[x[spec.name]]
        if dtype == "string":
            if len(spec.shape) != 3 or None in spec.shape:
                raise source_error(data, f"feature {x[spec.name]!r} holds bytes: input {spec.name!r} must be an "
                                   "image of known shape [height, width, channels] to decode them")
            images[spec.name] = tuple(spec.shape)
    return Record(files, features, x, y, images, {})


def _names(data, key: str, names: list[str], features) -> dict[str, str]:
    given = data.params.get(key)
    if isinstance(given, Mapping):
        chosen = {n: str(given.get(n, n)) for n in names}
    elif given is not None and len(names) == 1:
        chosen = {names[0]: str(given)}
    else:
        chosen = {n: n for n in names}
    for name, feature in chosen.items():
        if feature not in features:
            raise source_error(data, f"no feature {feature!r} in `features` for {name!r} (features: "
                               f"{', '.join(features)}); name it with `{key}: FEATURE`")
    return chosen


def _description(rec: Record, only=None):
    import tensorflow as tf

    types = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    return {n: tf.io.FixedLenFeature(shape, types[d]) for n, (d, shape) in rec.features.items()
            if only is None or n in only}


def _records(rec: Record):
    import tensorflow as tf

    return tf.data.TFRecordDataset(list(rec.files))


def stream_tfrecord(data, model, seed: int):
    """Splits of a TFRecord source, from one pass over its label feature."""
    import tensorflow as tf

    from .csvstream import buckets
    from .sources import _target
    from .split import Splits

    rec = _spec(data, model)
    labels: dict[str, list[np.ndarray]] = {o: [] for o in rec.y}
    wanted = _description(rec, set(rec.y.values()))
    ds = _records(rec).batch(4096).map(lambda b: tf.io.parse_example(b, wanted))
    try:
        for batch in ds:
            for o, f in rec.y.items():
                labels[o].append(batch[f].numpy())
    except tf.errors.OpError:
        _find_bad(rec, set(rec.y.values()))
        raise
    ys, tasks, classes = {}, {}, {}
    for o, chunks in labels.items():
        values: np.ndarray = np.concatenate(chunks) if chunks else np.zeros((0,))
        if values.dtype.kind in "OS":
            values = values.astype(str)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        ys[o], tasks[o], names = _target(data, o, values, rec.files[0], f"feature {rec.y[o]!r}")
        if names:
            classes[o] = names
    n = len(next(iter(ys.values())))
    if n == 0:
        raise file_error(rec.files[0], "the TFRecord files hold no records")
    b = buckets(np.arange(n), seed, data.validation, data.test)
    vocab = {o: classes[o] for o in ys if tasks[o] == "classification" and ys[o].ndim == 1
             and not all(c == str(i) for i, c in enumerate(classes[o]))}
    rec = Record(rec.files, rec.features, rec.x, rec.y, rec.images, vocab)
    one_hot = any(p.name == "one_hot" for p in data.preprocess)
    parts = [RecordStream(rec, k, {o: v[b == k] for o, v in ys.items()}, np.flatnonzero(b == k), seed,
                          data.validation, data.test, one_hot, {o: len(classes.get(o, ())) for o in ys})
             for k in range(3)]
    note = (f"data: streaming {n:,} records from {len(rec.files)} TFRecord file(s); split by a seeded hash of each "
            "record's position (not stratified)")
    return Splits(train=parts[0], validation=parts[1] if data.validation > 0 else None,
                  test=parts[2] if data.test > 0 else None, task=tasks[next(iter(tasks))], tasks=tasks,
                  class_names=classes, feature_names={}, source=str(data.params["path"]),
                  targets=dict(rec.y), file=rec.files[0], notes=(note,))


@dataclass(frozen=True)
class RecordStream:
    """One split of a TFRecord source (the `Stream` interface)."""

    rec: Record
    bucket: int
    y: dict[str, np.ndarray]
    positions: np.ndarray
    seed: int
    validation: float
    test: float
    one_hot: bool
    classes: dict[str, int]
    origin: None = None

    def __len__(self) -> int:
        return len(self.positions)

    def sample(self, n: int) -> Arrays:
        for x, y in self.dataset(max(1, n), shuffle=False, seed=0).take(1):
            xs = x if isinstance(x, dict) else {next(iter(self.rec.x)): x}
            ys = y if isinstance(y, dict) else {next(iter(self.rec.y)): y}
            return Arrays({k: np.asarray(v) for k, v in xs.items()}, {k: np.asarray(v) for k, v in ys.items()})
        return Arrays({}, {})

    def take(self, index):
        raise DataError(Diagnostic("a TFRecord split cannot be indexed; use sample(n)"))

    def dataset(self, batch_size: int, shuffle: bool, seed: int, targets: bool = True, cache: bool = True):
        import tensorflow as tf

        from .csvstream import SHUFFLE_BUFFER, _bounds
        from .images import decode_image
        from .stream import register

        rec, description = self.rec, _description(self.rec)
        lo, hi = _bounds(self.bucket, self.validation, self.test)
        tables = {}
        for o, names in rec.encode.items():
            init = tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int64))
            tables[o] = tf.lookup.StaticHashTable(init, -1)
        split_seed = self.seed

        def parse(records):
            ex = tf.io.parse_example(records, description)
            x = {}
            for name, feature in rec.x.items():
                if name in rec.images:
                    h, w, c = rec.images[name]
                    x[name] = tf.map_fn(lambda b: decode_image(b, h, w, c), ex[feature],
                                        fn_output_signature=tf.TensorSpec((h, w, c), tf.uint8))
                else:
                    x[name] = ex[feature]
            y = {}
            for o, feature in rec.y.items():
                v = ex[feature]
                if o in tables:
                    v = tables[o].lookup(tf.reshape(v, [-1]))
                if self.one_hot and self.classes.get(o):
                    v = tf.one_hot(tf.cast(tf.reshape(v, [-1]), tf.int32), self.classes[o])
                y[o] = v
            xs = x[next(iter(x))] if len(x) == 1 else x
            ys = y[next(iter(y))] if len(y) == 1 else y
            return (xs, ys) if targets else xs

        ds = _records(rec).enumerate()
        ds = ds.filter(lambda i, r: _in_split(i, split_seed, lo, hi)).map(lambda i, r: r)
        if shuffle:
            ds = ds.shuffle(min(SHUFFLE_BUFFER, max(len(self), 1)), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return register(ds.prefetch(tf.data.AUTOTUNE).with_options(options), self)

    def find_bad_file(self) -> None:
        _find_bad(self.rec, set(self.rec.features))


def _in_split(i, seed, lo, hi):
    from .csvstream import _tf_unit

    u = _tf_unit(i, seed)
    return (u >= lo) & (u < hi)


def _find_bad(rec: Record, features) -> None:
    """Parse record by record to name the shard and record that fails."""
    import tensorflow as tf

    description = _description(rec, features)
    for path in rec.files:
        for k, record in enumerate(tf.data.TFRecordDataset(path)):
            try:
                tf.io.parse_single_example(record, description)
            except tf.errors.OpError as exc:
                text = getattr(exc, "message", str(exc)).split("[Op:")[0].strip().splitlines()[-1]
                raise DataError(Diagnostic(f"record {k} (counting from 0) cannot be parsed: {text}", Loc(path),
                                           hint="every record needs every feature of `features`, with its "
                                                "dtype and shape")) from None
    return None


def wants(data) -> bool:
    return data.source == "tfrecord"

