"""`--format saved_model`: a TensorFlow SavedModel directory (TF Serving, TF.js, other TF programs).

Written with Keras's ExportArchive: one endpoint `serve` taking the inputs as the
model takes them (a tensor, or a list for several inputs) and the matching
`serving_default` signature with inputs named after the model's Input layers.
Checked with `tf.saved_model.load(path).serve(...)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIRECTORY = True
DEFAULT_NAME = "saved_model"
SUFFIX = None


def check_available() -> None:
    pass


def runtime_name() -> str:
    import tensorflow as tf

    return f"TensorFlow {tf.__version__}"


def write(source, target: Path) -> dict:
    import keras

    from .signature import input_specs, pack, quiet

    model = source.model
    archive = keras.export.ExportArchive()
    archive.track(model)
    signature = pack(model, input_specs(model))
    with quiet():
        archive.add_endpoint("serve", lambda inputs: model(inputs, training=False), input_signature=[signature])
        archive.write_out(str(target), verbose=False)
    return {}


def run(target: Path, source, info: dict) -> list[np.ndarray]:
    import tensorflow as tf

    from .signature import pack, quiet

    with quiet():
        loaded = tf.saved_model.load(str(target))
    inputs = pack(source.model, [tf.convert_to_tensor(x) for x in source.inputs])
    return [np.asarray(o) for o in tf.nest.flatten(loaded.serve(inputs))]
