"""A CSV file bigger than memory, streamed: parsed in tf.data, chunk by chunk, vectorised.

Chosen for a csv source when the file is larger than STREAM_BYTES, or with `stream: true`.
Nothing is held per example: lines are read by `TextLineDataset` in blocks of BLOCK lines,
split into fields and converted to numbers by `tf.io.decode_csv` (no per-row Python), and
each line goes to the train / validation / test split by a seeded hash of its line number,
so the split is the same every epoch and every run of the spec, and needs no index in memory.

What cannot come from a single pass is taken from the first SAMPLE_ROWS rows, read with the
ordinary CSV reader: column types (numeric or text), text categories and the label
vocabulary. A later row that breaks them (a text cell in a numeric column, a new label, a
wrong number of fields) stops training with an error naming the file and the line: the
pipeline checks each chunk and reports the first bad line number, and `find_bad_file`
re-reads the file in Python to say what is wrong there when TensorFlow's own op failed.

The line count (for split sizes) comes from counting newline bytes, at disk speed. The
split is not stratified (the hash does not know the labels); each fraction is exact in
expectation. Fields may be quoted as RFC 4180 says (`tf.io.decode_csv`), but a row stays on one
line: a quoted line break is an error at its line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError, Diagnostic, Loc
from .csvfile import MISSING, CsvFile, parse_csv_text
from .split import Arrays
from .table import file_error

STREAM_BYTES = 256 * 2 ** 20        # bigger CSV files stream (or `stream: true`)
SAMPLE_ROWS = 10_000
BLOCK = 32_768                      # lines parsed by one decode_csv call
SHUFFLE_BLOCKS = 8                  # training order: blocks shuffled in a buffer of 8, rows within each
SHUFFLE_BUFFER = 16_384             # a per-example shuffle buffer (TFRecord records)
_HASH = 0x9E3779B97F4A7C15          # Fibonacci hashing of line numbers


@dataclass(frozen=True)
class CsvLayout:
    """What the sample says about the file: which columns feed which input, and how to encode them."""

    path: str
    delimiter: str
    header: list[str]
    skip: int                                    # header lines
    inputs: dict[str, list[str]]                 # input -> feature columns
    categories: dict[str, list[str]]             # text feature column -> its categories (one-hot)
    output: str
    target: str
    task: str                                    # classification | regression
    labels: list[str] = field(default_factory=list)   # classification: the vocabulary (text) or "0".."k-1"
    integer_labels: bool = False
    one_hot: bool = False                        # `preprocess: [one_hot]`

    @property
    def used(self) -> set[str]:
        """The columns the pipeline decodes and checks: the features, and the target if there is one."""
        return {c for cols in self.inputs.values() for c in cols} | ({self.target} if self.target else set())

    def feature_names(self) -> dict[str, list[str]]:
        """Input -> feature names, text columns as `column=category` (as the in-memory reader names them)."""
        return {name: [n for c in cols for n in ([f"{c}={v}" for v in self.categories[c]]
                                                  if c in self.categories else [c])]
                for name, cols in self.inputs.items()}


def count_lines(path: str) -> int:
    """Newline-terminated lines (plus a last unterminated one), read in 16 MB blocks."""
    n, last = 0, b"\n"
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(16 * 2 ** 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def buckets(lines: np.ndarray, seed: int, validation: float, test: float) -> np.ndarray:
    """0 train, 1 validation, 2 test for each line number (the same hash as the tf.data pipeline)."""
    u = _unit(lines.astype(np.uint64), seed)
    return np.where(u < test, 2, np.where(u < test + validation, 1, 0))


def _unit(lines: np.ndarray, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (lines + np.uint64(seed % 2 ** 32) * np.uint64(0x632BE59BD9B4E019)) * np.uint64(_HASH)
    return (h >> np.uint64(40)).astype(np.float64) / float(2 ** 24)


def layout(data, model, header: bool, columns: list[str] | None) -> tuple[CsvLayout, CsvFile]:
    """Read the first SAMPLE_ROWS rows with the ordinary reader and decide every column's encoding."""
    from .sources import _target, _target_columns
    path, delimiter = str(data.params["path"]), str(data.params.get("delimiter", ","))
    sample = _head(path, SAMPLE_ROWS + 1)
    f = parse_csv_text(path, sample, delimiter, header_row=header, columns=columns)
    outputs = tuple(model.outputs)
    if len(outputs) != 1:
        raise file_error(path, "a streamed CSV file feeds a single-output model")
    cols = _target_columns(data, outputs, f.header, f.name)[outputs[0]]
    if len(cols) != 1:
        raise file_error(path, "a streamed CSV file has one target column")
    target = cols[0]
    f.index(target, "target column")
    given = data.params.get("features")
    names = [i.name for i in model.inputs]
    if isinstance(given, dict):
        inputs = {n: [str(c) for c in given.get(n) or []] for n in names}
    else:
        feats = ([given] if isinstance(given, str) else list(given)) if given else [c for c in f.header if c != target]
        if len(names) != 1:
            raise file_error(path, f"the model has {len(names)} inputs: give `features: {{INPUT: [COLUMNS]}}`")
        inputs = {names[0]: feats}
    from .csvfile import MAX_CATEGORIES, parse_column

    categories = {}
    for group in inputs.values():
        for c in group:
            f.index(c, "feature column")
            values = parse_column(f, c)
            if values.dtype.kind == "U":
                cats = sorted(set(values.tolist()))
                if len(cats) > MAX_CATEGORIES:
                    raise file_error(path, f"column {c!r} is text with more than {MAX_CATEGORIES:,} distinct values "
                                     "in the first rows alone; leave it out with `features: [...]`", line=1, col=1)
                categories[c] = cats
    raw = parse_column(f, target)
    y, task, classes = _target(data, outputs[0], raw, path, f"column {target!r}", f.lines)
    lay = CsvLayout(path, delimiter, f.header, 1 if header else 0, inputs, categories, outputs[0], target, task,
                    list(classes or []), raw.dtype.kind in "iu", any(p.name == "one_hot" for p in data.preprocess))
    from .bind import shape_text

    for spec in model.inputs:
        width = len(lay.feature_names()[spec.name])
        if tuple(spec.shape) not in ((width,), (None,)):
            raise DataError(Diagnostic(f"input {spec.name!r} expects shape {shape_text(spec.shape)} per example but "
                                       f"the data (columns of {os.path.basename(path)}) has shape ({width},)",
                                       spec.loc or data.loc, f"model.inputs.{spec.name}"))
    return lay, f


def _head(path: str, lines: int) -> str:
    out = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for _ in range(lines):
            line = fh.readline()
            if not line:
                break
            out.append(line)
    return "".join(out)


@dataclass(frozen=True)
class CsvStream:
    """One split of a streamed CSV file (the `Stream` interface: len, y, sample, dataset)."""

    layout: CsvLayout
    bucket: int                  # 0 train, 1 validation, 2 test
    count: int
    seed: int
    validation: float
    test: float
    origin: None = None

    @property
    def y(self) -> dict[str, np.ndarray]:
        return {}                # not in memory: the labels are checked against the sample's vocabulary

    def __len__(self) -> int:
        return self.count

    def sample(self, n: int) -> Arrays:
        """The first n examples of this split, encoded as the pipeline encodes them."""
        for x, y in self.dataset(max(1, n), shuffle=False, seed=0).take(1):
            xs = x if isinstance(x, dict) else {next(iter(self.layout.inputs)): x}
            return Arrays({k: np.asarray(v) for k, v in xs.items()}, {self.layout.output: np.asarray(y)})
        return Arrays({k: np.zeros((0, 1), np.float32) for k in self.layout.inputs}, {})

    def take(self, index):
        raise DataError(Diagnostic("a streamed CSV split cannot be indexed; use sample(n)"))

    def dataset(self, batch_size: int, shuffle: bool, seed: int, targets: bool = True, cache: bool = True):
        import tensorflow as tf

        lay = self.layout
        tables = {c: _table(v) for c, v in lay.categories.items()}
        label_table = _table(lay.labels) if lay.task == "classification" and not lay.integer_labels else None
        split_seed, lo, hi = self.seed, *_bounds(self.bucket, self.validation, self.test)

        text = set(tables) | ({lay.target} if label_table is not None else set())
        defaults = [_record_default(tf, c in lay.used, c in text) for c in lay.header]

        def parse(index, lines, draw=None):
            checks = []
            first = index * BLOCK + lay.skip + 1                 # file line number of lines[0]
            numbers = tf.range(tf.size(lines), dtype=tf.int64) + first
            lines = tf.strings.strip(lines)
            keep = tf.strings.length(lines) > 0
            u = _tf_unit(numbers, split_seed)
            keep &= (u >= lo) & (u < hi)
            lines, numbers = tf.boolean_mask(lines, keep), tf.boolean_mask(numbers, keep)
            # RFC 4180 quoting; a bad row (fields, an empty or unparsable number) fails the op, and
            # find_bad_file then names its line.
            cells = tf.io.decode_csv(lines, defaults, field_delim=lay.delimiter, use_quote_delim=True)
            column = {c: cells[j] for j, c in enumerate(lay.header)}
            x = {}
            for name, cols in lay.inputs.items():
                parts = []
                for c in cols:
                    if c in tables:
                        k = tables[c].lookup(tf.strings.strip(column[c]))
                        checks.append(_assert_known(k, numbers, c))
                        parts.append(tf.one_hot(k, len(lay.categories[c]), dtype=tf.float32))
                    else:
                        parts.append(_finite(column[c], numbers, c, checks)[:, None])
                x[name] = tf.concat(parts, axis=1)
            block = {"x": x}
            if lay.target:                             # (a file to predict on has features only)
                block["y"] = label(column[lay.target], numbers, checks)
            if draw is not None:                       # this epoch's order of the block's rows
                order = tf.argsort(tf.random.stateless_uniform(tf.shape(numbers), tf.stack([draw, index])))
                block = tf.nest.map_structure(lambda v: tf.gather(v, order), block)
            with tf.control_dependencies(checks):      # a bad value fails the block, naming its line number
                block = tf.nest.map_structure(tf.identity, block)
            xs = block["x"][next(iter(x))] if len(x) == 1 else block["x"]
            return (xs, block["y"]) if targets and "y" in block else xs

        def label(target, numbers, checks):
            if lay.task != "classification":
                return _finite(target, numbers, lay.target, checks)[:, None]
            if label_table is not None:
                k = label_table.lookup(tf.strings.strip(target))
            else:
                k = tf.cast(_finite(target, numbers, lay.target, checks), tf.int64)
            checks.append(_assert_known(k, numbers, lay.target, len(lay.labels)))
            return tf.one_hot(k, len(lay.labels)) if lay.one_hot else tf.cast(k, tf.int32)

        # Whole blocks flow through the pipeline, never single rows (a tf.data element per row costs
        # more than parsing it): shuffled, a block's rows are permuted by a draw that changes every
        # epoch (Dataset.random), the blocks pass a shuffle buffer, and rebatch cuts the batches.
        blocks = tf.data.TextLineDataset(lay.path).skip(lay.skip).batch(BLOCK).enumerate()
        if shuffle:
            draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip(blocks, draws).map(lambda block, draw: parse(block[0], block[1], draw),
                                                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.shuffle(SHUFFLE_BLOCKS, seed=seed, reshuffle_each_iteration=True)
        else:
            ds = blocks.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.rebatch(batch_size).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
        from .stream import register

        return register(ds, self)

    def find_bad_file(self) -> None:
        """After a failed epoch: re-read the file with Python's csv module and raise a DataError at the
        first bad line (TensorFlow's CSV op names no line)."""
        lay = self.layout
        wanted = lay.used
        with open(lay.path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            reader = csv.reader(fh, delimiter=lay.delimiter)
            start = 1
            try:
                for record in reader:
                    number, start = start, reader.line_num + 1
                    if number <= lay.skip or not any(c.strip() for c in record):
                        continue
                    if reader.line_num > number:      # the pipeline reads line by line
                        raise _line_error(lay, number, f"a quoted field on line {number} holds a line break "
                                          f"(the row runs to line {reader.line_num}); a streamed CSV file keeps "
                                          "each row on one line")
                    _check_record(lay, wanted, number, [c.strip() for c in record])
            except csv.Error as exc:
                raise _line_error(lay, start, f"malformed CSV on line {start}: {exc}") from None


def _record_default(tf, used: bool, text: bool):
    """decode_csv's record default: every column is decoded (so that a row with too many fields
    fails too); a used one is required (an empty cell fails), as float32 unless it holds text."""
    if not used:
        return tf.constant("", tf.string)
    return tf.constant([], tf.string if text else tf.float32)


def _check_record(lay: CsvLayout, wanted: set[str], number: int, cells: list[str]) -> None:
    if len(cells) != len(lay.header):
        raise _line_error(lay, number, f"line {number} has {len(cells)} field"
                          f"{'s' * (len(cells) != 1)} but the header has {len(lay.header)}")
    for j, cell in enumerate(cells):
        column = lay.header[j]
        if column not in wanted:
            continue
        problem = _cell_problem(lay, column, cell)
        if problem:
            raise _line_error(lay, number, f"column {column!r} {problem} on line {number} ({cell!r})",
                              col=1 + sum(len(c) + 1 for c in cells[:j]))


def _cell_problem(lay: CsvLayout, column: str, cell: str) -> str | None:
    if cell.lower() in MISSING:
        return "is missing"
    if column in lay.categories:
        return None if cell in lay.categories[column] else "has a category not in the file's first rows"
    if column == lay.target and lay.task == "classification" and not lay.integer_labels:
        return None if cell in lay.labels else "has a label not in the file's first rows"
    try:
        value = float(cell)
    except ValueError:
        return "holds numbers but has text"
    if not np.isfinite(value):
        return "is not a finite number"
    if column == lay.target and lay.task == "classification" and str(int(value)) not in lay.labels:
        return f"has the label {cell}, outside the classes 0..{len(lay.labels) - 1} of the file's first rows"
    return None


def _line_error(lay: CsvLayout, line: int, message: str, col: int = 1) -> DataError:
    return DataError(Diagnostic(message, Loc(lay.path, line, col),
                                hint="fix the line; in a streamed CSV file every row must match the first "
                                     f"{SAMPLE_ROWS:,} rows' columns, types and labels"))


def _bounds(bucket: int, validation: float, test: float) -> tuple[float, float]:
    return {2: (0.0, test), 1: (test, test + validation), 0: (test + validation, 1.0 + 1e-9)}[bucket]


def _tf_unit(numbers, seed: int):
    import tensorflow as tf

    # uint64 arithmetic wraps as numpy's does; the same unit value for the same line and seed.
    h = (tf.cast(numbers, tf.uint64) + tf.constant(seed % 2 ** 32, tf.uint64) * tf.constant(0x632BE59BD9B4E019,
                                                                                           tf.uint64))
    h = h * tf.constant(_HASH, tf.uint64)
    return tf.cast(tf.bitwise.right_shift(h, tf.constant(40, tf.uint64)), tf.float64) / float(2 ** 24)


def _table(values: list[str]):
    import tensorflow as tf

    init = tf.lookup.KeyValueTensorInitializer(tf.constant(values, tf.string),
                                               tf.range(len(values), dtype=tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=-1)


def _assert_known(index, numbers, column: str, top: int | None = None):
    import tensorflow as tf

    bad = index < 0 if top is None else (index < 0) | (index >= top)
    where = tf.where(bad)
    return tf.debugging.Assert(tf.equal(tf.size(where), 0), [f"kspec-csv-value {column} at line",
                                                            tf.gather(numbers, where[:1, 0])], summarize=1)


def _finite(values, numbers, column: str, checks: list):
    """`values` (decoded float32), with a check that names the first line holding nan or inf."""
    import tensorflow as tf

    bad = tf.where(~tf.math.is_finite(values))
    checks.append(tf.debugging.Assert(tf.equal(tf.size(bad), 0), [f"kspec-csv-value {column} at line",
                                                                   tf.gather(numbers, bad[:1, 0])], summarize=1))
    return values


def wants_stream(data) -> bool:
    """`stream: true`, or (by default) a CSV file bigger than STREAM_BYTES."""
    if data.source != "csv" or not data.params.get("path"):
        return False
    choice = data.params.get("stream", "auto")
    if choice is True or choice is False:
        return choice
    return _big(str(data.params["path"]))


def _big(path: str) -> bool:
    """Over STREAM_BYTES (a path that cannot be read is left to the in-memory reader's error)."""
    try:
        return os.stat(path).st_size > STREAM_BYTES
    except OSError:
        return False


def stream_csv(data, model, seed: int):
    """The Splits of a streamed CSV file."""
    from .files import check_regular
    from .sources import CSV_PARAMS
    from .split import Splits
    from .table import check_params, source_error

    check_params(data, CSV_PARAMS, "a csv source")
    check_regular(str(data.params["path"]), "CSV file")
    header, columns = data.params.get("header", True), data.params.get("columns")
    if not isinstance(header, bool):
        raise source_error(data, f"header must be true or false, got {header!r}")
    if data.classes is not None or data.reshape:
        raise source_error(data, "`classes` and `reshape` apply to CSV files read into memory, not streamed")
    lay, f = layout(data, model, header, [str(c) for c in columns] if columns else None)
    lines = count_lines(lay.path)
    b = buckets(np.arange(lay.skip + 1, lines + 1), seed, data.validation, data.test)
    sizes = [int((b == k).sum()) for k in range(3)]
    if sizes[0] < 1:
        raise DataError(Diagnostic("split leaves no training examples", data.loc, "data.split"))
    parts = [CsvStream(lay, k, sizes[k], seed, data.validation, data.test) for k in range(3)]
    note = (f"data: streaming {lay.path} ({lines - lay.skip:,} lines) through tf.data; column types and "
            f"labels from its first {min(SAMPLE_ROWS, len(f.rows)):,} rows; split by a seeded hash of the line "
            "number (not stratified)")
    return Splits(train=parts[0], validation=parts[1] if data.validation > 0 else None,
                  test=parts[2] if data.test > 0 else None, task=lay.task, tasks={lay.output: lay.task},
                  class_names={lay.output: lay.labels} if lay.task == "classification" else {},
                  feature_names=lay.feature_names(), source=lay.path, targets={lay.output: lay.target},
                  file=lay.path, notes=(note,))


def predict_stream(path: str, model, feature_names: dict[str, list[str]], batch_size: int):
    """`kspec predict RUN BIG.csv`: a CSV file over STREAM_BYTES streamed in the layout the run was
    trained with (its recorded feature names: `column` or `column=category`); None for a smaller
    file or one the in-memory reader must judge (`read_inputs` reads it)."""
    ext = os.path.splitext(path)[1].lower()
    names = [i.name for i in model.inputs]
    if ext not in (".csv", ".tsv") or any(i.dtype == "string" for i in model.inputs) \
            or not all(feature_names.get(n) for n in names) or not _big(path):
        return None
    from .files import check_regular

    check_regular(path, "input file")
    delimiter = "\t" if ext == ".tsv" else ","
    f = parse_csv_text(path, _head(path, 2), delimiter)
    inputs: dict[str, list[str]] = {}
    categories: dict[str, list[str]] = {}
    for name in names:
        columns: list[str] = []
        for feature in feature_names[name]:
            column, _, category = feature.partition("=")
            if feature in f.header or not category:        # a numeric column (its name may hold "=")
                column = feature
            else:
                categories.setdefault(column, []).append(category)
            if column not in columns:
                f.index(column, "feature column")
                columns.append(column)
        inputs[name] = columns
    lay = CsvLayout(path, delimiter, f.header, 1, inputs, categories, output="", target="", task="none")
    return CsvStream(lay, 0, count_lines(path) - 1, 0, 0.0, 0.0).dataset(batch_size, shuffle=False, seed=0,
                                                                        targets=False)
