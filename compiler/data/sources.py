"""Load `data.source` into a `Table` keyed by the model's input and output names.

One loader per source kind; each checks its own parameters (a misspelled one is
an error, not silently ignored) and says where every array came from, so that
later errors can name a file, a column or an array key.
"""

from __future__ import annotations

import os
import zipfile
from typing import Mapping

import numpy as np

from ..errors import DataError, Diagnostic
from ..spec.types import DataSpec, ModelSpec
from . import images, npmap, synthetic
from .csvfile import encode_features, parse_column, read_csv
from .files import check_regular
from .table import (
    MAX_LABEL,
    LabelTooLarge,
    Table,
    assign,
    check_params,
    detect_task,
    did_you_mean,
    encode_labels,
    file_error,
    is_one_hot,
    source_error,
)

SKLEARN = ("iris", "digits", "wine", "breast_cancer", "diabetes")
SKLEARN_REGRESSION = ("diabetes",)
IMAGE_EXTENSIONS, IMAGE_FORMATS = images.IMAGE_EXTENSIONS, images.IMAGE_FORMATS
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
DEFAULT_IMAGE_SIZE = (256, 256)     # keras.utils.image_dataset_from_directory's default
CSV_PARAMS = ("path", "target", "features", "delimiter", "task", "header", "columns", "stream")


def load_table(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    """Read (or generate) the whole data set described by `data`."""
    loaders = {"sklearn": _sklearn, "csv": _csv, "npz": _npz, "images": _images, "synthetic": _synthetic}
    if data.source not in loaders:
        raise source_error(data, f"unknown data source {data.source!r}{did_you_mean(data.source, loaders)} "
                           f"(known: {', '.join(loaders)})")
    return loaders[data.source](data, model, seed)


def _names(model: ModelSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(i.name for i in model.inputs), tuple(model.outputs)


def _sklearn(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    """The data sets scikit-learn ships (no download)."""
    check_params(data, ("name",), "an sklearn source")
    name = data.params.get("name")
    if name not in SKLEARN:
        raise source_error(data, f"unknown sklearn data set {name!r}{did_you_mean(name, SKLEARN)} "
                           f"(known: {', '.join(SKLEARN)})")
    from . import bundled

    bunch = bundled.load(name)           # the shipped files, read without importing scikit-learn (start-up)
    if bunch is None:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{name}")()
    inputs, outputs = _names(model)
    source = f"sklearn:{name}"
    x = assign(inputs, bunch.data.astype(np.float32), "input", source, data)
    if name in SKLEARN_REGRESSION:
        y, task, classes = bunch.target.astype(np.float32)[:, None], "regression", None
    else:
        y, task, classes = bunch.target.astype(np.int32), "classification", [str(c) for c in bunch.target_names]
    y = assign(outputs, y, "output", source, data)
    out = next(iter(y))
    features = getattr(bunch, "feature_names", None)
    return Table(x, y, {out: task}, {out: classes} if classes else {}, source,
                 feature_names={k: [str(n) for n in features] for k in x} if features is not None else {},
                 x_from={k: f"{source} features" for k in x}, y_from={out: "target"})


def _synthetic(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    gen = synthetic.generate(data, seed)
    inputs, outputs = _names(model)
    source = f"synthetic:{data.params.get('name')}"
    x = assign(inputs, gen.x, "input", source, data)
    y = assign(outputs, gen.y, "output", source, data)
    out = next(iter(y))
    return Table(x, y, {out: gen.task}, {out: gen.class_names} if gen.class_names else {}, source,
                 x_from={k: "x" for k in x}, y_from={out: "y"})


def _task_override(data: DataSpec, output: str) -> str | None:
    """`task: classification|regression` (or a map output -> task) overrides detection."""
    task = data.params.get("task")
    if isinstance(task, Mapping):
        task = task.get(output)
    if task not in (None, "classification", "regression"):
        raise source_error(data, f"task must be 'classification' or 'regression', got {task!r}")
    return task


def _target(data: DataSpec, output: str, values: np.ndarray, file: str, what: str,
            lines: list[int] | tuple[int, ...] | None = None):
    """(y, task, class names) for one target array: labels encoded, regression as float32."""
    task = _task_override(data, output) or detect_task(values)
    if task == "classification":
        if is_one_hot(values):
            return values.astype(np.float32), task, [str(i) for i in range(values.shape[1])]
        labels, classes = class_labels(values, file, what, lines)
        return labels, task, classes
    if values.dtype.kind not in "biuf":
        raise file_error(file, f"{what} holds text, but a regression target must be numeric")
    values = values.astype(np.float32)
    return (values[:, None] if values.ndim == 1 else values), task, None


def class_labels(values: np.ndarray, file: str, what: str, lines=None) -> tuple[np.ndarray, list[str]]:
    """`encode_labels`, with a label too large to be a class index reported at its line / example."""
    try:
        return encode_labels(values)
    except LabelTooLarge as exc:
        where = (f" on line {lines[exc.index]}" if lines is not None and exc.index < len(lines)
                 else f" at example {exc.index} (counting from 0)")
        raise file_error(file, f"{what} holds the class label {exc.value}{where}, but class labels are "
                         f"0..{MAX_LABEL - 1} (label k is class k; the data holds {exc.distinct} distinct labels)",
                         line=lines[exc.index] if lines is not None and exc.index < len(lines) else 0, col=1,
                         hint="fix the label (a typo?), give the classes as text, or set `task: regression` "
                              "if the target is a quantity") from None


def _csv(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    """A CSV file with a header row: `target` column(s), the rest (or `features`) as inputs."""
    check_params(data, CSV_PARAMS, "a csv source")
    if not data.params.get("path"):
        raise source_error(data, "a csv source needs a file path: `source: {csv: PATH, target: COLUMN}`")
    header, columns = data.params.get("header", True), data.params.get("columns")
    if not isinstance(header, bool):
        raise source_error(data, f"header must be true or false, got {header!r}")
    if columns is not None and (header or not isinstance(columns, list) or not columns
                                or len(set(map(str, columns))) != len(columns)):
        raise source_error(data, "`columns: [NAME, ...]` (distinct names) goes with `header: false`, naming "
                           "the columns of a file without a header row")
    f = read_csv(str(data.params["path"]), str(data.params.get("delimiter", ",")), header_row=header,
                 columns=[str(c) for c in columns] if columns else None)
    inputs, outputs = _names(model)
    by_output = _target_columns(data, outputs, f.header, f.name)
    targets = [c for cols in by_output.values() for c in cols]
    for column in targets:
        f.index(column, "target column")
    features = data.params.get("features") or [c for c in f.header if c not in targets]
    features = [features] if isinstance(features, str) else list(features)
    for column in features:
        f.index(column, "feature column")
        if column in targets:
            raise source_error(data, f"column {column!r} of {f.name} is both a feature and a target")
    if not features:
        raise source_error(data, f"{f.name} has no feature columns left besides the target")
    if len(model.inputs) == 1 and model.inputs[0].dtype == "string":   # raw text: TextVectorization in the model
        if len(features) != 1:
            raise source_error(data, f"the input {inputs[0]!r} is text (dtype: string) and takes one column, "
                               f"not {len(features)}: name it with `features: [COLUMN]`")
        at = f.index(features[0], "feature column")
        matrix, names = np.array([[row[at]] for row in f.rows], dtype=str), list(features)
    else:
        matrix, names = encode_features(f, features)
    x = assign(inputs, matrix, "input", f.path, data)
    ys, tasks, classes = {}, {}, {}
    for output, cols in by_output.items():
        if len(cols) == 1:
            values = parse_column(f, cols[0])
        else:
            values = np.stack([parse_column(f, c) for c in cols], axis=1)
            if values.dtype.kind not in "iuf":
                raise source_error(data, f"target columns {', '.join(cols)} of {f.name} must all be numeric "
                                   f"to form one output ({output!r})")
        ys[output], tasks[output], names_ = _target(data, output, values, f.path, f"column {cols[0]!r}",
                                                    f.lines)
        if names_:
            classes[output] = names_
    return Table(x, ys, tasks, classes, f.path, feature_names={k: names for k in x},
                 x_from={k: f"columns of {f.name}" for k in x},
                 y_from={o: ", ".join(c) for o, c in by_output.items()}, file=f.path, lines=tuple(f.lines))


def _target_columns(data: DataSpec, outputs: tuple[str, ...], header: list[str], file: str) -> dict[str, list[str]]:
    """Which CSV column(s) feed which model output."""
    target = data.params.get("target")
    if target is None or target == [] or target == "":
        raise source_error(data, f"a csv source needs `target: COLUMN` (columns of {file}: {', '.join(header)})")
    if isinstance(target, Mapping):
        for output in target:
            if output not in outputs:
                raise source_error(data, f"target names {output!r}, which is not a model output"
                                   f"{did_you_mean(output, outputs)} (outputs: {', '.join(outputs)})")
        missing = [o for o in outputs if o not in target]
        if missing:
            raise source_error(data, f"no target column for output(s) {', '.join(missing)}")
        return {o: [target[o]] if isinstance(target[o], str) else list(target[o]) for o in outputs}
    cols = [target] if isinstance(target, str) else [str(c) for c in target]
    if len(outputs) == 1:
        return {outputs[0]: cols}
    if set(cols) == set(outputs):
        return {o: [o] for o in outputs}
    if len(cols) == len(outputs):
        return {o: [c] for o, c in zip(outputs, cols)}
    raise source_error(data, f"the model has {len(outputs)} outputs ({', '.join(outputs)}) but target names "
                       f"{len(cols)} column(s)", hint="give `target: {OUTPUT: COLUMN, ...}`")


def _npz(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    """A numpy .npz archive: `x` and `y`, other keys via `x:`/`y:`, or one array per input/output name."""
    check_params(data, ("path", "x", "y", "task", "stream"), "an npz source")
    if not data.params.get("path"):
        raise source_error(data, "an npz source needs a file path: `source: {npz: PATH}`")
    path = str(data.params["path"])
    check_regular(path, "npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "npz file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise file_error(path, f"cannot read npz file: {exc}") from None
    if not hasattr(archive, "files"):
        raise file_error(path, "is a single .npy array, not an .npz archive of named arrays (x, y)")
    inputs, outputs = _names(model)
    with archive:
        x_keys = _keys(data, path, archive.files, data.params.get("x"), inputs, "x", "input")
        y_keys = _keys(data, path, archive.files, data.params.get("y"), outputs, "y", "output")
        if npmap.wants_stream(path, data.params.get("stream", "auto")) and _stored(archive, x_keys.values(),
                                                                               data.params.get("stream")):
            return _npz_mapped(data, model, path, archive, x_keys, y_keys)
        x = {name: _array(archive, path, key) for name, key in x_keys.items()}
        ys, tasks, classes = {}, {}, {}
        for output, key in y_keys.items():
            ys[output], tasks[output], names = _target(data, output, _array(archive, path, key), path,
                                                       f"array {key!r}")
            if names:
                classes[output] = names
    return Table(x, ys, tasks, classes, path, x_from={n: f"array {k!r}" for n, k in x_keys.items()},
                 y_from=dict(y_keys), file=path)


def _stored(archive, keys, choice) -> bool:
    """Every input array stored uncompressed (mappable); `stream: true` on a compressed one is an error."""
    for key in keys:
        name = key if key in archive.zip.namelist() else f"{key}.npy"
        if archive.zip.getinfo(name).compress_type != zipfile.ZIP_STORED:
            if choice is True:
                npmap.map_member(archive.zip.filename, key)        # raises with the hint
            return False
    return True


def _npz_mapped(data: DataSpec, model: ModelSpec, path: str, archive, x_keys, y_keys) -> Table:
    """Inputs left on disk (memory-mapped), targets loaded: the table holds example indices."""
    arrays = {name: npmap.map_member(path, key) for name, key in x_keys.items()}
    dtypes = []
    for spec in model.inputs:
        dtype = spec.dtype if spec.dtype in ("float16", "float32", "float64", "int32", "int64", "uint8") else "float32"
        if arrays[spec.name].dtype.kind not in "biuf":
            raise file_error(path, f"array {x_keys[spec.name]!r} is not numeric")
        dtypes.append(dtype)
    reader = npmap.ArrayReader(path, tuple(x_keys.items()), tuple(a.shape[1:] for a in arrays.values()),
                               tuple(dtypes))
    ys, tasks, classes = {}, {}, {}
    for output, key in y_keys.items():
        ys[output], tasks[output], names = _target(data, output, _array(archive, path, key), path, f"array {key!r}")
        if names:
            classes[output] = names
    n = len(next(iter(arrays.values())))
    return Table({"index": np.arange(n)}, ys, tasks, classes, path,
                 x_from={n_: f"array {k!r}" for n_, k in x_keys.items()}, y_from=dict(y_keys), file=path,
                 reader=reader)


def _keys(data, path, present, given, names, default, what) -> dict[str, str]:
    """Model name -> npz key, from `x:`/`y:` (a key or a map) or by convention."""
    if isinstance(given, Mapping):
        chosen = {n: str(given.get(n, n)) for n in names}
    elif given is not None:
        if len(names) != 1:
            raise source_error(data, f"`{default}: {given}` names one array but the model has {len(names)} "
                               f"{what}s ({', '.join(names)})", hint=f"give `{default}: {{NAME: KEY, ...}}`")
        chosen = {names[0]: str(given)}
    elif len(names) == 1:
        chosen = {names[0]: default if default in present or names[0] not in present else names[0]}
    else:
        chosen = {n: n for n in names}
    for name, key in chosen.items():
        if key not in present:
            raise file_error(path, f"{os.path.basename(path)} has no array {key!r} (for {what} {name!r})"
                             f"{did_you_mean(key, present)}; arrays present: {', '.join(present) or 'none'}",
                             hint=f"name the array to use under data.source: `{default}: KEY`"
                                  + (" (or a map name -> key)" if len(names) > 1 else ""))
    return chosen


def _array(archive, path: str, key: str) -> np.ndarray:
    check_member_size(archive, path, key)
    try:
        array = archive[key]
    except ValueError:
        raise file_error(path, f"array {key!r} holds Python objects; save plain numeric arrays "
                         "(np.savez without object dtype)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise file_error(path, f"cannot read array {key!r}: {exc}") from None
    if array.ndim == 0:
        raise file_error(path, f"array {key!r} is a single value (0-d), not one entry per example",
                         hint="save an array whose first axis runs over the examples")
    return array


def _images(data: DataSpec, model: ModelSpec, seed: int) -> Table:
    """Image files, listed (not decoded): a folder with one sub-folder per class, or a manifest CSV
    of `path,label` rows. The table's input holds file paths; `images.ImageReader` decodes them in tf.data."""
    check_params(data, ("path", "size", "color_mode", "target", "delimiter", "masks"), "an images source")
    root = str(data.params.get("path") or "")
    inputs, outputs = _names(model)
    if len(inputs) != 1:
        raise source_error(data, f"an images source feeds one model input, but the model has {len(inputs)} "
                           f"({', '.join(inputs)})")
    shape = tuple(model.inputs[0].shape)
    size, mode = image_format(data, shape)
    on_bad = data.on_bad_file
    if data.segmentation:
        return _segmentation(data, root, inputs, outputs, images.ImageReader(size, COLOR_MODES[mode][1]))
    if os.path.isfile(root) and root.lower().endswith((".csv", ".tsv")):
        target = str(data.params.get("target") or "label")
        listing, raw, lines = images.list_manifest(root, target, on_bad,
                                                   str(data.params.get("delimiter", ",")))
        values = np.array([int(v) for v in raw]) if all(_is_int(v) for v in raw) else np.array(raw)
        labels, classes = class_labels(values, root, f"column {target!r}", lines)
        paths, origin_from, lines_ = listing.paths, f"column {target!r}", tuple(lines)
    else:
        if data.params.get("target") is not None:
            raise source_error(data, "`target` names the label column of a manifest CSV; an image folder's "
                               "labels are its sub-folder names")
        listing = images.list_folder(root, on_bad)
        labels, classes = np.array(listing.labels, dtype=np.int32), listing.classes
        paths, origin_from, lines_ = listing.paths, "class folder", None
    reader = images.ImageReader(size, COLOR_MODES[mode][1])
    x = {inputs[0]: np.array(paths, dtype=str)}
    y = assign(outputs, np.asarray(labels, dtype=np.int32), "output", root, data)
    out = next(iter(y))
    return Table(x, y, {out: "classification"}, {out: list(classes)}, root,
                 x_from={k: "images" for k in x}, y_from={out: origin_from}, file=root, lines=lines_,
                 reader=reader, skipped=tuple(listing.skipped))


def _segmentation(data: DataSpec, root: str, inputs: tuple[str, ...], outputs: tuple[str, ...],
                  reader: images.ImageReader) -> Table:
    """`{images: DIR, masks: DIR}`: each image with the mask of the same name (masks.py). The table's
    input holds image paths and its output mask paths; both are decoded in tf.data."""
    from . import masks

    for key in ("target", "delimiter"):
        if data.params.get(key) is not None:
            raise source_error(data, f"`{key}` is for a manifest CSV of labels; a segmentation source's targets "
                               "are its masks")
    if data.classes is not None:
        raise DataError(Diagnostic("`classes` keeps the examples of some classes, but a segmentation example "
                                   "holds every class of its mask", data.classes_loc or data.loc, "data.classes",
                                   hint="remove `classes:`"))
    if data.stratify:
        raise DataError(Diagnostic("a segmentation split cannot be stratified: an example has no single class",
                                   data.loc, "data.split.stratify", hint="remove `stratify: true`"))
    masks.geometric_augmentation(data)
    masks_root = str(data.params["masks"])
    listing = masks.list_pairs(data, root, masks_root, data.on_bad_file)
    x = {inputs[0]: np.array(listing.images, dtype=str)}
    y = assign(outputs, np.array(listing.masks, dtype=str), "output", root, data)
    out = next(iter(y))
    return Table(x, y, {out: "segmentation"}, {}, root, x_from={k: "images" for k in x},
                 y_from={out: f"masks of {os.path.basename(masks_root.rstrip('/'))}"}, file=root,
                 reader=masks.PairReader(reader), skipped=tuple(listing.skipped))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def check_member_size(archive, path: str, key: str) -> None:
    """An npz member's header declares its shape; numpy allocates that before reading. A few bytes may
    claim terabytes, so the declared size must agree with the member's real (uncompressed) size."""
    name = key if key in archive.zip.namelist() else f"{key}.npy"
    try:
        info = archive.zip.getinfo(name)
        with archive.zip.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError):
        return                                   # np.load reports it when the array is read
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > info.file_size:
        raise file_error(path, f"array {key!r} declares shape {tuple(shape)} ({declared:,} bytes) but holds only "
                         f"{info.file_size:,} bytes: the file is damaged or crafted")


def image_format(data: DataSpec | None, shape: tuple) -> tuple[tuple[int, int], str]:
    """(height, width) and color mode: from `size`/`color_mode`, else the model input's shape."""
    params = data.params if data else {}
    size = params.get("size")
    if size is None:
        size = tuple(shape[:2]) if len(shape) == 3 and None not in shape[:2] else DEFAULT_IMAGE_SIZE
    elif not (isinstance(size, (list, tuple)) and len(size) == 2
              and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        assert data is not None, "only a spec's data section gives a size"
        raise source_error(data, f"size must be [height, width] in pixels, got {size!r}")
    mode = params.get("color_mode")
    if mode is None:
        mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[-1] if len(shape) == 3 else 0, "rgb")
    elif mode not in COLOR_MODES:
        assert data is not None, "only a spec's data section gives a color mode"
        raise source_error(data, f"color_mode must be one of {', '.join(COLOR_MODES)}, got {mode!r}")
    return (int(size[0]), int(size[1])), mode



