"""`kspec predict RUN INPUT [-o FILE]`: predictions of a saved run for a file of inputs.

The model carries its own preprocessing, so INPUT holds raw inputs laid out like
the training data (CSV columns by the recorded feature names, NPZ arrays...).

Output, one row per example:
- a classifier: `class` (the class name) and one `p_<class>` probability column
  per class (a single sigmoid unit gives both classes' probabilities);
- a regressor: its output value(s), in a column named after the output
  (`<output>_0`, `<output>_1`... for several values).
With several outputs, every column is prefixed `<output>.`. CSV to stdout by
default, or to `-o FILE.csv`; `-o FILE.npz` stores one array per output (the raw
model outputs) and `<output>_class` for classifiers.

A segmentation output (per-pixel class probabilities) does not fit a CSV: `-o FILE.npz`
stores its probabilities and `<output>_class`, the argmax class map of each image (uint8,
height x width), and `-o FILE.npy` the class maps alone. Images of a folder come in the
order of their sorted names.
"""

from __future__ import annotations

import csv
import io
import os
import sys

import numpy as np

from ..errors import DataError, Diagnostic
from ..rundir import atomic_write_bytes, atomic_write_text
from .evaluate import info_or_splits, load_run


def predict_run(run: str | os.PathLike, input: str, output: str | None = None) -> dict[str, np.ndarray]:
    loaded = load_run(run)
    spec, model = loaded.spec, loaded.model
    info = info_or_splits(loaded)
    from ..data import read_inputs
    from ..data.inputs import image_stream

    segmentation = [o for o in spec.model.outputs if (info.get("tasks") or {}).get(o) == "segmentation"]
    if segmentation and not (output or "").lower().endswith((".npz", ".npy")):
        raise DataError(Diagnostic(f"output {segmentation[0]!r} is a per-pixel class map, which does not fit a CSV",
                                   hint="pass `-o FILE.npz` (probabilities and the class map of each image) or "
                                        "`-o FILE.npy` (the class maps)"))
    if (output or "").lower().endswith(".npy") and (len(spec.model.outputs) != 1 or not segmentation):
        raise DataError(Diagnostic("`-o FILE.npy` writes the class maps of a single segmentation output",
                                   hint="write `-o FILE.npz` or `-o FILE.csv`"))
    batch = spec.train.batch_size if spec.train else 32
    from ..data.csvstream import predict_stream

    images = image_stream(input, spec.model, batch)        # a folder of images: decoded batch by batch
    streamed = images[0] if images is not None else \
        predict_stream(input, spec.model, info.get("feature_names") or {}, batch)   # a CSV over 256 MB
    if streamed is not None:
        feed = streamed
    else:
        x = read_inputs(input, spec.model, info.get("feature_names") or {})
        names = [i.name for i in spec.model.inputs]
        feed = x[names[0]] if len(names) == 1 else {n: x[n] for n in names}
        if any(np.asarray(v).dtype.kind in "USO" for v in x.values()):   # raw text: Keras takes it as tf strings
            import tensorflow as tf

            feed = tf.nest.map_structure(tf.constant, feed)
    try:
        raw = model.predict(feed, batch_size=None if streamed is not None else batch, verbose=0)
    except Exception as exc:
        from ..builder.errors import keras_message
        from ..data.stream import explain_failure

        explain_failure(streamed)                          # a bad line of a streamed CSV: named

        raise DataError(Diagnostic(f"cannot predict on {input}: {keras_message(exc)}")) from None
    outputs = list(spec.model.outputs)
    if isinstance(raw, dict):
        predictions = {o: np.asarray(raw[o]) for o in outputs}
    elif isinstance(raw, (list, tuple)):
        predictions = {o: np.asarray(r) for o, r in zip(outputs, raw)}
    else:
        predictions = {outputs[0]: np.asarray(raw)}

    columns = table(predictions, info, prefix=len(outputs) > 1) if not segmentation else {}
    if output is None:
        sys.stdout.write(to_csv(columns))
        sys.stdout.flush()
    elif output.lower().endswith(".npy"):
        buffer = io.BytesIO()
        np.save(buffer, class_maps(predictions[segmentation[0]]))
        atomic_write_bytes(output, buffer.getvalue())
    elif output.lower().endswith(".npz"):
        buffer = io.BytesIO()
        arrays = dict(predictions)
        for o, values in predictions.items():
            if (info.get("tasks") or {}).get(o) == "classification":
                arrays[f"{o}_class"] = np.asarray(classes_of(values, _class_names(info, o, values)))
            elif o in segmentation:
                arrays[f"{o}_class"] = class_maps(values)
        # numpy's stub lets `**kwds` fill the keyword `allow_pickle: bool`, so every mapping of arrays fails it.
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(output, buffer.getvalue())
    else:
        atomic_write_text(output, to_csv(columns))
    if output is not None:
        n = len(next(iter(predictions.values())))
        print(f"wrote {n} predictions to {output}", file=sys.stderr)
    return predictions


def class_maps(values: np.ndarray) -> np.ndarray:
    """(n, H, W, classes) probabilities -> (n, H, W) class indices."""
    maps = np.argmax(values, axis=-1)
    return maps.astype(np.uint8) if values.shape[-1] <= 256 else maps.astype(np.int32)


def _class_names(info: dict, output: str, values: np.ndarray) -> list[str]:
    names = list((info.get("class_names") or {}).get(output) or [])
    width = values.shape[-1] if values.ndim > 1 else 1
    count = 2 if width == 1 else width
    if len(names) < count:
        names += [str(i) for i in range(len(names), count)]
    return names[:count]


def probabilities(values: np.ndarray) -> np.ndarray:
    """(n, k) class probabilities; a single sigmoid unit becomes (1 - p, p)."""
    values = values.reshape(len(values), -1)
    if values.shape[1] == 1:
        return np.concatenate([1.0 - values, values], axis=1)
    return values


def classes_of(values: np.ndarray, names: list[str]) -> list[str]:
    return [names[i] for i in np.argmax(probabilities(values), axis=1)]


def table(predictions: dict[str, np.ndarray], info: dict, prefix: bool) -> dict[str, list]:
    """Column name -> values, in output order."""
    columns: dict[str, list] = {}
    for output, values in predictions.items():
        pre = f"{output}." if prefix else ""
        if (info.get("tasks") or {}).get(output) == "classification":
            names = _class_names(info, output, values)
            probs = probabilities(values)
            columns[f"{pre}class"] = classes_of(values, names)
            for j, name in enumerate(names):
                columns[f"{pre}p_{name}"] = [float(p) for p in probs[:, j]]
        else:
            flat = values.reshape(len(values), -1)
            if flat.shape[1] == 1:
                columns[output] = [float(v) for v in flat[:, 0]]
            else:
                for j in range(flat.shape[1]):
                    columns[f"{output}_{j}"] = [float(v) for v in flat[:, j]]
    return columns


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell_text(value) -> str:
    """A text cell as written to a CSV: text a spreadsheet would run as a formula (a class named
    `=HYPERLINK(...)`, `+1`, `@SUM`) gets a leading `'`, which spreadsheets show as plain text."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(columns: dict[str, list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([cell_text(c) for c in columns])
    for row in zip(*columns.values()):
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else cell_text(v) for v in row])
    return out.getvalue()
