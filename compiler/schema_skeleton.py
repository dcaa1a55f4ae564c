"""The hand-written structure of `schemas/spec.schema.json` (the raw spec, as the user writes it).

Everything about Keras components (layer classes and their arguments,
optimizers, losses, ...) is `$ref`ed into the generated files under
`schemas/components/`; this module describes only kspec's own keys. It imports
no Keras: `build()` is given the layer names by `compiler.schemagen`.

The schema checks the raw file, before `extends` is merged and blocks are
expanded: a spec that extends another may leave out `model`, and any typed
field may hold a parameter reference (`$filters`, `${64 * 2 ** i}`).
"""

from __future__ import annotations

from typing import Any

from .data.images import ON_BAD_FILE
from .data.stream import CACHE_MODES
from .tune.space import schema as search_schema

DRAFT7 = "http://json-schema.org/draft-07/schema#"
# A string starting with `$`. Written as allOf so that the pattern's error carries no "type": then
# jsonschema's best_match prefers the real type's error ("1.5 is greater than ... 1") to this branch's.
EXPRESSION = {"description": "A parameter reference (`$filters`) or a safe arithmetic expression on "
                             "parameters and repeat indices (`${64 * 2 ** i}`), replaced when blocks expand.",
              "allOf": [{"type": "string"}, {"pattern": "^\\$"}]}

_EXPR = {"$ref": "#/definitions/expression"}
_LAYERS = "components/layers.schema.json#/definitions/"
_OPTIMIZER = {"$ref": "components/optimizers.schema.json#/definitions/optimizer"}
_LOSS = {"$ref": "components/losses.schema.json#/definitions/loss"}
_METRIC = {"$ref": "components/metrics.schema.json#/definitions/metric"}
_CALLBACK = {"$ref": "components/callbacks.schema.json#/definitions/callback"}
_APPLICATION = {"$ref": "components/applications.schema.json#/definitions/application"}

# Keras preprocessing layers that `data.augment` applies to training batches only.
AUGMENT_LAYERS = ("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom", "RandomContrast",
                  "RandomBrightness", "RandomCrop", "GaussianNoise", "GaussianDropout")


def _obj(properties: dict, required: tuple = (), description: str = "", **extra) -> dict:
    schema: dict[str, Any] = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = properties
    schema["additionalProperties"] = False
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def _num(description: str = "", **limits) -> dict:
    return {"description": description, "anyOf": [{"type": "number", **limits}, _EXPR]}


def _int(description: str = "", minimum: int | None = 1) -> dict:
    typ: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        typ["minimum"] = minimum
    return {"description": description, "anyOf": [typ, _EXPR]}


def _bool(description: str) -> dict:
    return {"description": description, "type": "boolean"}


def _one_key(key: str, value: dict, description: str, **properties) -> dict:
    return _obj({key: value, **properties}, required=(key,), description=description)


_STR = {"type": "string"}
_STRS = {"anyOf": [_STR, {"type": "array", "items": _STR}]}
_FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
_TASK = {"description": "classification or regression (default: detected from the target), "
                        "or output name -> task.",
         "anyOf": [{"enum": ["classification", "regression"]},
                   {"type": "object", "additionalProperties": {"enum": ["classification", "regression"]}}]}


def _data(layer_names: list[str]) -> dict:
    # the closed lists come from the modules that own them (tests/test_single_source.py)
    from .data.preprocess import INPUT_STEPS, TARGET_STEPS
    from .data.sources import SKLEARN
    from .data.synthetic import GENERATORS

    step_args = {"rescale": _obj({"scale": _num("Multiply by this."), "offset": _num("Then add this.")},
                                 required=("scale",))}
    bare_steps = [step for step in INPUT_STEPS + TARGET_STEPS if step not in step_args]
    source = {"description": "Where the data comes from (one of the forms below).", "oneOf": [
        _one_key("sklearn", {"enum": list(SKLEARN)},
                 "A data set scikit-learn ships: `{sklearn: digits}`."),
        _one_key("csv", {"type": "string", "description": "Path of the CSV file (relative to the spec)."},
                 "A CSV file with a header row: `{csv: data.csv, target: y}`.",
                 target={"description": "The target column(s).", **_STRS},
                 features={"description": "The feature columns (default: all but the target), or model input "
                                          "-> columns for several inputs (streamed files).",
                           "anyOf": [{"type": "array", "items": _STR},
                                     {"type": "object", "additionalProperties": {"type": "array", "items": _STR}}]},
                 delimiter={"type": "string", "description": "Field separator (default `,`)."},
                 header=_bool("The first line names the columns (default true)."),
                 columns={"description": "Column names of a file without a header row (`header: false`).",
                          "type": "array", "items": _STR, "minItems": 1, "uniqueItems": True},
                 stream={"description": "Stream the file through tf.data instead of reading it into memory "
                                        "(`auto`: files over 256 MB).",
                         "anyOf": [{"type": "boolean"}, {"const": "auto"}]},
                 task=_TASK),
        _one_key("npz", {"type": "string", "description": "Path of the .npz file (relative to the spec)."},
                 "A NumPy .npz archive with arrays `x` and `y` (or other keys).",
                 x={"description": "The input array key, or input name -> key for several inputs.",
                    "anyOf": [_STR, {"type": "object", "additionalProperties": _STR}]},
                 y={"description": "The target array key, or output name -> key for several outputs.",
                    "anyOf": [_STR, {"type": "object", "additionalProperties": _STR}]},
                 stream={"description": "Memory-map the input arrays (np.savez, uncompressed) instead of reading "
                                        "them into memory (`auto`: archives over 256 MB).",
                         "anyOf": [{"type": "boolean"}, {"const": "auto"}]},
                 task=_TASK),
        _one_key("images", {"type": "string", "description": "A folder with one sub-folder per class, or a "
                                                             "manifest CSV with a `path` and a label column."},
                 "Image files, streamed from disk, one sub-folder per class: `{images: photos/, size: [160, 160]}`.",
                 target={"type": "string", "description": "The label column of a manifest CSV (default `label`)."},
                 delimiter={"type": "string", "description": "Field separator of a manifest CSV (default `,`)."},
                 size={"description": "[height, width] the images are resized to.", "type": "array",
                       "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
                 color_mode={"enum": ["rgb", "grayscale", "rgba"]},
                 masks={"type": "string", "description": "Segmentation: a folder of masks (8-bit grayscale PNG of "
                                                         "class indices), each named as its image in `images:` "
                                                         "(a folder of images; relative to the spec)."}),
        _one_key("tfrecord", {"type": "string", "description": "A TFRecord file or a glob of shards (relative to "
                                                               "the spec)."},
                 "tf.train.Example records, streamed: `{tfrecord: shards/*.tfrecord, features: {...}, x: F, y: F}`.",
                 features={"description": "The feature description: name -> {dtype: float32|int64|string, "
                                          "shape: [...]}.", "type": "object",
                           "additionalProperties": _obj({"dtype": {"enum": ["float32", "int64", "string"]},
                                                         "shape": {"type": "array",
                                                                   "items": {"type": "integer", "minimum": 1}}})},
                 x={"description": "The input feature, or input name -> feature.",
                    "anyOf": [_STR, {"type": "object", "additionalProperties": _STR}]},
                 y={"description": "The target feature, or output name -> feature.",
                    "anyOf": [_STR, {"type": "object", "additionalProperties": _STR}]},
                 task=_TASK),
        {"type": "object", "description": "A classic toy problem: `{synthetic: parity, bits: 8}`; "
                                          "other keys are the problem's parameters.",
         "properties": {"synthetic": {"enum": list(GENERATORS)}},
         "required": ["synthetic"]},
    ]}
    empty = {"type": ["object", "null"], "properties": {}, "additionalProperties": False}
    preprocess_item = {"anyOf": [
        {"enum": bare_steps},
        {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
         "properties": {**{step: empty for step in bare_steps}, **step_args}}]}
    augment_item = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                    "properties": {name: {"$ref": _LAYERS + name} for name in AUGMENT_LAYERS if name in layer_names}}
    return _obj({
        "source": source,
        "reshape": {"description": "Reshape each example (not the batch), e.g. [8, 8, 1]; -1 once to infer.",
                    "type": "array", "items": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": -1}]}},
        "split": _obj({"validation": {"description": "Fraction held out for validation.", **_FRACTION},
                       "test": {"description": "Fraction held out for the final test.", **_FRACTION},
                       "stratify": _bool("Keep class proportions in each split (default: for class targets)."),
                       "seed": {"type": "integer", "description": "Seed of the shuffle before splitting "
                                                                  "(default: the spec's `seed`)."}},
                      description="Fractions of the (seeded, shuffled) data held out."),
        "classes": {"description": "Keep only the examples of these classes (labels as the source gives "
                               "them), numbered 0..k-1 in this order: `[5, 6, 7, 8, 9]`.",
                    "type": "array", "minItems": 1, "uniqueItems": True,
                    "items": {"type": ["string", "integer", "boolean"]}},
        "cache": {"description": "Streamed sources: keep the decoded examples after the first epoch "
                                 "(`auto`: in memory when they fit comfortably), or `disk`: in kspec's cache "
                                 "folder (~/.cache/kspec/data, or `--cache-dir DIR`), reused by later runs of the "
                                 "same spec.",
                  "anyOf": [{"enum": list(CACHE_MODES)},
                            # Kept so that `kspec validate` can refuse it with a hint (spec/safety.py).
                            _obj({"disk": {"type": "string"}}, required=("disk",),
                                 description="Refused: a spec cannot choose where kspec writes outside its run "
                                             "directory; write `disk`.", deprecated=True)]},
        "on_bad_file": {"description": "An unreadable image file: stop with an error naming it, or leave it out "
                                       "(counted and listed in the run's data.json).", "enum": list(ON_BAD_FILE)},
        "preprocess": {"description": "Steps applied to the inputs, in order (statistics from the training "
                                      "split only): standardize, log1p, one_hot, `{rescale: {scale: ...}}`.",
                       "type": "array", "items": preprocess_item},
        "augment": {"description": "Keras augmentation layers applied to training batches: "
                                   "`- RandomFlip: {mode: horizontal}`.",
                    "type": "array", "items": augment_item},
    }, required=("source",), description="The data: its source, split and preparation.")


def _model() -> dict:
    from .spec.types import InputSpec, default

    dtypes = ["float32", "float16", "bfloat16", "float64", "int32", "int64", "uint8", "string", "bool"]
    input_def = _obj({"shape": {"description": "Shape of one example (no batch dimension); null: any length.",
                                "type": "array", "items": {"anyOf": [{"type": "integer", "minimum": 1},
                                                                     {"type": "null"}, _EXPR]}},
                      "dtype": {"enum": dtypes, "default": default(InputSpec, "dtype")}},
                     required=("shape",), description="A model input: `{shape: [20], dtype: int32}`.")
    block = _obj({"params": {"type": "object", "description": "Parameter name -> default value ($name in the body)."},
                  "layers": {"$ref": "#/definitions/layer_list"},
                  "description": {"type": "string"}},
                 required=("layers",), description="A reusable, parameterised sub-graph.")
    return _obj({
        "inputs": {"type": "object", "minProperties": 1, "additionalProperties": input_def,
                   "description": "Input name -> `{shape: [...], dtype: ...}`."},
        "blocks": {"type": "object", "description": "Block name -> definition; `include` loads blocks from files.",
                   "properties": {"include": {"description": "Block files to load (paths relative to the spec).",
                                              **_STRS}},
                   "additionalProperties": block},
        "layers": {"$ref": "#/definitions/layer_list"},
        "outputs": {"description": "The output node name(s) (default: the last node).", **_STRS},
    }, required=("inputs", "layers"), description="The model graph.")


def _train_default(name: str):
    """A default of the typed spec (one source of truth: compiler/spec/types.py)."""
    from .spec.types import TrainSpec, default

    return default(TrainSpec, name)


def _with_defaults(schema: dict) -> dict:
    """`default` of every train key whose typed field (spec/types.py TrainSpec) has a plain default:
    the schema states the defaults `validate` applies, from the same place."""
    from dataclasses import fields

    from .spec.types import TrainSpec, default

    properties = schema["properties"]
    for f in fields(TrainSpec):
        if f.name in properties:
            try:
                value = default(TrainSpec, f.name)
            except KeyError:
                continue
            if isinstance(value, (bool, int, float, str)):
                properties[f.name] = {**properties[f.name], "default": value}
    return schema


def _train() -> dict:
    from .distribute.strategy import MODES

    per_output = "; or output name -> {} for several outputs"
    phase = _obj({"name": _STR, "epochs": _int("Epochs of this phase."),
                  "trainable": {"description": "true/false for the whole model, or a regex of layer names to "
                                               "unfreeze.", "type": ["boolean", "string"]},
                  "optimizer": _OPTIMIZER, "learning_rate": _num("Learning rate for this phase.", minimum=0)},
                 required=("epochs",), description="A training phase: `{epochs: 5, trainable: false}`.")
    return _with_defaults(_obj({
        "optimizer": {"description": "`adam`, or `{Adam: {learning_rate: 0.001, clipnorm: 5.0}}`.",
                      "allOf": [_OPTIMIZER]},
        "loss": {"description": "A loss" + per_output.format("loss") + "; or a list, one per output in order.",
                 "anyOf": [_LOSS, {"type": "object", "additionalProperties": _LOSS},
                           {"type": "array", "items": _LOSS}]},
        "loss_weights": {"description": "Weights of the outputs' losses.",
                         "anyOf": [{"type": "object", "additionalProperties": {"type": "number"}},
                                   {"type": "array", "items": {"type": "number"}}]},
        "metrics": {"description": "Metrics" + per_output.format("metrics") + ".", "anyOf": [
            {"type": "array", "items": _METRIC},
            {"type": "object", "additionalProperties": {"anyOf": [_METRIC, {"type": "array", "items": _METRIC}]}}]},
        "batch_size": _int("Examples per batch."),
        "epochs": _int("Passes over the training data."),
        "callbacks": {"description": "Keras callbacks: `- EarlyStopping: {patience: 5}`.",
                      "type": "array", "items": _CALLBACK},
        "class_weight": {"description": "`balanced`, or class index -> weight.",
                         "anyOf": [{"const": "balanced"}, {"type": "object", "additionalProperties": {"type": "number"}}]},
        "phases": {"description": "Training phases in order (e.g. the head only, then fine-tuning).",
                   "type": "array", "items": phase},
        "keep": {"description": "Which weights model.keras keeps: the best by `monitor`, or the last.",
                 "enum": ["best", "last"]},
        "monitor": {"type": "string", "description": "The metric that picks the best epoch (default val_loss)."},
        "deterministic": _bool("Seed everything and use deterministic ops (slower)."),
        "mixed_precision": {"description": "Mixed precision: `auto` (default) is mixed_float16 on GPUs of compute "
                                           "capability 7.0+, mixed_bfloat16 on CPUs with AMX-BF16 or AVX512-BF16 "
                                           "for classifiers with Conv layers, and none (float32) elsewhere; the "
                                           "outputs stay float32.",
                            "enum": [None, "none", "mixed_float16", "mixed_bfloat16", "auto"]},
        "jit_compile": {"description": "XLA compilation: `auto` (default) lets Keras use it on a GPU when the "
                                       "model supports it; off on a CPU.",
                        "anyOf": [{"type": "boolean"}, {"const": "auto"}]},
        "distribute": {"description": "`auto` (default): MirroredStrategy over 2+ local GPUs, or "
                                      "MultiWorkerMirroredStrategy when TF_CONFIG names 2+ workers; `none`; "
                                      "`mirrored`; `multi_worker` (cluster from TF_CONFIG or --cluster). "
                                      "batch_size is the global batch, split across replicas.",
                       "enum": list(MODES)},
        "memory_growth": {"description": "Let TensorFlow take GPU memory as needed instead of all at start-up "
                                         "(`auto`, the default, is true).",
                          "anyOf": [{"type": "boolean"}, {"const": "auto"}]},
        "steps_per_execution": _int("Batches per compiled step."),
        "checkpoint": _obj({"every_seconds": _num(
            "Save a checkpoint at the end of an epoch when this many seconds passed since the last one "
            f"(default {_train_default('checkpoint_every_seconds'):g}; 0: every epoch); always at the end of "
            "a phase and on SIGTERM/SIGINT.", minimum=0, maximum=1e9)},
            description="When checkpoints/last.keras is written (see README, Checkpoints)."),
        "ensemble": _int("Train this many models and average their predictions."),
        "diagnostics": {"type": "object", "description": "Training diagnostics.",
                        "properties": {"update_ratio": _bool("Log |update| / |weights| per layer (about 1e-3 is healthy)."),
                                       "gradient_check": _bool("Check gradients numerically before training.")}},
        "verbose": {"enum": [0, 1, 2]},
    }, description="How to train: optimizer, loss, metrics, epochs, callbacks."))


def _layer_item(layer_names: list[str]) -> dict:
    properties: dict[str, Any] = {
        "name": {"type": "string", "description": "This node's name (default: generated)."},
        "inputs": {"description": "The nodes or model inputs this node takes (default: the previous node).",
                   **_STRS},
        "share": {"type": "string", "description": "Apply again the very layer (same weights) of this node."},
        "repeat": {"description": "Repeat `layers` this many times; `{times: 3, as: i}` exposes $i; "
                                  "`{for: [32, 64], as: filters}` once per item; `{for: {color: 3}, as: [feature, "
                                  "size]}` once per key and value.", "anyOf": [
            {"type": "integer", "minimum": 1}, _EXPR,
            _obj({"times": {"anyOf": [{"type": "integer", "minimum": 1}, _EXPR]}, "as": _STR},
                 required=("times",)),
            _obj({"for": {"anyOf": [{"type": ["array", "object"]}, _EXPR]},
                  "as": {"anyOf": [_STR, {"type": "array", "items": _STR, "minItems": 1, "maxItems": 2}]}},
                 required=("for", "as"))]},
        "layers": {"$ref": "#/definitions/layer_list"},
        "call": {"type": "object", "description": "Extra keyword arguments for calling the layer "
                                                  "(e.g. `use_causal_mask: true`)."},
    }
    properties.update({name: {"$ref": _LAYERS + name} for name in layer_names})
    properties["Backbone"] = {"$ref": "#/definitions/backbone"}
    return {"type": "object",
            "description": "A layer `- Dense: {units: 10}`, a block use `- conv_bn: {filters: 64}`, a shared "
                           "layer `- share: NODE`, or a repeat `- repeat: 2` with `layers:`; with optional "
                           "sibling keys `name` and `inputs`.",
            "properties": properties, "minProperties": 1,
            "additionalProperties": {"type": ["object", "null"],
                                     "description": "A block use: block name -> its parameters."},
            "dependencies": {"repeat": ["layers"]}}


def _backbone() -> dict:
    one_source = "a Backbone needs exactly one source: `application: NAME` or `from: FILE.keras | RUN_DIR`"
    schema = _obj({
        "application": _APPLICATION,
        "from": {"type": "string", "description": "A .keras file or the run directory of an earlier `kspec train` "
                                                  "(relative to the spec file); `runs/NAME/latest`: the newest "
                                                  "finished run of NAME."},
        "weights": {"description": "`imagenet` (default; Keras's download cache), null (random) or a local "
                                   "weights file (.h5 / .weights.h5, relative to the spec file).",
                    "type": ["string", "null"]},
        "include_top": _bool("Keep the classifier head (default false)."),
        "pooling": {"enum": [None, "avg", "max"],
                    "description": "Global pooling of the last feature map (after `cut_at` if given)."},
        "cut_at": {"type": "string", "description": "Use the model up to this layer's output."},
        "trainable": {"description": "false (freeze all; the default unless `weights: null`), true, or a regex "
                                     "(re.search) of layer names to unfreeze.", "type": ["boolean", "string"]},
        "preprocess": _bool("Apply the application's own input preprocessing (raw 0..255 pixels in)."),
        "alpha": _num("Width multiplier (MobileNet).", exclusiveMinimum=0),
        "safe_mode": _bool("Always on: a spec cannot turn Keras safe mode off; trust a file with `--trust PATH` "
                           "on the command line."),
    }, description="A pretrained network as a layer: `{application: MobileNetV2, weights: imagenet}`.")
    schema["allOf"] = [
        {"not": {"required": ["application", "from"], "description": one_source + ", not both"}},
        {"not": {"not": {"anyOf": [{"required": ["application"]}, {"required": ["from"]}]},
                 "description": one_source}},
    ]
    return schema


def build(version: str, layer_names: list[str]) -> dict:
    """The whole spec schema; `layer_names` are the registry's layer names."""
    top = _obj({
        "kspec": {"const": 1, "type": "integer", "description": "Format version: 1."},
        "name": {"type": "string", "description": "The spec's name (default: the file's stem)."},
        "description": {"type": "string"},
        "extends": {"description": "Spec file(s) this one deep-merges onto (this file wins).", **_STRS},
        "seed": {"type": "integer", "description": "Seed for shuffling, splitting and initialisation."},
        "data": _data(layer_names),
        "model": _model(),
        "train": _train(),
        "search": search_schema(),
        "plugins": {"type": "array", "description": "Python modules that register extra layers.",
                    "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*$"}},
    }, required=("kspec",), description="A kspec spec: a neural network, its data and its training.")
    # `model` is required unless it comes from the extended file(s).
    top["if"] = {"not": {"required": ["extends"]}}
    top["then"] = {"required": ["model"]}
    return {"$schema": DRAFT7, "title": "kspec spec", "x-keras-version": version, **top,
            "definitions": {
                "layer_list": {"type": "array", "items": {"$ref": "#/definitions/layer_item"},
                               "description": "Layers, blocks and repeats, applied in order."},
                "layer_item": _layer_item(layer_names),
                "backbone": _backbone(),
                "expression": EXPRESSION,
            }}
