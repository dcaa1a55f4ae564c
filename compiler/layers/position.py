"""Position embeddings with keras_hub's class and argument names, so a spec written for one runs with the other.

    - TokenAndPositionEmbedding: {vocabulary_size: 20000, sequence_length: 200, embedding_dim: 32}
    - PositionEmbedding: {sequence_length: 200}      # learned, added to its input by the spec
    - SinePositionEncoding: {}                        # fixed sinusoids (Vaswani et al., 2017)

Written here rather than taken from keras_hub: keras_hub pulls in a tokenizer
stack (tensorflow-text, kagglehub...) for three small layers, and its layers
live under `keras_hub>` names a saved model would then need keras_hub to load.
The computations follow keras_hub's (same weights, same shapes, same outputs
for the same weights): `PositionEmbedding` and `SinePositionEncoding` return
the position part only, broadcast to the input's shape; `TokenAndPositionEmbedding`
returns token embedding + position embedding.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kspec")
class PositionEmbedding(keras.layers.Layer):
    """A learned embedding of the positions 0..sequence_length-1 (inputs: (batch, length, features))."""

    def __init__(self, sequence_length: int, initializer: str = "glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(f"`sequence_length` must be a positive integer. Received: {sequence_length!r}")
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"PositionEmbedding needs inputs of shape (batch, length, features), "
                             f"got {tuple(input_shape)}")
        if input_shape[-2] is not None and input_shape[-2] > self.sequence_length:
            raise ValueError(f"the input has {input_shape[-2]} positions, more than sequence_length="
                             f"{self.sequence_length}")
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=(self.sequence_length, input_shape[-1]), initializer=self.initializer,
            trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        shape = ops.shape(inputs)
        length, features = shape[-2], shape[-1]
        table = ops.convert_to_tensor(self.position_embeddings)
        table = ops.slice(table, (0, 0), (length, features))
        return ops.broadcast_to(ops.cast(table, self.compute_dtype), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer)}


@keras.saving.register_keras_serializable(package="kspec")
class SinePositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal position encodings (sin on even features, cos on odd), broadcast to the input's shape."""

    def __init__(self, max_wavelength: float = 10000, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength

    def call(self, inputs):
        shape = ops.shape(inputs)
        length, hidden = shape[-2], shape[-1]
        dtype = self.compute_dtype
        positions = ops.cast(ops.arange(length), dtype)
        min_freq = ops.cast(1 / self.max_wavelength, dtype)
        timescales = ops.power(min_freq, ops.cast(2 * (ops.arange(hidden) // 2), dtype) / ops.cast(hidden, dtype))
        angles = ops.expand_dims(positions, 1) * ops.expand_dims(timescales, 0)
        cos_mask = ops.cast(ops.arange(hidden) % 2, dtype)
        encodings = ops.sin(angles) * (1 - cos_mask) + ops.cos(angles) * cos_mask
        return ops.broadcast_to(encodings, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_wavelength": self.max_wavelength}


@keras.saving.register_keras_serializable(package="kspec")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token ids (batch, length) -> token embedding + learned position embedding (batch, length, embedding_dim)."""

    def __init__(self, vocabulary_size: int, sequence_length: int, embedding_dim: int,
                 embeddings_initializer: str = "uniform", mask_zero: bool = False, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("vocabulary_size", vocabulary_size), ("sequence_length", sequence_length),
                           ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer. Received: {value!r}")
        self.vocabulary_size, self.sequence_length, self.embedding_dim = vocabulary_size, sequence_length, embedding_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.mask_zero = bool(mask_zero)
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, embeddings_initializer=self.embeddings_initializer,
            mask_zero=mask_zero, dtype=self.dtype_policy, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            sequence_length, initializer=self.embeddings_initializer, dtype=self.dtype_policy,
            name="position_embedding")
        self.supports_masking = self.mask_zero

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        self.position_embedding.build(tuple(input_shape) + (self.embedding_dim,))
        super().build(input_shape)

    def call(self, inputs):
        tokens = self.token_embedding(inputs)
        return tokens + self.position_embedding(tokens)

    def compute_mask(self, inputs, mask=None):
        return self.token_embedding.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length, "embedding_dim": self.embedding_dim,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "mask_zero": self.mask_zero}
