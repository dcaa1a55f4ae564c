"""The `Backbone` layer: applications (random, ImageNet from the Keras cache, a local weights file),
models loaded `from` a .keras file or a run directory, `cut_at`, `trainable`, `preprocess`, and the errors.

Everything uses MobileNetV2 with alpha 0.35 on 32x32 images (or a tiny hand-made model), so the
file runs in well under two minutes on two cores and never touches the network.
"""

from __future__ import annotations

import re
import textwrap
import urllib.error
from functools import lru_cache

import keras
import numpy as np
import pytest

import compiler.layers  # noqa: F401  (registers kspec's own layers for loading)
from compiler.builder import build_model
from compiler.errors import Loc, SpecError
from compiler.layers import AppPreprocess
from compiler.spec.types import InputSpec, ModelSpec, NodeSpec

MOBILENET = {"application": "MobileNetV2", "alpha": 0.35, "pooling": "avg"}
SHAPE = (32, 32, 3)
HEAD = 1280 * 3 + 3          # Dense(3) on MobileNetV2's 1280 pooled features
# The file Keras's mobilenet_v2.py asks get_file for: alpha 0.35, no top, rows 224 (32 is not one of the
# sizes ImageNet weights exist for, so Keras falls back to 224's).
IMAGENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

rng = np.random.default_rng(0)


def size(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def backbone_spec(spec_file, shape=SHAPE, head=True, **args) -> ModelSpec:
    """image -> Backbone(**args) named `backbone` (line 7 of `spec_file`) -> Dense(3) named `out`."""
    nodes = [NodeSpec("backbone", "Backbone", args, ("image",), Loc(str(spec_file), 7, 7), "model.layers[0]")]
    if head:
        nodes.append(NodeSpec("out", "Dense", {"units": 3}, ("backbone",), Loc(str(spec_file), 9, 7),
                              "model.layers[1]"))
    return ModelSpec((InputSpec("image", shape, loc=Loc(str(spec_file), 4, 5)),), tuple(nodes),
                     ("out" if head else "backbone",))


def build(tmp_path, **args) -> keras.Model:
    return build_model(backbone_spec(tmp_path / "spec.yaml", **args))


def error(tmp_path, **args) -> str:
    with pytest.raises(SpecError) as err:
        build(tmp_path, **args)
    text = str(err.value)
    assert "spec.yaml:7:7: error: Backbone 'backbone'" in text
    assert "Traceback" not in text
    return text


@lru_cache(maxsize=None)
def reference_mobilenet() -> keras.Model:
    """MobileNetV2 as written by hand (random weights): the reference for counts, names and weights."""
    keras.utils.set_random_seed(1)
    return keras.applications.MobileNetV2(input_shape=SHAPE, alpha=0.35, include_top=False, weights=None)


def run(model, x):
    """The model's output on `x`, eagerly (no predict function to trace)."""
    return np.asarray(model(x, training=False))


def images(n=4):
    return rng.uniform(0, 255, (n, *SHAPE)).astype("float32")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache in tmp_path, and a network that always fails."""
    from keras.src.backend import config
    from keras.src.utils import file_utils

    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))

    def no_network(url, *a, **kw):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return home


# --- applications: trainable counts --------------------------------------------------------------

@pytest.mark.parametrize("trainable", [False, True, "block_16|Conv_1"])
def test_application_trainable_counts(tmp_path, trainable):
    model = build(tmp_path, **MOBILENET, weights=None, trainable=trainable)
    reference = reference_mobilenet()    # pooling adds no weights
    if trainable is False:
        expected = HEAD
    elif trainable is True:
        expected = HEAD + size(reference.trainable_weights)
    else:
        matched = [layer for layer in reference.layers if re.search(trainable, layer.name)]
        assert {"block_16_project", "Conv_1", "Conv_1_bn"} <= {layer.name for layer in matched}
        expected = HEAD + sum(size(layer.trainable_weights) for layer in matched)
    assert size(model.trainable_weights) == expected
    assert size(model.weights) == size(reference.weights) + HEAD
    backbone = model.get_layer("backbone")
    assert isinstance(backbone, keras.Model) and model.output.shape == (None, 3)
    assert [type(layer).__name__ for layer in backbone.layers] == \
        [type(layer).__name__ for layer in reference.layers] + ["GlobalAveragePooling2D"]


def test_weights_null_defaults_to_trainable_and_pretrained_to_frozen(tmp_path):
    model = build(tmp_path, **MOBILENET, weights=None)
    assert size(model.trainable_weights) == HEAD + size(reference_mobilenet().trainable_weights)


# --- ImageNet weights through Keras's cache, and a local weights file -----------------------------

def test_imagenet_offline_error_names_the_file_and_the_cache_directory(tmp_path, offline):
    text = error(tmp_path, **MOBILENET, weights="imagenet")
    assert f"'{IMAGENET_FILE}'" in text
    assert str(offline / "models") in text
    assert "weights: PATH" in text
    assert "(at model.layers[0].Backbone.weights)" in text


def test_imagenet_weights_load_from_the_keras_cache(tmp_path, offline):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    source = reference_mobilenet()
    (offline / "models").mkdir(exist_ok=True)
    with h5py.File(offline / "models" / IMAGENET_FILE, "w") as f:     # the legacy .h5 format Keras ships
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    model = build(tmp_path, **MOBILENET, weights="imagenet", trainable=False)
    loaded = model.get_layer("backbone").get_weights()
    expected = source.get_weights()
    assert len(loaded) == len(expected)
    for a, b in zip(loaded, expected):
        np.testing.assert_array_equal(a, b)
    assert size(model.trainable_weights) == HEAD       # pretrained: frozen by default


def test_weights_from_a_local_file(tmp_path):
    source = reference_mobilenet()
    (tmp_path / "weights").mkdir()
    source.save_weights(tmp_path / "weights" / "mine.weights.h5")
    model = build(tmp_path, **MOBILENET, weights="weights/mine.weights.h5")   # relative to spec.yaml
    for a, b in zip(model.get_layer("backbone").get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    text = error(tmp_path, **MOBILENET, weights="weights/missing.weights.h5")
    assert "does not exist" in text and str((tmp_path / "weights" / "missing.weights.h5").resolve()) in text


# --- errors of applications ------------------------------------------------------------------------

def test_application_errors(tmp_path):
    assert "unknown application 'MobileNetv2'; did you mean 'MobileNetV2'?" in error(
        tmp_path, application="MobileNetv2", weights=None)
    assert "needs exactly one source" in error(tmp_path, weights=None)
    assert "needs exactly one source" in error(tmp_path, application="MobileNetV2", **{"from": "m.keras"})
    assert "ResNet50 takes no `alpha`" in error(tmp_path, application="ResNet50", alpha=0.5, weights=None)
    text = error(tmp_path, **MOBILENET, weights=None, trainable="blok_16")
    assert "matches no layer" in text and "block_16" in text
    with pytest.raises(SpecError) as err:      # too small for MobileNetV2: Keras's ValueError, at the node
        build_model(backbone_spec(tmp_path / "spec.yaml", shape=(16, 16, 3), **MOBILENET, weights=None))
    assert "spec.yaml:7:7" in str(err.value) and "at least 32x32" in str(err.value)
    assert "shape (None, 16, 16, 3)" in str(err.value)


# --- from a .keras file or a run directory; cut_at; safe_mode ------------------------------------

def small_model(lambda_layer=False) -> keras.Model:
    x = keras.Input((8, 8, 3), name="pixels")
    y = keras.layers.Conv2D(4, 3, name="conv")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    if lambda_layer:
        y = keras.layers.Lambda(lambda t: t * 2.0, name="double")(y)
    y = keras.layers.Flatten(name="flat")(y)
    y = keras.layers.Dense(5, name="features")(y)
    return keras.Model(x, y, name="small")


def test_from_a_keras_file_and_a_run_directory(tmp_path):
    base = small_model()
    base.save(tmp_path / "base.keras")
    (tmp_path / "run" / "20240101-000000").mkdir(parents=True)
    base.save(tmp_path / "run" / "20240101-000000" / "model.keras")
    data = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    for source in ("base.keras", "run/20240101-000000"):
        model = build(tmp_path, shape=(8, 8, 3), **{"from": source})
        backbone = model.get_layer("backbone")
        assert backbone.name == "backbone"
        np.testing.assert_allclose(run(backbone, data), run(base, data), rtol=1e-5)
        assert size(model.trainable_weights) == 5 * 3 + 3          # frozen by default: only the head
    model = build(tmp_path, shape=(8, 8, 3), trainable="features", **{"from": "base.keras"})
    assert size(model.trainable_weights) == (6 * 6 * 4 * 5 + 5) + (5 * 3 + 3)
    text = error(tmp_path, shape=(8, 8, 3), **{"from": "run"})        # the parent of the runs
    assert "no model.keras" in text and "20240101-000000" in text and "run/latest` takes the newest" in text
    # `latest`: the newest finished run (by its time-stamped name); a run still going has no model.keras
    newer = keras.Sequential([keras.Input((8, 8, 3), name="pixels"), keras.layers.Flatten(name="flat")])
    (tmp_path / "run" / "20240102-000000").mkdir()
    newer.save(tmp_path / "run" / "20240102-000000" / "model.keras")
    (tmp_path / "run" / "20240103-000000" / "checkpoints").mkdir(parents=True)
    model = build(tmp_path, shape=(8, 8, 3), head=False, **{"from": "run/latest"})
    assert model.output.shape == (None, 8 * 8 * 3)                # the 2024-01-02 run's Flatten
    (tmp_path / "empty").mkdir()
    text = error(tmp_path, shape=(8, 8, 3), **{"from": "empty/latest"})
    assert f"`latest` is the newest run in {tmp_path / 'empty'}, which holds no finished run" in text
    assert "(at model.layers[0].Backbone.from)" in text and "hint: train the model this Backbone reuses" in text
    text = error(tmp_path, shape=(8, 8, 3), **{"from": "nowhere/latest"})
    assert f"{tmp_path / 'nowhere'}, which does not exist" in text
    assert "does not exist" in error(tmp_path, shape=(8, 8, 3), **{"from": "nothing.keras"})


def test_cut_at(tmp_path):
    base = small_model()
    base.save(tmp_path / "base.keras")
    model = build(tmp_path, shape=(8, 8, 3), head=False, cut_at="bn", **{"from": "base.keras"})
    assert model.output.shape == base.get_layer("bn").output.shape == (None, 6, 6, 4)
    model = build(tmp_path, shape=(8, 8, 3), head=False, cut_at="bn", pooling="avg", **{"from": "base.keras"})
    assert model.output.shape == (None, 4)
    x = keras.Input((8, 8, 3), name="image")                   # a kspec run's model: the backbone is nested
    keras.Model(x, keras.layers.Dense(2, name="label")(base(x))).save(tmp_path / "nested.keras")
    model = build(tmp_path, shape=(8, 8, 3), head=False, cut_at="small", **{"from": "nested.keras"})
    assert model.output.shape == (None, 5)
    text = error(tmp_path, shape=(8, 8, 3), cut_at="flaten", **{"from": "base.keras"})
    assert "cut_at names no layer" in text and "did you mean 'flat'" in text
    assert "(at model.layers[0].Backbone.cut_at)" in text
    model = build(tmp_path, **MOBILENET, weights=None, cut_at="block_13_expand_relu", head=False)
    cut = reference_mobilenet().get_layer("block_13_expand_relu").output.shape      # (None, 2, 2, 192)
    assert model.output.shape == (None, cut[-1])                # pooled after the cut


def test_lambda_model_needs_trust_from_the_command_line(tmp_path):
    from compiler import trust

    base = small_model(lambda_layer=True)
    base.save(tmp_path / "lambda.keras")
    text = error(tmp_path, shape=(8, 8, 3), **{"from": "lambda.keras"})
    assert "a Lambda layer 'double'" in text and f"--trust {tmp_path / 'lambda.keras'}" in text
    assert "safe_mode: false" not in text                      # never a spec line (issue 13)
    trust.trust_files([tmp_path / "lambda.keras"])
    try:
        model = build(tmp_path, shape=(8, 8, 3), **{"from": "lambda.keras"})
    finally:
        trust.clear()
    data = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(run(model.get_layer("backbone"), data),
                               run(base, data), rtol=1e-5)


def test_a_shared_backbone_is_one_layer(tmp_path):
    small_model().save(tmp_path / "base.keras")
    spec_file = str(tmp_path / "spec.yaml")
    model = build_model(ModelSpec(
        (InputSpec("a", (8, 8, 3)), InputSpec("b", (8, 8, 3))),
        (NodeSpec("backbone", "Backbone", {"from": "base.keras", "trainable": True}, ("a",), Loc(spec_file, 7, 7)),
         NodeSpec("backbone_b", "Backbone", {"from": "base.keras", "trainable": True}, ("b",), Loc(spec_file, 9, 7),
                  shares="backbone"),
         NodeSpec("sum", "Add", {}, ("backbone", "backbone_b"))), ("sum",)))
    assert [layer.name for layer in model.layers] == ["a", "b", "backbone", "sum"]
    assert size(model.trainable_weights) == size(small_model().trainable_weights)


# --- frozen layers stay frozen during fit ------------------------------------------------------------

def test_frozen_weights_and_batch_norm_statistics_do_not_change_in_fit(tmp_path):
    pattern = "block_16|Conv_1"
    model = build(tmp_path, **MOBILENET, weights=None, trainable=pattern)
    backbone = model.get_layer("backbone")
    before = {layer.name: [np.array(w) for w in layer.weights] for layer in backbone.layers if layer.weights}
    head_before = np.array(model.get_layer("out").kernel)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(images(16), rng.integers(0, 3, 16), batch_size=8, epochs=1, verbose=0)
    frozen_bn = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        after = [np.array(w) for w in layer.weights]
        same = all(np.array_equal(a, b) for a, b in zip(before[layer.name], after))
        if re.search(pattern, layer.name):
            assert not same, layer.name                 # unfrozen: kernels (and BN statistics) move
        else:
            assert same, layer.name                     # frozen: kernels, gamma/beta, moving mean/variance
            frozen_bn += isinstance(layer, keras.layers.BatchNormalization)
    assert frozen_bn > 40
    bn = backbone.get_layer("Conv_1_bn")                 # an unfrozen BN trains: its statistics move
    assert not np.array_equal(before["Conv_1_bn"][2], np.array(bn.moving_mean))
    assert not np.array_equal(head_before, np.array(model.get_layer("out").kernel))


def test_trainable_false_keeps_every_backbone_weight_in_fit(tmp_path):
    model = build(tmp_path, **MOBILENET, weights=None, trainable=False)
    backbone = model.get_layer("backbone")
    before = backbone.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(images(8), rng.integers(0, 3, 8), batch_size=8, epochs=1, verbose=0)
    for a, b in zip(before, backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


# --- preprocess ----------------------------------------------------------------------------------------

def test_preprocess_is_the_applications_own_and_saves(tmp_path):
    model = build(tmp_path, **MOBILENET, weights=None, preprocess=True, head=False)
    backbone = model.get_layer("backbone")
    assert isinstance(backbone.get_layer("preprocess"), AppPreprocess)
    inner = next(layer for layer in backbone.layers if isinstance(layer, keras.Model))
    x = images(2)
    by_hand = run(inner, keras.applications.mobilenet_v2.preprocess_input(x.copy()))
    np.testing.assert_allclose(run(model, x), by_hand, rtol=1e-5, atol=1e-6)
    assert not any(type(layer).__name__ == "Lambda" for layer in backbone.layers)
    model.save(tmp_path / "pre.keras")
    loaded = keras.saving.load_model(tmp_path / "pre.keras")      # safe mode: no Lambda inside
    np.testing.assert_allclose(run(loaded, x), by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("application, module", [("MobileNetV2", "mobilenet_v2"),   # mode "tf"
                                                 ("DenseNet121", "densenet"),        # mode "torch"
                                                 ("ResNet50", "resnet50"),           # mode "caffe"
                                                 ("EfficientNetB0", "efficientnet")])  # inside the model
def test_app_preprocess_matches_preprocess_input(application, module):
    x = images(2)
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    inputs = keras.Input(SHAPE)
    symbolic = keras.Model(inputs, AppPreprocess(application=application)(inputs))
    np.testing.assert_allclose(run(symbolic, x), expected, rtol=1e-5, atol=1e-4)
    layer = AppPreprocess.from_config(AppPreprocess(application=application).get_config())
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="did you mean 'MobileNetV2'"):
        AppPreprocess(application="MobileNetv2")


# --- the real front half and the CLI ------------------------------------------------------------------

SPEC = """\
    kspec: 1
    name: transfer
    model:
      inputs:
        image: {shape: [32, 32, 3]}
      layers:
        - Backbone: {application: MobileNetV2, alpha: 0.35, weights: null, pooling: avg,
                     trainable: false, preprocess: true}
          name: backbone
        - Dense: {units: 3, activation: softmax}
          name: label
      outputs: [label]
"""


def test_yaml_spec_builds_and_kspec_build_runs(tmp_path, kspec):
    from compiler.spec.validate import load_spec

    path = tmp_path / "transfer.yaml"
    path.write_text(textwrap.dedent(SPEC))
    spec = load_spec(path)
    model = build_model(spec.model, spec.name)
    assert size(model.trainable_weights) == HEAD
    assert model.get_layer("backbone").get_layer("preprocess").application == "MobileNetV2"
    result = kspec("build", path, "-o", tmp_path / "out.keras")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.keras").is_file()
    loaded = keras.saving.load_model(tmp_path / "out.keras")
    assert size(loaded.trainable_weights) == HEAD


def test_paths_are_relative_to_where_they_are_written(tmp_path, monkeypatch):
    """`from` and a weights file: relative to the spec (or block file) that names them, and to the
    working directory when given with --set, like data paths."""
    from compiler.spec.validate import load_spec

    (tmp_path / "specs").mkdir()
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "trunk.yaml").write_text(
        "blocks:\n  trunk:\n    layers:\n      - Backbone: {from: ../models/trunk.keras, cut_at: flat}\n")
    path = tmp_path / "specs" / "s.yaml"
    path.write_text("kspec: 1\nmodel:\n  inputs: {x: {shape: [8, 8, 3]}}\n"
                    "  blocks: {include: [../blocks/trunk.yaml]}\n"
                    "  layers:\n    - Backbone: {from: ../runs/a/latest}\n    - trunk: {}\n"
                    "    - Backbone: {application: MobileNetV2, weights: w.h5}\n      inputs: [x]\n"
                    "    - Backbone: {application: MobileNetV2, weights: imagenet}\n      inputs: [x]\n")
    args = [n.args for n in load_spec(path).model.nodes if n.layer == "Backbone"]
    assert args[0]["from"] == str(tmp_path / "runs" / "a" / "latest")
    assert args[1]["from"] == str(tmp_path / "models" / "trunk.keras")
    assert args[2]["weights"] == str(tmp_path / "specs" / "w.h5") and args[3]["weights"] == "imagenet"
    monkeypatch.chdir(tmp_path)
    node = load_spec(path, ["model.layers[0].Backbone.from=elsewhere/run"]).model.nodes[0]
    assert node.args["from"] == str(tmp_path / "elsewhere" / "run")
