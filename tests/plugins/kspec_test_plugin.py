"""A sample `--plugin` module: Keras layers a spec may use once `kspec ... --plugin kspec_test_plugin` imports it.

- `Swish2`: x * sigmoid(beta * x) with a trainable `beta` per feature, and a hand-written
  gradient (tf.custom_gradient) that is CORRECT;
- `BadSwish`: the same layer with a deliberately WRONG hand-written gradient (the
  derivative of sigmoid is taken as s instead of s * (1 - s)): the forward pass is right,
  so training "works", but `kspec check --gradients` must catch it.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _swish(x, beta, wrong: bool):
    @tf.custom_gradient
    def forward(x, beta):
        s = tf.sigmoid(beta * x)
        y = x * s

        def grad(dy):
            ds = s if wrong else s * (1.0 - s)          # d sigmoid(z) / dz
            dx = dy * (s + x * ds * beta)
            dbeta = dy * x * ds * x
            # beta has shape (features,): sum over every other axis
            dbeta = tf.reduce_sum(tf.reshape(dbeta, (-1, tf.shape(dbeta)[-1])), axis=0)
            return dx, dbeta

        return y, grad

    return forward(x, beta)


@keras.saving.register_keras_serializable(package="kspec_test")
class Swish2(keras.layers.Layer):
    """x * sigmoid(beta * x), beta trainable per feature; correct custom gradient."""

    wrong = False

    def __init__(self, beta_initializer: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.beta_initializer = float(beta_initializer)

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],),
                                    initializer=keras.initializers.Constant(self.beta_initializer))

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        return _swish(x, tf.convert_to_tensor(self.beta), self.wrong)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "beta_initializer": self.beta_initializer}


@keras.saving.register_keras_serializable(package="kspec_test")
class BadSwish(Swish2):
    """Like Swish2, but its custom gradient is wrong."""

    wrong = True
