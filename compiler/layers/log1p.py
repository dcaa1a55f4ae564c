"""`Log1p`: log(1 + x) inside the model, for inputs that span orders of magnitude.

A layer rather than a numpy step so the transformation is saved with the model
and `predict` on raw inputs just works. The default is sign-preserving
(`sign(x) * log1p(|x|)`): identical to log1p for x >= 0 and defined (instead of
NaN) for negative values.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kspec")
class Log1p(keras.layers.Layer):
    """y = sign(x) * log(1 + |x|) when `signed` (default), else y = log(1 + x)."""

    def __init__(self, signed: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.signed = bool(signed)

    def call(self, inputs):
        inputs = keras.ops.cast(inputs, self.compute_dtype)
        if self.signed:
            return keras.ops.sign(inputs) * keras.ops.log1p(keras.ops.abs(inputs))
        return keras.ops.log1p(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "signed": self.signed}
