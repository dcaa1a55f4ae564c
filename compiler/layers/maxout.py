"""Maxout (Goodfellow et al., 2013): the maximum over groups of features."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kspec")
class Maxout(keras.layers.Layer):
    """Max over `num_units` groups of the features on `axis`.

    The `features` values on `axis` (the last one by default) are split into
    `num_units` consecutive groups of `features // num_units` values each; the
    output holds the maximum of each group, so `axis` shrinks to `num_units`.
    `features` must be divisible by `num_units`. A maxout unit is a Dense layer
    with `k * num_units` units followed by this layer.

    In a spec:

        - Dense: {units: 64}          # 4 pieces for each of 16 maxout units
        - Maxout: {num_units: 16}     # (batch, 64) -> (batch, 16)

    In Python:

        >>> x = keras.Input((64,))
        >>> Maxout(num_units=16)(keras.layers.Dense(64)(x)).shape
        (None, 16)

    Saved models load in plain Keras once `compiler.layers` has been imported
    (that registers the class as `kspec>Maxout`), or with
    `custom_objects={"Maxout": Maxout}`.
    """

    def __init__(self, num_units: int, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"Maxout's `num_units` must be a positive integer. Received: num_units={num_units!r}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"Maxout's `axis` must be an integer. Received: axis={axis!r}")
        self.num_units = num_units
        self.axis = axis

    def _features(self, input_shape) -> tuple[int, int | None]:
        rank = len(input_shape)
        axis = self.axis if self.axis >= 0 else rank + self.axis
        if not 0 < axis < rank:
            raise ValueError(f"Maxout's `axis` {self.axis} is not a feature axis of an input of shape "
                             f"{tuple(input_shape)}")
        features = input_shape[axis]
        if features is not None and features % self.num_units:
            raise ValueError(f"Maxout needs a number of features divisible by num_units={self.num_units}, "
                             f"but its input has {features} on axis {self.axis}. "
                             f"Received: input_shape={tuple(input_shape)}")
        return axis, features

    def build(self, input_shape):
        self._features(input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        axis, _ = self._features(input_shape)
        shape = list(input_shape)
        shape[axis] = self.num_units
        return tuple(shape)

    def call(self, inputs):
        axis, features = self._features(inputs.shape)
        shape = list(ops.shape(inputs))
        if features is None:
            features = shape[axis]
        grouped = shape[:axis] + [self.num_units, features // self.num_units] + shape[axis + 1:]
        return ops.max(ops.reshape(inputs, grouped), axis=axis + 1)

    def get_config(self):
        return {**super().get_config(), "num_units": self.num_units, "axis": self.axis}
