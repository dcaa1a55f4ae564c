"""`--format tflite`: a TensorFlow Lite (LiteRT) flatbuffer for mobile and embedded devices.

Converted from a SavedModel with TFLite's built-in operators only, so the file
runs on the stock interpreter (no Flex / Select-TF-ops delegate). Its one
signature, `serving_default`, takes the inputs by Input-layer name and returns
the outputs by output-layer name. Recurrent layers (LSTM, GRU, SimpleRNN) only
convert to built-in operators with a static batch size, so a model that has one
is exported with batch size 1 (as is any model whose dynamic-batch conversion
fails); the check then runs the examples one at a time. Checked with
`tf.lite.Interpreter` (Keras 3.15 calls this export format "litert").
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import Diagnostic, KspecError

DIRECTORY = False
DEFAULT_NAME = "model.tflite"
SUFFIX = None
SIGNATURE = "serving_default"


def check_available() -> None:
    pass


def runtime_name() -> str:
    import tensorflow as tf

    return f"the TFLite interpreter of TensorFlow {tf.__version__}"


def write(source, target: Path) -> dict:
    from .signature import has_recurrent_layer

    model = source.model
    notes = []
    if has_recurrent_layer(model):
        flatbuffer, error = _convert(model, batch=1)
        notes.append("batch size fixed at 1: recurrent layers need a static batch size in TFLite; "
                     "run the interpreter once per example")
    else:
        flatbuffer, error = _convert(model, batch=None)
        if flatbuffer is None:
            flatbuffer, _ = _convert(model, batch=1)
            if flatbuffer is not None:
                notes.append("batch size fixed at 1: the model converts to TFLite only with a static batch size")
    if flatbuffer is None:
        raise KspecError(Diagnostic(f"TFLite cannot convert this model: {error}",
                                    hint="TFLite supports a subset of TensorFlow operations with its built-in "
                                         "kernels; the SavedModel export (--format saved_model) supports all"))
    target.write_bytes(flatbuffer)
    return {"notes": notes}


def _convert(model, batch: int | None) -> tuple[bytes | None, str]:
    import keras
    import tensorflow as tf

    from .signature import flat_call, input_specs, output_names, quiet

    call, names = flat_call(model), output_names(model)

    def serve(*flat):
        return dict(zip(names, call(*flat)))

    with quiet() as stderr, tempfile.TemporaryDirectory() as saved_model:
        try:
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint(SIGNATURE, serve, input_signature=input_specs(model, batch))
            archive.write_out(saved_model, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            return converter.convert(), ""
        except Exception as exc:
            error = exc
    return None, _first_error(str(error) + "\n" + "".join(stderr))


def _first_error(text: str) -> str:
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
    if ops:
        return f"its built-in operators have no kernel for TensorFlow's {', '.join(ops)}"
    for line in text.splitlines():
        if "error:" in line:
            message = line.split("error:", 1)[1].strip()
            if message.startswith("loc(") and "): " in message:
                message = message.rsplit("): ", 1)[1]
            return message[:300]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown error"


def run(target: Path, source, info: dict) -> list[np.ndarray]:
    import tensorflow as tf

    from .signature import input_names, output_names, quiet

    with quiet():
        interpreter = tf.lite.Interpreter(model_content=target.read_bytes())
        runner = interpreter.get_signature_runner(SIGNATURE)
        batch = _static_batch(runner)
        names = input_names(source.model)
        n = source.n_examples
        chunks = [(0, n)] if batch is None else [(i, i + batch) for i in range(0, n, batch)]
        results = []
        for start, stop in chunks:
            results.append(runner(**{name: x[start:stop] for name, x in zip(names, source.inputs)}))
    return [np.concatenate([r[name] for r in results]) for name in output_names(source.model)]


def _static_batch(runner) -> int | None:
    batches = {int(d["shape_signature"][0]) for d in runner.get_input_details().values() if len(d["shape_signature"])}
    return None if not batches or -1 in batches else max(batches)
