"""The build stage: each classic architecture built from a ModelSpec equals the same model written by hand.

For every model: same parameter counts (trainable and non-trainable), same layer
types in the same order, same number of inputs and outputs, and the same
outputs on random inputs once the hand-written model has the kspec model's weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from compiler.builder import build_model, compile_model, describe
from compiler.errors import Loc, SpecError
from compiler.spec.types import Component, InputSpec, ModelSpec, NodeSpec, TrainSpec

FILE = "spec.yaml"
_line = [10]


def node(name, layer, inputs, /, shares=None, line=None, **args) -> NodeSpec:
    """One node as the resolver would produce it; each gets its own line in `spec.yaml`."""
    if line is None:
        _line[0] += 1
        line = _line[0]
    if isinstance(inputs, str):
        inputs = [inputs]
    return NodeSpec(name=name, layer=layer, args=args, inputs=tuple(inputs), loc=Loc(FILE, line, 7),
                    path=f"model.layers[{line}]", shares=shares)


def inp(name, *shape, dtype="float32") -> InputSpec:
    return InputSpec(name=name, shape=tuple(shape), dtype=dtype, loc=Loc(FILE, 2, 5))


def spec(inputs, nodes, outputs) -> ModelSpec:
    return ModelSpec(inputs=tuple(inputs), nodes=tuple(nodes), outputs=tuple(outputs))


def counts(model):
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


def assert_same_model(kspec_model, hand, data):
    assert counts(kspec_model) == counts(hand)
    assert [type(layer).__name__ for layer in kspec_model.layers] == [type(layer).__name__ for layer in hand.layers]
    assert len(kspec_model.inputs) == len(hand.inputs)
    assert len(kspec_model.outputs) == len(hand.outputs)
    hand.set_weights(kspec_model.get_weights())
    ours, theirs = kspec_model(data, training=False), hand(data, training=False)
    if isinstance(ours, (list, tuple)):
        assert isinstance(theirs, (list, tuple)) and len(ours) == len(theirs)
    else:
        assert not isinstance(theirs, (list, tuple))
        ours, theirs = [ours], [theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


rng = np.random.default_rng(0)


def floats(*shape):
    return rng.standard_normal(shape).astype("float32")


# --- the classic architectures: (ModelSpec, hand-written model, sample inputs) ---------------

def lenet5():
    s = spec([inp("image", 32, 32, 1)], [
        node("c1", "Conv2D", "image", filters=6, kernel_size=5, activation="tanh"),
        node("s2", "AveragePooling2D", "c1", pool_size=2),
        node("c3", "Conv2D", "s2", filters=16, kernel_size=5, activation="tanh"),
        node("s4", "AveragePooling2D", "c3", pool_size=2),
        node("flatten", "Flatten", "s4"),
        node("f5", "Dense", "flatten", units=120, activation="tanh"),
        node("f6", "Dense", "f5", units=84, activation="tanh"),
        node("digit", "Dense", "f6", units=10, activation="softmax"),
    ], ["digit"])
    x = keras.Input((32, 32, 1))
    y = layers.Conv2D(6, 5, activation="tanh")(x)
    y = layers.AveragePooling2D(2)(y)
    y = layers.Conv2D(16, 5, activation="tanh")(y)
    y = layers.AveragePooling2D(2)(y)
    y = layers.Flatten()(y)
    y = layers.Dense(120, activation="tanh")(y)
    y = layers.Dense(84, activation="tanh")(y)
    y = layers.Dense(10, activation="softmax")(y)
    return s, keras.Model(x, y), floats(2, 32, 32, 1)


def vgg():
    nodes, prev = [], "image"
    for i, filters in enumerate([32, 64, 128]):       # as `repeat: {times: 3, as: i}` expands
        nodes += [node(f"stage_{i}.conv_a", "Conv2D", prev, filters=filters, kernel_size=3, padding="same",
                       activation="relu"),
                  node(f"stage_{i}.conv_b", "Conv2D", f"stage_{i}.conv_a", filters=filters, kernel_size=3,
                       padding="same", activation="relu"),
                  node(f"stage_{i}.pool", "MaxPooling2D", f"stage_{i}.conv_b")]
        prev = f"stage_{i}.pool"
    nodes += [node("flatten", "Flatten", prev), node("fc", "Dense", "flatten", units=64, activation="relu"),
              node("drop", "Dropout", "fc", rate=0.5), node("out", "Dense", "drop", units=10, activation="softmax")]
    s = spec([inp("image", 16, 16, 3)], nodes, ["out"])
    x = keras.Input((16, 16, 3))
    y = x
    for filters in (32, 64, 128):
        y = layers.Conv2D(filters, 3, padding="same", activation="relu")(y)
        y = layers.Conv2D(filters, 3, padding="same", activation="relu")(y)
        y = layers.MaxPooling2D()(y)
    y = layers.Flatten()(y)
    y = layers.Dense(64, activation="relu")(y)
    y = layers.Dropout(0.5)(y)
    y = layers.Dense(10, activation="softmax")(y)
    return s, keras.Model(x, y), floats(2, 16, 16, 3)


def resnet():
    nodes = [node("stem", "Conv2D", "image", filters=8, kernel_size=3, padding="same", use_bias=False),
             node("stem_bn", "BatchNormalization", "stem"),
             node("stem_relu", "Activation", "stem_bn", activation="relu")]
    prev = "stem_relu"
    for i in range(1, 4):                            # the block `residual` used three times
        b = f"residual_{i}"
        nodes += [
            node(f"{b}.conv_a", "Conv2D", prev, filters=8, kernel_size=3, padding="same", use_bias=False),
            node(f"{b}.bn_a", "BatchNormalization", f"{b}.conv_a"),
            node(f"{b}.relu_a", "Activation", f"{b}.bn_a", activation="relu"),
            node(f"{b}.conv_b", "Conv2D", f"{b}.relu_a", filters=8, kernel_size=3, padding="same", use_bias=False),
            node(f"{b}.bn_b", "BatchNormalization", f"{b}.conv_b"),
            node(f"{b}.add", "Add", [prev, f"{b}.bn_b"]),
            node(f"{b}.relu", "Activation", f"{b}.add", activation="relu"),
        ]
        prev = f"{b}.relu"
    nodes += [node("pool", "GlobalAveragePooling2D", prev), node("out", "Dense", "pool", units=10, activation="softmax")]
    s = spec([inp("image", 8, 8, 3)], nodes, ["out"])

    x = keras.Input((8, 8, 3))
    y = layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("relu")(y)
    for _ in range(3):
        skip = y
        y = layers.Conv2D(8, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.Activation("relu")(y)
        y = layers.Conv2D(8, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.Add()([skip, y])
        y = layers.Activation("relu")(y)
    y = layers.GlobalAveragePooling2D()(y)
    y = layers.Dense(10, activation="softmax")(y)
    return s, keras.Model(x, y), floats(2, 8, 8, 3)


def multitask_spec():
    return spec([inp("features", 10)], [
        node("trunk_1", "Dense", "features", units=32, activation="relu"),
        node("trunk_2", "Dense", "trunk_1", units=16, activation="relu"),
        node("species", "Dense", "trunk_2", units=3, activation="softmax"),
        node("size", "Dense", "trunk_2", units=1),
    ], ["species", "size"])


def multitask():
    x = keras.Input((10,))
    t = layers.Dense(32, activation="relu")(x)
    t = layers.Dense(16, activation="relu")(t)
    a = layers.Dense(3, activation="softmax")(t)
    b = layers.Dense(1)(t)
    return multitask_spec(), keras.Model(x, [a, b]), floats(4, 10)


def siamese():
    s = spec([inp("left", 8), inp("right", 8)], [
        node("enc_1", "Dense", "left", units=16, activation="relu"),
        node("enc_2", "Dense", "enc_1", units=8),
        node("enc_1_r", "Dense", "right", shares="enc_1", units=16, activation="relu"),
        node("enc_2_r", "Dense", "enc_1_r", shares="enc_2", units=8),
        node("diff", "Subtract", ["enc_2", "enc_2_r"]),
        node("same", "Dense", "diff", units=1, activation="sigmoid"),
    ], ["same"])
    a, b = keras.Input((8,)), keras.Input((8,))
    enc_1, enc_2 = layers.Dense(16, activation="relu"), layers.Dense(8)
    ea, eb = enc_2(enc_1(a)), enc_2(enc_1(b))
    y = layers.Dense(1, activation="sigmoid")(layers.Subtract()([ea, eb]))
    return s, keras.Model([a, b], y), [floats(3, 8), floats(3, 8)]


def text_lstm():
    s = spec([inp("tokens", 20, dtype="int32")], [
        node("embed", "Embedding", "tokens", input_dim=100, output_dim=8),
        node("lstm", "LSTM", "embed", units=16, unit_forget_bias=True),
        node("positive", "Dense", "lstm", units=1, activation="sigmoid"),
    ], ["positive"])
    x = keras.Input((20,), dtype="int32")
    y = layers.Embedding(100, 8)(x)
    y = layers.LSTM(16)(y)
    y = layers.Dense(1, activation="sigmoid")(y)
    return s, keras.Model(x, y), rng.integers(0, 100, size=(3, 20)).astype("int32")


def stacked_gru():
    s = spec([inp("series", 10, 4)], [
        node("gru_1", "GRU", "series", units=8, return_sequences=True),
        node("gru_2", "GRU", "gru_1", units=8),
        node("out", "Dense", "gru_2", units=2),
    ], ["out"])
    x = keras.Input((10, 4))
    y = layers.GRU(8, return_sequences=True)(x)
    y = layers.GRU(8)(y)
    y = layers.Dense(2)(y)
    return s, keras.Model(x, y), floats(3, 10, 4)


def transformer():
    s = spec([inp("tokens", 6, 16)], [
        node("enc.attention", "MultiHeadAttention", ["tokens", "tokens"], num_heads=2, key_dim=8),
        node("enc.attention_drop", "Dropout", "enc.attention", rate=0.1),
        node("enc.add_1", "Add", ["tokens", "enc.attention_drop"]),
        node("enc.norm_1", "LayerNormalization", "enc.add_1", epsilon=1e-6),
        node("enc.ff_1", "Dense", "enc.norm_1", units=32, activation="relu"),
        node("enc.ff_2", "Dense", "enc.ff_1", units=16),
        node("enc.add_2", "Add", ["enc.norm_1", "enc.ff_2"]),
        node("enc.norm_2", "LayerNormalization", "enc.add_2", epsilon=1e-6),
        node("pool", "GlobalAveragePooling1D", "enc.norm_2"),
        node("out", "Dense", "pool", units=2, activation="softmax"),
    ], ["out"])
    x = keras.Input((6, 16))
    a = layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    a = layers.Dropout(0.1)(a)
    h = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([x, a]))
    f = layers.Dense(32, activation="relu")(h)
    f = layers.Dense(16)(f)
    h = layers.LayerNormalization(epsilon=1e-6)(layers.Add()([h, f]))
    y = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling1D()(h))
    return s, keras.Model(x, y), floats(2, 6, 16)


def denoising_autoencoder():
    s = spec([inp("signal", 20)], [
        node("noise", "GaussianNoise", "signal", stddev=0.1),
        node("code", "Dense", "noise", units=8, activation="relu", activity_regularizer={"L1": {"l1": 1e-5}}),
        node("reconstruction", "Dense", "code", units=20, activation="sigmoid"),
    ], ["reconstruction"])
    x = keras.Input((20,))
    y = layers.GaussianNoise(0.1)(x)
    y = layers.Dense(8, activation="relu", activity_regularizer=keras.regularizers.L1(1e-5))(y)
    y = layers.Dense(20, activation="sigmoid")(y)
    return s, keras.Model(x, y), floats(3, 20)


def conv1d_conv3d():
    s = spec([inp("sequence", 12, 3), inp("volume", 4, 4, 4, 1)], [
        node("seq_conv", "Conv1D", "sequence", filters=4, kernel_size=3, activation="relu"),
        node("seq_flat", "Flatten", "seq_conv"),
        node("vol_conv", "Conv3D", "volume", filters=2, kernel_size=3, activation="relu"),
        node("vol_flat", "Flatten", "vol_conv"),
        node("both", "Concatenate", ["seq_flat", "vol_flat"]),
        node("out", "Dense", "both", units=1),
    ], ["out"])
    a, b = keras.Input((12, 3)), keras.Input((4, 4, 4, 1))
    fa = layers.Flatten()(layers.Conv1D(4, 3, activation="relu")(a))
    fb = layers.Flatten()(layers.Conv3D(2, 3, activation="relu")(b))
    y = layers.Dense(1)(layers.Concatenate()([fa, fb]))
    return s, keras.Model([a, b], y), [floats(2, 12, 3), floats(2, 4, 4, 4, 1)]


ARCHITECTURES = [lenet5, vgg, resnet, multitask, siamese, text_lstm, stacked_gru, transformer,
                 denoising_autoencoder, conv1d_conv3d]


@pytest.mark.parametrize("make", ARCHITECTURES, ids=lambda f: f.__name__)
def test_architecture_matches_hand_written(make):
    s, hand, data = make()
    model = build_model(s, name=make.__name__)
    assert model.name == make.__name__
    names = [layer.name for layer in model.layers]
    assert sorted(names) == sorted([i.name for i in s.inputs] + [n.name for n in s.nodes if not n.shares])
    assert_same_model(model, hand, data)


def test_shared_layers_are_the_same_objects():
    s, _, _ = siamese()
    model = build_model(s)
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    assert [d.name for d in dense] == ["enc_1", "enc_2", "same"]
    assert len(model.get_layer("enc_1")._inbound_nodes) == 2
    from compiler.builder.summary import text_diagram

    assert "<- enc_2[0], enc_2[1]" in text_diagram(model)


def test_activity_regularizer_reaches_the_layer():
    s, _, data = denoising_autoencoder()
    model = build_model(s)
    reg = model.get_layer("code").activity_regularizer
    assert isinstance(reg, keras.regularizers.L1)
    assert float(reg.l1) == pytest.approx(1e-5)
    model(data, training=True)
    assert len(model.losses) == 1


def test_components_as_names_and_one_key_mappings():
    s = spec([inp("x", 4)], [
        node("d", "Dense", "x", units=3, activation="relu",
             kernel_initializer={"RandomNormal": {"stddev": 0.02}}, bias_initializer="zeros",
             kernel_regularizer={"L2": {"l2": 1e-4}}, bias_regularizer="l1",
             kernel_constraint={"MaxNorm": {"max_value": 2.0}}, bias_constraint="non_neg"),
        node("rep", "RepeatVector", "d", n=3),
        node("lstm", "LSTM", "rep", units=2, kernel_initializer="he_normal",
             recurrent_initializer={"Orthogonal": {"gain": 0.5}}),
    ], ["lstm"])
    model = build_model(s)
    d = model.get_layer("d")
    assert isinstance(d.kernel_initializer, keras.initializers.RandomNormal)
    assert d.kernel_initializer.stddev == pytest.approx(0.02)
    assert isinstance(d.bias_initializer, keras.initializers.Zeros)
    assert isinstance(d.kernel_regularizer, keras.regularizers.L2) and float(d.kernel_regularizer.l2) == pytest.approx(1e-4)
    assert isinstance(d.bias_regularizer, keras.regularizers.L1)
    assert isinstance(d.kernel_constraint, keras.constraints.MaxNorm) and d.kernel_constraint.max_value == 2.0
    assert isinstance(d.bias_constraint, keras.constraints.NonNeg)
    assert d.activation is keras.activations.relu
    cell = model.get_layer("lstm").cell
    assert isinstance(cell.kernel_initializer, keras.initializers.HeNormal)
    assert isinstance(cell.recurrent_initializer, keras.initializers.Orthogonal)
    assert cell.recurrent_initializer.gain == pytest.approx(0.5)


def test_wrapper_layer_argument_is_built():
    s = spec([inp("x", 5, 3)], [
        node("td", "TimeDistributed", "x", layer={"Dense": {"units": 2}}),
        node("bi", "Bidirectional", "td", layer={"GRU": {"units": 3}}),
    ], ["bi"])
    model = build_model(s)
    assert isinstance(model.get_layer("td").layer, layers.Dense)
    assert model.output.shape == (None, 6)


def test_attention_layers_take_query_and_value():
    s = spec([inp("q", 4, 8), inp("v", 6, 8)], [
        node("mha", "MultiHeadAttention", ["q", "v"], num_heads=2, key_dim=4),
        node("att", "Attention", ["q", "v"]),
        node("both", "Concatenate", ["mha", "att"]),
    ], ["both"])
    model = build_model(s)
    q, v = keras.Input((4, 8)), keras.Input((6, 8))
    hand = keras.Model([q, v], layers.Concatenate()([layers.MultiHeadAttention(2, 4)(q, v), layers.Attention()([q, v])]))
    assert_same_model(model, hand, [floats(2, 4, 8), floats(2, 6, 8)])


def test_input_layers_from_the_data_stage():
    norm = layers.Normalization(name="normalization")
    norm.adapt(floats(50, 4) * 3 + 1)
    s = spec([inp("x", 4)], [node("out", "Dense", "x", units=2)], ["out"])
    model = build_model(s, input_layers={"x": [norm, layers.GaussianNoise(0.1, name="noise")]})
    assert [layer.name for layer in model.layers] == ["x", "x.normalization", "x.noise", "out"]
    assert counts(model)[1] == 4 * 2 + 1       # mean, variance, count: not trained
    data = floats(3, 4)
    expected = model.get_layer("out")(norm(data))
    np.testing.assert_allclose(np.asarray(model(data)), np.asarray(expected), rtol=1e-5)


def test_backbone_error_points_at_the_node():     # Backbone itself: tests/test_backbone.py
    s = spec([inp("image", 32, 32, 3)], [
        node("backbone", "Backbone", "image", line=7, application="MobileNetV9"),
        node("out", "Dense", "backbone", units=2),
    ], ["out"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    assert "unknown application 'MobileNetV9'" in str(err.value)
    assert f"{FILE}:7:7" in str(err.value)


def test_layer_returning_its_input_is_reported():
    s = spec([inp("image", 8, 8, 3)], [
        node("conv", "Conv2D", "image", filters=2, kernel_size=3),
        node("equalize", "Equalization", "conv", line=12),
        node("out", "Flatten", "equalize"),
    ], ["out"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    assert f"{FILE}:12:7: error: Equalization 'equalize' returns its input unchanged" in str(err.value)


# --- errors point at the spec -----------------------------------------------------------------

def test_bad_argument_names_the_node_and_its_place():
    s = spec([inp("x", 8)], [node("drop", "Dropout", "x", line=5, rate=1.5)], ["drop"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    text = str(err.value)
    assert f"{FILE}:5:7: error: Dropout 'drop'" in text
    assert "rate=1.5" in text and "(at model.layers[5])" in text
    assert "Traceback" not in text and "Arguments received" not in text


def test_conv2d_after_flatten():
    s = spec([inp("image", 8, 8, 1)], [
        node("flatten", "Flatten", "image", line=3),
        node("conv1", "Conv2D", "flatten", line=4, filters=4, kernel_size=3),
    ], ["conv1"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    (diag,) = err.value.diagnostics
    assert diag.loc == Loc(FILE, 4, 7)
    assert diag.message == ("Conv2D 'conv1' cannot take its input: expected a 4-D input (batch, height, width, "
                            "channels) but 'flatten' gives shape (None, 64) — add a Reshape or check the order "
                            "of layers")
    assert str(err.value).startswith(f"{FILE}:4:7: error: Conv2D 'conv1'")


def test_add_of_mismatched_shapes():
    s = spec([inp("x", 6)], [
        node("a", "Dense", "x", units=4),
        node("b", "Dense", "x", units=5),
        node("sum", "Add", ["a", "b"], line=9),
        node("out", "Dense", "sum", units=1),
    ], ["out"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    text = str(err.value)
    assert f"{FILE}:9:7: error: Add 'sum' cannot take its inputs" in text
    assert "'a' (shape (None, 4))" in text and "'b' (shape (None, 5))" in text


def test_all_construction_errors_are_reported_with_the_first_call_error():
    s = spec([inp("x", 8)], [
        node("d1", "Dense", "x", line=3, units=4, kernel_initializer="he_normall"),
        node("d2", "Dense", "x", line=4, units=4),
        node("bad_call", "Conv1D", "d2", line=5, filters=2, kernel_size=3),
        node("drop", "Dropout", "bad_call", line=6, rate=-1),
        node("d3", "Dense", "drop", line=7, units=4, unitz=3),
        node("typo", "Dens", "x", line=8, units=4),
        node("never", "Add", ["d2", "x"], line=9),        # not called: after the first call error
    ], ["never"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    lines = [d.loc.line for d in err.value.diagnostics]
    assert lines == [3, 5, 6, 7, 8]
    text = str(err.value)
    assert "node 'typo': unknown layer 'Dens'; did you mean 'Dense'?" in text
    assert "did you mean 'he_normal'" in text
    assert "Conv1D 'bad_call' cannot take its input: expected a 3-D input (batch, steps, channels)" in text
    assert "unitz" in text


def test_block_use_sites_are_kept():
    via = (Loc("main.yaml", 20, 5),)
    bad = NodeSpec(name="res_1.conv", layer="Conv2D", args={"filters": 0, "kernel_size": 3}, inputs=("x",),
                   loc=Loc("blocks.yaml", 4, 9), path="model.blocks.res.layers[0]", via=via)
    with pytest.raises(SpecError) as err:
        build_model(spec([inp("x", 8, 8, 1)], [bad], ["res_1.conv"]))
    text = str(err.value)
    assert "blocks.yaml:4:9: error: Conv2D 'res_1.conv'" in text
    assert "main.yaml:20:5: note: expanded from here" in text


# --- compile -------------------------------------------------------------------------------

def train_spec(optimizer, losses, metrics=None, **kw) -> TrainSpec:
    return TrainSpec(optimizer=optimizer, losses=losses, metrics=metrics or {}, loc=Loc(FILE, 30, 1), **kw)


def comp(kind, name, line=31, path="train.optimizer", **args) -> Component:
    return Component(kind=kind, name=name, args=args, loc=Loc(FILE, line, 3), path=path)


def test_compile_adam_with_schedule_and_clipnorm():
    s, _, _ = lenet5()
    model = build_model(s)
    adam = comp("optimizers", "Adam", clipnorm=5.0,
                learning_rate={"ExponentialDecay": {"initial_learning_rate": 0.01, "decay_steps": 10,
                                                    "decay_rate": 0.5}})
    compile_model(model, train_spec(adam, {"digit": comp("losses", "sparse_categorical_crossentropy")},
                                    {"digit": (comp("metrics", "accuracy"),)}), s)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.Adam) and opt.clipnorm == 5.0
    assert isinstance(opt._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert model.loss == "sparse_categorical_crossentropy"
    history = model.fit(floats(4, 32, 32, 1), rng.integers(0, 10, 4), epochs=1, batch_size=4, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}


def test_compile_sgd_by_name_and_jit_auto_off_on_cpu():
    s = multitask_spec()
    single = spec(s.inputs, s.nodes[:3], ["species"])
    model = build_model(single)
    compile_model(model, train_spec(comp("optimizers", "sgd"), {"species": comp("losses", "mse")},
                                    jit_compile="auto", steps_per_execution=2), single)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        assert model.jit_compile is False
    assert model.steps_per_execution == 2


def test_compile_multitask_per_output_losses_metrics_weights_and_fit():
    s = multitask_spec()
    model = build_model(s)
    train = train_spec(
        comp("optimizers", "Adam", learning_rate=0.01),
        {"species": comp("losses", "sparse_categorical_crossentropy", path="train.loss.species"),
         "size": comp("losses", "Huber", delta=2.0, path="train.loss.size")},
        {"species": (comp("metrics", "accuracy"),), "size": (comp("metrics", "mae"), comp("metrics", "RootMeanSquaredError"))},
        loss_weights={"species": 1.0, "size": 0.5})
    compile_model(model, train, s)
    assert isinstance(model.loss["size"], keras.losses.Huber)
    x = floats(8, 10)
    y = {"species": rng.integers(0, 3, 8), "size": floats(8, 1)}
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert {"loss", "species_loss", "size_loss", "species_accuracy", "size_mae",
            "size_root_mean_squared_error"} <= set(history)
    assert np.isfinite(history["loss"][0])


def test_compile_errors_point_at_the_component():
    s = multitask_spec()
    model = build_model(s)
    train = train_spec(comp("optimizers", "Adam", line=40, learnin_rate=0.1),
                       {"species": comp("losses", "msee", line=41, path="train.loss.species"),
                        "colour": comp("losses", "mse", line=42, path="train.loss.colour")})
    with pytest.raises(SpecError) as err:
        compile_model(model, train, s)
    text = str(err.value)
    assert f"{FILE}:40:3: error: optimizer 'Adam' cannot be created" in text and "learnin_rate" in text
    assert f"{FILE}:41:3: error: loss 'msee' cannot be created: unknown loss 'msee'" in text
    assert f"{FILE}:42:3: error: the loss for 'colour' names no model output (outputs: species, size)" in text


# --- describe ------------------------------------------------------------------------------

def test_describe_prints_summary_counts_and_writes_a_diagram(tmp_path):
    s, _, _ = resnet()
    model = build_model(s, name="resnet")
    text = describe(model, tmp_path)
    trainable, non_trainable = counts(model)
    assert "residual_3.add (Add)" in text
    assert f"Parameters: {trainable + non_trainable:,} total, {trainable:,} trainable, {non_trainable:,} non-trainable" in text
    diagram = Path(text.rsplit("Diagram: ", 1)[1].strip())
    assert diagram.exists() and diagram.parent == tmp_path
    if diagram.suffix == ".txt":
        drawing = diagram.read_text()
        assert "residual_1.add" in drawing and "<- stem_relu, residual_1.bn_b" in drawing
    assert "Diagram" not in describe(model, None)


# --- Maxout and saving -----------------------------------------------------------------------

def test_maxout_is_the_max_over_groups():
    from compiler.layers import Maxout

    x = floats(3, 12)
    y = np.asarray(Maxout(num_units=4)(x))
    np.testing.assert_allclose(y, x.reshape(3, 4, 3).max(axis=-1))
    assert Maxout(num_units=4).compute_output_shape((None, 5, 12)) == (None, 5, 4)
    assert Maxout.from_config(Maxout(num_units=4, name="m").get_config()).num_units == 4


def test_maxout_needs_divisible_features():
    s = spec([inp("x", 10)], [node("m", "Maxout", "x", line=4, num_units=3)], ["m"])
    with pytest.raises(SpecError) as err:
        build_model(s)
    assert f"{FILE}:4:7: error: Maxout 'm' cannot take its input 'x' (shape (None, 10))" in str(err.value)
    assert "divisible by num_units=3" in str(err.value)


_LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    out = {}
    plain = keras.saving.load_model(sys.argv[1], safe_mode=True)
    out["plain"] = np.asarray(plain(np.load(sys.argv[3]))).tolist()
    out["compiler_imported"] = any(m == "compiler" or m.startswith("compiler.") for m in sys.modules)
    try:
        keras.saving.load_model(sys.argv[2], safe_mode=True)
        out["maxout_without_import"] = "loaded"
    except Exception as exc:
        out["maxout_without_import"] = type(exc).__name__ + ": " + str(exc)[:2000]
    import compiler.layers   # registers kspec>Maxout, as the README tells users to do
    maxout = keras.saving.load_model(sys.argv[2], safe_mode=True)
    out["maxout"] = np.asarray(maxout(np.load(sys.argv[3]))).tolist()
    print(json.dumps(out))
""")


def test_saved_models_load_in_plain_keras(tmp_path):
    s, _, _ = lenet5()
    plain = build_model(spec(s.inputs, [*s.nodes[:5], node("out", "Dense", "flatten", units=3)], ["out"]))
    compile_model(plain, train_spec(comp("optimizers", "adam"), {"out": comp("losses", "mse")}), s)
    plain.save(tmp_path / "plain.keras")
    with_maxout = build_model(spec([inp("x", 32, 32, 1)], [
        node("flatten", "Flatten", "x"), node("d", "Dense", "flatten", units=8),
        node("m", "Maxout", "d", num_units=4)], ["m"]))
    with_maxout.save(tmp_path / "maxout.keras")
    data = floats(2, 32, 32, 1)
    np.save(tmp_path / "x.npy", data)
    (tmp_path / "load.py").write_text(_LOADER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "plain.keras"),
                           str(tmp_path / "maxout.keras"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["compiler_imported"] is False
    np.testing.assert_allclose(out["plain"], np.asarray(plain(data)), rtol=1e-5, atol=1e-6)
    assert "Could not locate class 'Maxout'" in out["maxout_without_import"]   # needs `import compiler.layers`
    np.testing.assert_allclose(out["maxout"], np.asarray(with_maxout(data)), rtol=1e-5, atol=1e-6)
