"""The four published models that needed workarounds, written as the originals are (examples/), each against
its hand-written Keras twin: the same parameter count and, with the spec model's weights copied into the
twin, the same outputs. Plus the position layers against keras_hub's formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras import layers, ops  # noqa: E402

from compiler.builder import build_model  # noqa: E402
from compiler.spec.validate import load_spec  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def built(name: str):
    keras.utils.set_random_seed(0)
    spec = load_spec(EXAMPLES / f"{name}.yaml")
    return build_model(spec.model, spec.name)


def same_outputs(model, twin, x):
    assert model.count_params() == twin.count_params()
    twin.set_weights(model.get_weights())
    want, got = model.predict(x, verbose=0), twin.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_siamese_with_a_shared_tower_and_a_distance_expression():
    model = built("siamese")
    left, right = keras.Input((64,)), keras.Input((64,))
    dense_1, dropout, dense_2 = layers.Dense(32, activation="relu"), layers.Dropout(0.1), layers.Dense(16)
    tower = lambda x: dense_2(dropout(dense_1(x)))  # noqa: E731  (the Keras example's shared tower)
    distance = layers.Lambda(lambda t: ops.sqrt(ops.maximum(ops.sum(ops.square(t[0] - t[1]), axis=-1,
                                                                    keepdims=True), 1e-7)))
    twin = keras.Model([left, right], layers.Dense(1, activation="sigmoid")(distance([tower(left), tower(right)])))
    # every layer of the tower is shared: one set of tower weights, used by both inputs
    assert len(model.weights) == 6 and model.count_params() == 64 * 32 + 32 + 32 * 16 + 16 + 2
    assert model.get_layer("tower_a.dense") is not None and "tower_b.dense" not in [la.name for la in model.layers]
    rng = np.random.default_rng(0)
    same_outputs(model, twin, [rng.random((8, 64)).astype("float32"), rng.random((8, 64)).astype("float32")])


class KerasIoTokenAndPositionEmbedding(layers.Layer):
    """The layer of the Keras example "Text classification with Transformer", as written there."""

    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = self.pos_emb(ops.arange(start=0, stop=maxlen, step=1))
        return self.token_emb(x) + positions


def test_text_transformer_with_token_and_position_embedding():
    model = built("text_transformer")
    inputs = keras.Input((16,), dtype="int32")
    x = KerasIoTokenAndPositionEmbedding(16, 50, 16)(inputs)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=16, dropout=0.1)(x, x)
    out1 = layers.LayerNormalization(epsilon=1e-6)(x + layers.Dropout(0.1)(attention))
    ffn = layers.Dense(16)(layers.Dense(32, activation="relu")(out1))
    x = layers.LayerNormalization(epsilon=1e-6)(out1 + layers.Dropout(0.1)(ffn))
    x = layers.Dropout(0.1)(layers.GlobalAveragePooling1D()(x))
    twin = keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    same_outputs(model, twin, np.random.default_rng(0).integers(0, 50, (8, 16)).astype("int32"))


def test_mlp_mixer_with_patches_by_expression():
    model = built("mlp_mixer")
    inputs = keras.Input((8, 8, 1))
    patches = layers.Lambda(lambda t: ops.reshape(ops.transpose(ops.reshape(t, (-1, 4, 2, 4, 2)), (0, 1, 3, 2, 4)),
                                                  (-1, 16, 4)))(inputs)
    x = layers.Dense(32)(patches)
    for _ in range(2):
        h = layers.LayerNormalization()(x)
        h = layers.Permute((2, 1))(h)
        h = layers.Dense(16, activation="gelu")(h)
        token_mixed = layers.Permute((2, 1))(h) + x
        c = layers.Dense(32, activation="gelu")(layers.LayerNormalization()(token_mixed))
        x = layers.Add()([token_mixed, c])
    twin = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.GlobalAveragePooling1D()(x)))
    images = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    same_outputs(model, twin, images)
    patches = keras.Model(model.inputs, model.get_layer("patches").output).predict(images, verbose=0)
    np.testing.assert_array_equal(patches[:, 1], images[:, 0:2, 2:4, 0].reshape(4, 4))   # patch (0, 1)


def test_wide_and_deep_with_a_loop_over_the_features():
    model = built("wide_deep")
    features = {"color": 5, "size": 4, "shape": 3}
    inputs = {name: keras.Input((1,), dtype="int32", name=name) for name in features}
    numbers = keras.Input((4,), name="numbers")
    vectors = [layers.Flatten()(layers.Embedding(size, 4)(inputs[name])) for name, size in features.items()]
    deep = layers.Concatenate()([*vectors, numbers])
    deep = layers.Dense(1)(layers.Dense(16, activation="relu")(layers.Dense(32, activation="relu")(deep)))
    logit = layers.Add()([deep, layers.Dense(1)(numbers)])
    twin = keras.Model([*inputs.values(), numbers], layers.Activation("sigmoid")(logit))
    assert [la.name for la in model.layers if isinstance(la, layers.Embedding)] == [
        "color_embedding", "size_embedding", "shape_embedding"]
    rng = np.random.default_rng(0)
    x = [rng.integers(0, n, (8, 1)).astype("int32") for n in features.values()] + [rng.random((8, 4)).astype("float32")]
    same_outputs(model, twin, x)


def test_position_layers_follow_keras_hub():
    from compiler.layers import PositionEmbedding, SinePositionEncoding, TokenAndPositionEmbedding

    x = np.zeros((2, 5, 6), dtype="float32")
    sine = SinePositionEncoding()(x).numpy()
    positions, dims = np.arange(5)[:, None], np.arange(6)[None, :]
    angles = positions / np.power(10000.0, 2 * (dims // 2) / 6)
    expected = np.where(dims % 2 == 0, np.sin(angles), np.cos(angles))      # keras_hub: sin even, cos odd
    np.testing.assert_allclose(sine, np.broadcast_to(expected, (2, 5, 6)), atol=1e-5)

    learned = PositionEmbedding(sequence_length=8)
    out = learned(x).numpy()
    assert [w.shape for w in learned.weights] == [(8, 6)]
    np.testing.assert_allclose(out[1], learned.weights[0].numpy()[:5])        # the first 5 positions, per example

    tokens = TokenAndPositionEmbedding(vocabulary_size=10, sequence_length=5, embedding_dim=6)
    ids = np.array([[1, 2, 3, 4, 5]])
    out = tokens(ids).numpy()[0]                                              # builds the two weights
    table, positions = (w.numpy() for w in tokens.weights)
    assert table.shape == (10, 6) and positions.shape == (5, 6)
    np.testing.assert_allclose(out, table[ids[0]] + positions, rtol=1e-6)
    config = TokenAndPositionEmbedding.from_config(tokens.get_config()).get_config()
    assert {k: config[k] for k in ("vocabulary_size", "sequence_length", "embedding_dim")} == {
        "vocabulary_size": 10, "sequence_length": 5, "embedding_dim": 6}
