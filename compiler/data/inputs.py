"""Read a file of new inputs for `kspec predict`: CSV, NPZ, NPY, an image or a folder of images.

The model carries its own preprocessing, so this only has to produce raw
inputs in the training data's layout: CSV columns are picked (and categorical
ones one-hot encoded) by the feature names recorded at training time, and flat
rows are reshaped to the input's shape when the sizes agree.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..spec.types import DataSpec, ModelSpec
from .bind import bind
from .csvfile import features_like, parse_column, read_csv
from .files import check_regular
from .images import ImageReader, problem
from .sources import COLOR_MODES, IMAGE_EXTENSIONS, check_member_size, image_format
from .table import Table, did_you_mean, file_error


def read_inputs(path: str, model: ModelSpec, feature_names: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Input name -> array (first axis = examples), checked against the model's input shapes."""
    names = [i.name for i in model.inputs]
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or ext in IMAGE_EXTENSIONS:
        x = {names[0]: _images(path, model)} if len(names) == 1 else _too_many(path, names, "images")
    elif ext == ".npz":
        x = _npz(path, names)
    elif ext == ".npy":
        x = {names[0]: _npy(path)} if len(names) == 1 else _too_many(path, names, "a .npy array")
    elif ext in (".csv", ".tsv", ".txt") and len(names) == 1 and model.inputs[0].dtype == "string":
        x = {names[0]: _text(path, feature_names.get(names[0]) or [], "\t" if ext == ".tsv" else ",")}
    elif ext in (".csv", ".tsv", ".txt"):
        x = _csv(path, names, feature_names, "\t" if ext == ".tsv" else ",")
    else:
        raise file_error(path, "unsupported input file; give a .csv, .npz or .npy file, an image, "
                         "or a folder of images")
    for spec in model.inputs:
        x[spec.name] = _fit_flat(x[spec.name], spec.shape)
    table = Table(x, {}, {}, {}, path, x_from={n: os.path.basename(path) for n in x}, file=path)
    return bind(table, DataSpec(source="file", params={}), model).x


def _too_many(path: str, names: list[str], what: str):
    raise file_error(path, f"the model has {len(names)} inputs ({', '.join(names)}) but {what} feeds one; "
                     "use an .npz file with one array per input name")


def _fit_flat(array: np.ndarray, shape: tuple) -> np.ndarray:
    """Reshape (n, k) rows to the input's shape when it is fully known and holds k values."""
    if (array.ndim >= 2 and len(shape) > 1 and None not in shape and array.shape[1:] != tuple(shape)
            and math.prod(array.shape[1:]) == math.prod(shape)):
        return array.reshape((len(array), *shape))
    return array


def _npz(path: str, names: list[str]) -> dict[str, np.ndarray]:
    check_regular(path, "input file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = list(archive.files)
            if len(names) == 1:
                key = next((k for k in ("x", names[0]) if k in present), present[0] if len(present) == 1 else None)
                keys = {names[0]: key}
            else:
                keys = {n: n if n in present else None for n in names}
            found: dict[str, str] = {}
            for name, key in keys.items():
                if key is None:
                    raise file_error(path, f"{os.path.basename(path)} has no array for input {name!r}"
                                     f"{did_you_mean(name, present)}; arrays present: {', '.join(present)}")
                found[name] = key
            for key in found.values():
                check_member_size(archive, path, key)
            arrays = {name: archive[key] for name, key in found.items()}
            for name, key in found.items():
                if arrays[name].ndim == 0:
                    raise file_error(path, f"array {key!r} is a single value (0-d), not one entry per example")
            return arrays
    except FileNotFoundError:
        raise file_error(path, "input file not found") from None
    except (OSError, ValueError) as exc:
        raise file_error(path, f"cannot read npz file: {exc}") from None


def _npy(path: str) -> np.ndarray:
    check_regular(path, "input file")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        if array.ndim == 0:
            raise file_error(path, "holds a single value (0-d), not one entry per example")
        return array
    except FileNotFoundError:
        raise file_error(path, "input file not found") from None
    except (OSError, ValueError) as exc:
        raise file_error(path, f"cannot read npy file: {exc}") from None


def _text(path: str, recorded: list[str], delimiter: str) -> np.ndarray:
    """A text input's column (the one it was trained on; else the file's only column), as (n, 1) strings."""
    f = read_csv(path, delimiter)
    if not recorded and len(f.header) != 1:
        raise file_error(path, f"the model takes one text column, but {os.path.basename(path)} has "
                         f"{len(f.header)} ({', '.join(f.header)}) and the run recorded none")
    column = f.index(recorded[0] if recorded else f.header[0], "text column")
    return np.array([[row[column]] for row in f.rows], dtype=str)


def _csv(path: str, names: list[str], feature_names: dict[str, list[str]], delimiter: str) -> dict[str, np.ndarray]:
    """Columns by recorded feature names; without names, every column. A header-less file of numbers
    is taken as rows of the single input's values, in order."""
    f = read_csv(path, delimiter)
    if len(names) == 1 and all(_is_number(c) for c in f.header):     # no header row: every row is data
        return {names[0]: _numbers(path, [f.header] + f.rows, [1] + f.lines)}
    if not any(feature_names.get(n) for n in names):
        if len(names) != 1:
            _too_many(path, names, "a CSV file without recorded feature names")
        return {names[0]: np.stack([parse_column(f, c).astype(np.float32) for c in f.header], axis=1)}
    missing = [n for n in names if not feature_names.get(n)]
    if missing:
        raise file_error(path, f"no recorded feature names for input(s) {', '.join(missing)}")
    return {n: features_like(f, list(feature_names[n])) for n in names}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numbers(path: str, rows: list[list[str]], lines: list[int]) -> np.ndarray:
    for row, line in zip(rows, lines):
        for cell in row:
            if not _is_number(cell):
                raise file_error(path, f"line {line} has {cell!r}, not a number", line=line, col=1,
                                 hint="an input file without a header row must hold numbers only")
    return np.array(rows, dtype=np.float32)


def _images(path: str, model: ModelSpec) -> np.ndarray:
    size, mode = image_format(None, tuple(model.inputs[0].shape))
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            raise file_error(path, f"has no images ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        files = [path]
    reader = ImageReader(size, COLOR_MODES[mode][1])       # the decoder the streamed splits use
    pixels = []
    for f in files:
        why = problem(f)
        if why is not None:
            raise file_error(f, why)
        try:
            pixels.append(reader.read(f).astype(np.float32))
        except Exception as exc:                          # tf.errors.InvalidArgumentError: a damaged file
            raise file_error(f, f"cannot read image: {str(exc).splitlines()[0][:200]}") from None
    return np.stack(pixels)


def image_stream(path: str, model: ModelSpec, batch_size: int):
    """`kspec predict RUN FOLDER`: the images in FOLDER (sorted by name) as a batched dataset decoded in
    tf.data, and their paths; None when `path` is not a folder (then `read_inputs` reads it)."""
    if not os.path.isdir(path) or len(model.inputs) != 1:
        return None
    import tensorflow as tf

    from .sources import COLOR_MODES

    size, mode = image_format(None, tuple(model.inputs[0].shape))
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    if not files:
        raise file_error(path, f"has no images ({', '.join(IMAGE_EXTENSIONS)})")
    for f in files:
        why = problem(f)
        if why is not None:
            raise file_error(f, why)
    reader = ImageReader(size, COLOR_MODES[mode][1])
    ds = tf.data.Dataset.from_tensor_slices(files).map(reader.element, num_parallel_calls=tf.data.AUTOTUNE,
                                                       deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), files


def image_folder_split(path: str, model: ModelSpec, class_names: list[str], one_hot: bool = False,
                       on_bad_file: str = "error"):
    """`kspec evaluate RUN --data FOLDER`: a folder of class sub-folders, labelled by the training class
    names, as a streamed split (never decoded up front)."""
    from .images import list_folder
    from .sources import COLOR_MODES
    from .split import Arrays
    from .stream import CachePlan, Stream

    listing = list_folder(path, on_bad_file)
    unknown = [c for c in listing.classes if c not in class_names]
    if unknown:
        raise file_error(path, f"class folder(s) {', '.join(unknown)} are not classes the model was trained on "
                         f"(its classes: {', '.join(class_names)})")
    index = {c: class_names.index(c) for c in listing.classes}
    labels: np.ndarray = np.array([index[listing.classes[k]] for k in listing.labels], dtype=np.int32)
    if one_hot:                                   # the run was trained on one-hot targets
        hot = np.zeros((len(labels), len(class_names)), dtype=np.float32)
        hot[np.arange(len(labels)), labels] = 1.0
        labels = hot
    size, mode = image_format(None, tuple(model.inputs[0].shape))
    refs = Arrays({model.inputs[0].name: np.array(listing.paths, dtype=str)}, {model.outputs[0]: labels})
    return Stream(refs, ImageReader(size, COLOR_MODES[mode][1]), CachePlan("none"), os.path.basename(path))
