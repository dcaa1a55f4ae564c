"""CSV files: read with the stdlib `csv` module (no pandas), every cell traceable to its line.

Used both by the `csv` source (features + target) and by `kspec predict` (features
only), so both encode columns the same way:

- a column whose cells all parse as numbers is numeric (float32 features);
- any other column is categorical and is one-hot encoded (one 0/1 feature per
  category, named `column=category`, categories sorted). One-hot rather than
  integer codes because an MLP would otherwise read an order into the codes.
  The names record the categories, so `kspec predict` can encode a new file
  identically from `Splits.feature_names` alone;
- a missing cell (empty, NA, n/a, nan, null, none, ?) or a non-finite number is
  an error at `file:line:col`: silently dropping or filling rows would change
  the data set behind the user's back.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .files import read_bytes
from .table import did_you_mean, file_error

MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}
MAX_BYTES = 2 * 2 ** 30          # a CSV read into memory; bigger data belongs in .npy / TFRecord files
# A text column is one-hot encoded, one feature per category: a unique id column of 40,000 rows
# would become 40,000 x 40,000 floats. More categories than this is an error naming the column.
MAX_CATEGORIES = 1000
_MISSING_HINT = "missing values are not allowed; fill or drop them"


@dataclass(frozen=True)
class CsvFile:
    """A parsed CSV file: the header, the data rows (cells stripped) and each row's line number."""

    path: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]            # 1-based line in the file where each row starts
    raw: list[str]              # the file's text lines, for column positions in errors
    delimiter: str = ","

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def index(self, column: str, what: str = "column") -> int:
        """The position of `column`, or an error listing the columns that exist."""
        if column in self.header:
            return self.header.index(column)
        raise file_error(
            self.path, f"{what} {column!r} is not a column of {self.name}{did_you_mean(column, self.header)} "
            f"(columns: {', '.join(self.header)})", line=1, col=1)

    def cell_error(self, row: int, col: int, message: str, hint: str = "") -> DataError:
        """An error at the cell's own line and (for unquoted lines) character column."""
        line = self.lines[row]
        text = self.raw[line - 1] if line - 1 < len(self.raw) else ""
        char = 1
        if '"' not in text:
            char = 1 + sum(len(cell) + 1 for cell in text.split(self.delimiter)[:col])
        return file_error(self.path, message, line=line, col=char, hint=hint)


def read_csv(path: str, delimiter: str = ",", header_row: bool = True,
             columns: list[str] | None = None) -> CsvFile:
    """Parse a CSV file with a header row (or `header_row=False` and the column names in `columns`);
    blank lines are skipped. Only a regular file is read (not /dev/zero, not a FIFO), at most MAX_BYTES."""
    raw = read_bytes(path, "CSV file", limit=MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise file_error(path, f"CSV file is larger than {MAX_BYTES // 2 ** 20:,} MB, the most kspec reads "
                         "into memory", hint="store large data sets as .npy / .npz files or TFRecord shards")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise file_error(path, f"cannot read CSV file: {exc}") from None
    del raw
    return parse_csv_text(path, text, delimiter, header_row, columns)


def parse_csv_text(path: str, text: str, delimiter: str = ",", header_row: bool = True,
                   columns: list[str] | None = None) -> CsvFile:
    """`read_csv` on text already read (the first rows of a streamed file); errors name `path`."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None if header_row else list(columns or [])
    rows, lines = [], []
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            cells = [cell.strip() for cell in record]
            if not any(cells):
                continue
            if header is None:
                header = _check_header(path, cells, delimiter)
            elif not header:           # header: false without column names: column_1, column_2, ...
                header = [f"column_{j + 1}" for j in range(len(cells))]
                rows.append(cells)
                lines.append(line)
            elif len(cells) != len(header):
                raise file_error(path, f"line {line} has {len(cells)} field{'s' * (len(cells) != 1)} but the "
                                 f"header has {len(header)}", line=line, col=1,
                                 hint="each line needs one value per header column (quote values that "
                                      "contain the delimiter)")
            else:
                rows.append(cells)
                lines.append(line)
    except csv.Error as exc:
        raise file_error(path, f"malformed CSV: {exc}", line=start, col=1) from None
    if header is None or not rows:
        raise file_error(path, "CSV file has no data rows (expected a header row, then one row per example)")
    return CsvFile(path, header, rows, lines, text.splitlines(), delimiter)


def _check_header(path: str, cells: list[str], delimiter: str = ",") -> list[str]:
    if len(cells) == 1:
        other = next((d for d in (";", "\t", "|", ",") if d != delimiter and d in cells[0]), None)
        if other is not None:
            shown = {"\t": "\\t"}.get(other, other)
            raise file_error(path, f"the header is a single column {cells[0][:60]!r}: the file looks "
                             f"separated by {shown!r}, not {delimiter!r}", line=1, col=1,
                             hint=f'add `delimiter: "{shown}"` to data.source')
    for j, name in enumerate(cells):
        if not name:
            raise file_error(path, f"column {j + 1} of the header has no name", line=1, col=1)
        if name in cells[:j]:
            raise file_error(path, f"column {name!r} appears twice in the header", line=1, col=1)
    return cells


def parse_column(f: CsvFile, column: str) -> np.ndarray:
    """A column as int64, float64 or str values; missing or non-finite cells are errors."""
    j = f.index(column)
    cells = [row[j] for row in f.rows]
    for i, cell in enumerate(cells):
        if cell.lower() in MISSING:
            what = "empty" if not cell else f"missing ({cell!r})"
            raise f.cell_error(i, j, f"column {column!r} is {what} on line {f.lines[i]} ({_MISSING_HINT})")
    try:
        return np.array([int(c) for c in cells], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    numbers, bad = [], []
    for i, cell in enumerate(cells):
        try:
            numbers.append(float(cell))
        except ValueError:
            bad.append(i)
    if not bad:
        values = np.array(numbers, dtype=np.float64)
        for i in np.flatnonzero(~np.isfinite(values))[:1]:
            raise f.cell_error(int(i), j, f"column {column!r} is not a finite number on line "
                               f"{f.lines[i]} ({cells[i]!r})", hint=_MISSING_HINT)
        return values
    if len(bad) < len(cells) - len(bad):
        i = bad[0]
        raise f.cell_error(i, j, f"column {column!r} holds numbers but line {f.lines[i]} has {cells[i]!r}",
                           hint="fix the cell; a column is categorical only when most of its cells are text")
    return np.array(cells, dtype=str)


def encode_features(f: CsvFile, columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """The feature matrix (float32) and its column names, categorical columns one-hot encoded."""
    blocks, names = [], []
    for column in columns:
        values = parse_column(f, column)
        if values.dtype.kind == "U":
            categories = sorted(set(values.tolist()))
            if len(categories) > MAX_CATEGORIES:
                raise file_error(f.path, f"column {column!r} of {f.name} is text with {len(categories):,} distinct "
                                 f"values in {len(values):,} rows; kspec one-hot encodes a text column, one "
                                 f"feature per value, and takes at most {MAX_CATEGORIES:,}", line=1, col=1,
                                 hint="leave the column out with `features: [...]` (an id column carries no "
                                      "signal), or encode it as numbers")
            blocks.append((values[:, None] == np.array(categories)[None, :]).astype(np.float32))
            names += [f"{column}={c}" for c in categories]
        else:
            blocks.append(values.astype(np.float32)[:, None])
            names.append(column)
    return np.concatenate(blocks, axis=1), names


def features_like(f: CsvFile, names: list[str]) -> np.ndarray:
    """Encode a new file's columns exactly as `names` (from `encode_features`) describe.

    `column=category` names that are not columns themselves are one-hot slots;
    a category the training data never had is an error, not a silent all-zero row.
    """
    out = np.zeros((len(f.rows), len(names)), dtype=np.float32)
    known: dict[str, set[str]] = {}
    for k, name in enumerate(names):
        if name not in f.header and "=" in name and name.split("=", 1)[0] in f.header:
            column, category = name.split("=", 1)
            known.setdefault(column, set()).add(category)
            j = f.header.index(column)
            out[:, k] = [row[j] == category for row in f.rows]
        else:
            out[:, k] = parse_column(f, f.header[f.index(name, "feature")]).astype(np.float32)
    for column, categories in known.items():
        j = f.header.index(column)
        for i, row in enumerate(f.rows):
            if row[j] not in categories:
                raise f.cell_error(i, j, f"column {column!r} has {row[j]!r} on line {f.lines[i]}, a category "
                                   f"the model was not trained on (known: {', '.join(sorted(categories))})")
    return out
