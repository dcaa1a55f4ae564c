"""An example `--plugin` module: a layer, a loss and a metric a spec may name once it is loaded.

    kspec train examples/plugins/siamese_contrastive.yaml --plugin kspec_example_plugin
    (with examples/plugins on PYTHONPATH; see docs/plugins.md)

Each is a registered Keras serializable (`register_keras_serializable`), so a model
trained with them saves to `.keras` and loads again, with `safe_mode` on, in any
process that has imported this module.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kspec_example_plugin")
class Scale(keras.layers.Layer):
    """y = s * x with one trainable scale s (initially `initial`): lets a distance choose its own unit."""

    def __init__(self, initial: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = float(initial)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(), initializer=keras.initializers.Constant(self.initial))

    def call(self, inputs):
        return inputs * ops.cast(self.scale, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


@keras.saving.register_keras_serializable(package="kspec_example_plugin")
class ContrastiveLoss(keras.losses.Loss):
    """Hadsell et al. (2006): y * d^2 + (1 - y) * max(margin - d, 0)^2, for a predicted distance d and
    y = 1 for a similar pair (the Keras siamese example's loss, with its label convention)."""

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        similar = y_true * ops.square(y_pred)
        different = (1 - y_true) * ops.square(ops.maximum(self.margin - y_pred, 0.0))
        return ops.mean(similar + different, axis=-1)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="kspec_example_plugin")
class PairAccuracy(keras.metrics.MeanMetricWrapper):
    """The share of pairs judged right: similar when the distance is below `threshold`."""

    def __init__(self, threshold: float = 0.5, name: str = "pair_accuracy", dtype=None):
        super().__init__(fn=_pair_accuracy, name=name, dtype=dtype, threshold=threshold)
        self.threshold = float(threshold)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}


def _pair_accuracy(y_true, y_pred, threshold=0.5):
    judged = ops.cast(y_pred < threshold, y_pred.dtype)
    return ops.mean(ops.cast(ops.equal(judged, ops.cast(y_true, y_pred.dtype)), y_pred.dtype), axis=-1)
