"""The generated JSON Schemas: fresh, valid draft-07, right about real specs, usable without Keras.

Specs are validated with `compiler.schemagen.spec_validator()`, which loads the
files into a `referencing.Registry` keyed by their file URIs (jsonschema's
documented way; `RefResolver` is deprecated), so the relative `$ref`s resolve
exactly as they do for an editor reading `../schemas/spec.schema.json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from compiler import schemagen

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
FILES = sorted(SCHEMAS.glob("**/*.schema.json"))


@pytest.fixture(scope="module")
def generated():
    files, _stats = schemagen.generate()
    return files


@pytest.fixture(scope="module")
def validator():
    return schemagen.spec_validator(SCHEMAS)


def _all_errors(errors):
    """Errors and, recursively, the errors under each anyOf/oneOf branch."""
    for error in errors:
        yield error
        yield from _all_errors(error.context or ())


def _paths(validator, spec):
    return [list(e.absolute_path) for e in _all_errors(validator.iter_errors(spec))]


def _spec(*layers, **top):
    spec = {"kspec": 1, "model": {"inputs": {"x": {"shape": [8, 8, 1]}}, "layers": list(layers)}}
    spec.update(top)
    return spec


# ---------------------------------------------------------------- freshness

def test_checked_in_schemas_are_fresh(generated, tmp_path):
    schemagen.write(generated, tmp_path)
    fresh = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.glob("**/*.schema.json")}
    checked_in = {p.relative_to(SCHEMAS).as_posix(): p.read_text() for p in FILES}
    stale = sorted(rel for rel in fresh.keys() | checked_in.keys() if fresh.get(rel) != checked_in.get(rel))
    assert not stale, f"schemas/ is stale ({', '.join(stale)}): run `make schemas` and commit the result"


def test_check_names_the_stale_files(generated, tmp_path, capsys):
    schemagen.write(generated, tmp_path)
    assert schemagen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "components" / "losses.schema.json").write_text("{}\n")
    (tmp_path / "components" / "old.schema.json").write_text("{}\n")
    assert schemagen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "components/losses.schema.json" in err and "components/old.schema.json" in err
    assert "make schemas" in err and "layers.schema.json" not in err


def test_generation_is_deterministic(generated):
    again, _ = schemagen.generate()
    assert {k: schemagen.dump(v) for k, v in again.items()} == {k: schemagen.dump(v) for k, v in generated.items()}


def test_every_component_kind_has_a_file():
    names = {p.name for p in (SCHEMAS / "components").glob("*.schema.json")}
    assert names == {f"{kind}.schema.json" for kind in schemagen.registry.KINDS}


# ---------------------------------------------------------------- well-formed

@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_definition_is_valid_draft7(path):
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "$id" not in schema, "an $id would break relative $refs in editors"
    assert schema["x-keras-version"]
    Draft7Validator.check_schema(schema)
    for name, definition in schema["definitions"].items():
        Draft7Validator.check_schema(definition)


@pytest.mark.parametrize("path", sorted((SCHEMAS / "components").glob("*.schema.json")), ids=lambda p: p.name)
def test_every_default_satisfies_its_own_argument_schema(path):
    """A wrong entry in the type table shows up as a Keras default the schema rejects."""
    registry = schemagen.schema_registry(SCHEMAS)
    uri = path.resolve().as_uri()
    schema = json.loads(path.read_text())
    bad = []
    for name, definition in schema["definitions"].items():
        for arg, arg_schema in definition.get("properties", {}).items():
            if "default" in arg_schema:
                check = Draft7Validator({"$ref": f"{uri}#/definitions/{name}/properties/{arg}"}, registry=registry)
                if not check.is_valid(arg_schema["default"]):
                    bad.append(f"{name}.{arg}={arg_schema['default']!r}")
    assert not bad


def test_value_forms_and_classes():
    layers = json.loads((SCHEMAS / "components" / "layers.schema.json").read_text())["definitions"]
    assert layers["Dense"]["required"] == ["units"]
    assert layers["Dense"]["additionalProperties"] is False
    assert {"trainable", "dtype", "autocast"} <= set(layers["Dense"]["properties"])
    assert "causal" in layers["Conv1D"]["properties"]["padding"]["anyOf"][0]["enum"]
    assert "causal" not in layers["Conv2D"]["properties"]["padding"]["anyOf"][0]["enum"]
    init = json.loads((SCHEMAS / "components" / "initializers.schema.json").read_text())["definitions"]
    names, mapping = init["initializer"]["anyOf"]
    assert {"he_normal", "GlorotUniform"} <= set(names["enum"])
    assert mapping["properties"]["RandomNormal"] == {"$ref": "#/definitions/RandomNormal"}
    opt = json.loads((SCHEMAS / "components" / "optimizers.schema.json").read_text())["definitions"]
    base = {"learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
            "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps"}
    for name in ("Adam", "SGD", "RMSprop", "AdamW"):
        assert base <= set(opt[name]["properties"]), name
    metrics = json.loads((SCHEMAS / "components" / "metrics.schema.json").read_text())["definitions"]
    assert {"accuracy", "MeanIoU", "AUC"} <= set(metrics["metric"]["anyOf"][0]["enum"])
    assert "MeanIoU" in metrics["metric"]["not"]["enum"], "a metric that needs arguments is not valid bare"
    assert "AUC" not in metrics["metric"]["not"]["enum"]


# ---------------------------------------------------------------- specs

BRIEF_EXAMPLE = """
kspec: 1
name: digits-cnn
extends: ../specs/recipes/adam.yaml
seed: 0
data:
  source: {sklearn: digits}
  reshape: [8, 8, 1]
  split: {validation: 0.1, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    pixels: {shape: [8, 8, 1]}
  blocks:
    conv_bn:
      params: {filters: 32, kernel: 3}
      layers:
        - Conv2D: {filters: $filters, kernel_size: $kernel, padding: same, use_bias: false}
        - BatchNormalization: {}
        - Activation: {activation: relu}
  layers:
    - conv_bn: {filters: 32}
    - repeat: 2
      layers:
        - conv_bn: {filters: 64}
    - MaxPooling2D: {}
    - Flatten: {}
    - Dropout: {rate: 0.5}
    - Dense: {units: 10, activation: softmax}
      name: digit
  outputs: [digit]
train:
  optimizer: {Adam: {learning_rate: 0.001, clipnorm: 5.0}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 32
  epochs: 20
  callbacks:
    - EarlyStopping: {monitor: val_loss, patience: 5, restore_best_weights: true}
    - ReduceLROnPlateau: {factor: 0.5, patience: 2}
"""


def test_minimal_spec_is_valid(validator):
    assert _paths(validator, _spec({"Flatten": {}}, {"Dense": {"units": 10}})) == []


def test_the_briefs_example_is_valid(validator):
    assert _paths(validator, yaml.safe_load(BRIEF_EXAMPLE)) == []


def test_richer_spec_is_valid(validator):
    spec = _spec(
        {"Conv1D": {"filters": 8, "kernel_size": [3], "padding": "causal",
                    "kernel_initializer": {"RandomNormal": {"stddev": 0.02}},
                    "kernel_regularizer": {"L2": {"l2": 1.0e-4}}, "bias_constraint": "max_norm"}},
        {"repeat": {"times": 3, "as": "i"}, "layers": [{"Dense": {"units": "${64 * 2 ** i}"}}]},
        {"Bidirectional": {"layer": {"LSTM": {"units": 16, "return_sequences": True}}}, "name": "rnn"},
        {"MultiHeadAttention": {"num_heads": 2, "key_dim": 8}, "inputs": ["rnn", "rnn"],
         "call": {"use_causal_mask": True}},
        {"share": "rnn"},
        {"Backbone": {"application": "MobileNetV2", "weights": "imagenet", "include_top": False,
                      "trainable": "block_16.*", "pooling": "avg"}},
        {"my_block": None},
        train={"optimizer": {"SGD": {"learning_rate": {"ExponentialDecay": {
                   "initial_learning_rate": 0.1, "decay_steps": 100, "decay_rate": 0.5}}, "momentum": 0.9}},
               "loss": {"a": "mse", "b": {"BinaryCrossentropy": {"from_logits": True}}},
               "metrics": {"a": ["mae"], "b": [{"AUC": {}}]},
               "callbacks": ["TerminateOnNaN", {"EarlyStopping": {"patience": 3}}],
               "phases": [{"epochs": 2, "trainable": False}, {"epochs": 5, "trainable": "block_.*",
                                                              "learning_rate": 1.0e-5}],
               "class_weight": "balanced", "mixed_precision": None, "jit_compile": "auto"},
        data={"source": {"synthetic": "parity", "bits": 8}, "preprocess": [{"rescale": {"scale": 0.5}}],
              "augment": [{"RandomFlip": {"mode": "horizontal"}}, {"RandomRotation": {"factor": 0.1}}]})
    assert _paths(validator, spec) == []


def test_extending_spec_may_leave_out_model(validator):
    assert _paths(validator, {"kspec": 1, "extends": "base.yaml", "train": {"epochs": 3}}) == []
    assert _paths(validator, {"kspec": 1, "train": {"epochs": 3}}) == [[]]


LAYERS = ["model", "layers", 0]


@pytest.mark.parametrize("layer, path, words", [
    ({"Conv2D": {"filtrs": 3, "kernel_size": 3}}, ["Conv2D"], "'filtrs' was unexpected"),
    ({"Conv2D": {"filtrs": 3, "kernel_size": 3}}, ["Conv2D"], "'filters' is a required property"),
    ({"Dense": {"units": "ten"}}, ["Dense", "units"], "'ten'"),
    ({"Dense": {"units": 0}}, ["Dense", "units", ], "is not valid"),
    ({"Conv2D": {"filters": 3, "kernel_size": [3, "a"]}}, ["Conv2D", "kernel_size", 1], "'a'"),
    ({"Dropout": {"rate": 1.5}}, ["Dropout", "rate"], "1.5"),
    ({"Dense": {"units": 1, "name": "out"}}, ["Dense", "name"], ""),
    ({"Conv2D": {"filters": 3, "kernel_size": 3, "padding": "causal"}}, ["Conv2D", "padding"], "causal"),
    ({"Dense": {"units": 1, "kernel_initializer": "he_normall"}}, ["Dense", "kernel_initializer"], ""),
    ({"Dense": {"units": 1, "activation": "relux"}}, ["Dense", "activation"], ""),
    ({"repeat": 2}, [], "'layers' is a dependency"),
])
def test_mistakes_fail_at_the_right_path(validator, layer, path, words):
    errors = list(_all_errors(validator.iter_errors(_spec(layer))))
    assert errors
    at = [e for e in errors if list(e.absolute_path) == LAYERS + path]
    assert at, f"no error at {LAYERS + path}: {[list(e.absolute_path) for e in errors]}"
    assert any(words in e.message for e in at), [e.message for e in at]


@pytest.mark.parametrize("layer", [
    {"Dense": {"units": "$u"}},
    {"Dense": {"units": "${2 * width}", "activation": "$act", "use_bias": "$bias"}},
    {"Conv2D": {"filters": 4, "kernel_size": ["$k", "$k"], "padding": "$pad"}},
    {"Dropout": {"rate": "$p"}},
])
def test_parameter_references_pass_in_the_raw_form(validator, layer):
    assert _paths(validator, _spec(layer)) == []


@pytest.mark.parametrize("spec, path", [
    ({"model": {"inputs": {"x": {"shape": [3]}}, "layers": []}}, []),                      # no kspec
    (_spec(kspec=2), ["kspec"]),
    (_spec(trian={}), []),
    (_spec(train={"optimizer": "adamm"}), ["train", "optimizer"]),
    (_spec(train={"optimizer": {"Adam": {"learning_rate": "fast"}}}), ["train", "optimizer", "Adam", "learning_rate"]),
    (_spec(train={"metrics": ["MeanIoU"]}), ["train", "metrics", 0]),
    (_spec(train={"epochs": 0}), ["train", "epochs"]),
    (_spec(data={"source": {"sklearn": "mnist"}}), ["data", "source"]),
    (_spec(data={"source": {"sklearn": "iris"}, "split": {"validation": 1.0}}), ["data", "split", "validation"]),
    ({"kspec": 1, "model": {"inputs": {"x": {"shape": [0]}}, "layers": []}}, ["model", "inputs", "x", "shape", 0]),
])
def test_spec_mistakes_fail_at_the_right_path(validator, spec, path):
    assert path in _paths(validator, spec)


# ---------------------------------------------------------------- no Keras needed

def test_validating_imports_neither_keras_nor_tensorflow():
    code = textwrap.dedent(f"""
        import sys
        from compiler.schemagen import spec_validator
        v = spec_validator()
        spec = {{"kspec": 1, "model": {{"inputs": {{"x": {{"shape": [4]}}}},
                 "layers": [{{"Dense": {{"units": 3, "kernel_initializer": "he_normal"}}}}]}},
                 "train": {{"optimizer": "adam", "loss": "mse"}}}}
        assert not list(v.iter_errors(spec))
        assert list(v.iter_errors({{"kspec": 1, "model": {{"inputs": {{}}, "layers": [{{"Dense": {{}}}}]}}}}))
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
