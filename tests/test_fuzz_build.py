"""Property-based fuzzing of the whole compile path: load -> resolve -> validate -> build -> compile.

tests/test_fuzz.py fuzzes the front half; this file carries the mutated specs that survive it
into Keras. Seeds are small valid specs (an MLP with a residual block, a CNN, a two-input
two-output model, a sequence model with attention, a siamese model with a shared layer) and
every block template of specs/blocks/, inlined into a wrapper spec that uses it. Mutations
are structural and aimed at the builder: a layer class swapped for one of another rank, an
argument or input shape replaced by a small number, a node deleted or duplicated, a
reference changed. Whatever the mutation, the outcome is a compiled model or the project's
SpecError in which every diagnostic has a location: never another exception.

Numbers stay small (no mutation asks Keras for gigabytes of weights). `make test` runs 40
cases; KSPEC_FUZZ_EXAMPLES sets the count for a long run (`make fuzz`).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.errors import SpecError
from compiler.spec.validate import load_spec
from test_fuzz import get, paths   # the same tree walkers as the front-half fuzzer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("KSPEC_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="KSPEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck))

TRAIN = {"optimizer": {"Adam": {"learning_rate": 0.001, "clipnorm": 5.0}},
         "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"], "epochs": 1}

INLINE = ["""\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  blocks:
    res:
      params: {units: 8}
      layers:
        - Dense: {units: $units, activation: relu, kernel_initializer: {RandomNormal: {stddev: 0.02}}}
          name: hidden
        - Add: {}
          inputs: [$input, hidden]
  layers:
    - Dense: {units: 8, kernel_regularizer: {L2: {l2: 1.0e-4}}}
      name: stem
    - repeat: {times: 2, as: i}
      layers:
        - res: {units: 8}
    - Dense: {units: 3, activation: softmax}
      name: species
  outputs: [species]
train:
  optimizer: {Adam: {learning_rate: 0.001, clipnorm: 5.0}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  epochs: 1
""", """\
kspec: 1
model:
  inputs: {img: {shape: [8, 8, 1]}}
  layers:
    - Conv2D: {filters: 4, kernel_size: 3, padding: same, use_bias: false}
    - BatchNormalization: {}
    - Activation: {activation: relu}
    - MaxPooling2D: {pool_size: 2}
    - Flatten: {}
    - Dropout: {rate: 0.5}
    - Dense: {units: 10, activation: softmax}
      name: digit
  outputs: [digit]
train:
  optimizer: {SGD: {learning_rate: 0.1, momentum: 0.9}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  epochs: 1
""", """\
kspec: 1
model:
  inputs:
    a: {shape: [4]}
    b: {shape: [3]}
  layers:
    - Dense: {units: 6, activation: tanh}
      name: da
      inputs: [a]
    - Dense: {units: 6, activation: tanh}
      name: db
      inputs: [b]
    - Concatenate: {}
      name: trunk
      inputs: [da, db]
    - Dense: {units: 2, activation: softmax}
      name: kind
      inputs: [trunk]
    - Dense: {units: 1}
      name: size
      inputs: [trunk]
  outputs: [kind, size]
train:
  optimizer: rmsprop
  loss: {kind: sparse_categorical_crossentropy, size: mse}
  loss_weights: {kind: 1.0, size: 0.5}
  metrics: {kind: [accuracy], size: [mae]}
  epochs: 1
""", """\
kspec: 1
model:
  inputs: {tokens: {shape: [6], dtype: int32}}
  layers:
    - Embedding: {input_dim: 50, output_dim: 8}
      name: embed
    - LSTM: {units: 8, return_sequences: true, unit_forget_bias: true}
      name: lstm
    - MultiHeadAttention: {num_heads: 2, key_dim: 4}
      name: attention
      inputs: [lstm, lstm]
    - GlobalAveragePooling1D: {}
    - Dense: {units: 2, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  epochs: 1
""", """\
kspec: 1
model:
  inputs: {left: {shape: [4]}, right: {shape: [4]}}
  layers:
    - Dense: {units: 8}
      name: encoder
      inputs: [left]
    - share: encoder
      name: encoder_right
      inputs: [right]
    - Subtract: {}
      inputs: [encoder, encoder_right]
    - Dense: {units: 1, activation: sigmoid}
      name: same
  outputs: [same]
train:
  optimizer: adam
  loss: binary_crossentropy
  epochs: 1
"""]

# specs/blocks/<file>.yaml -> an input shape it suits and the uses of its blocks (small parameters).
BLOCK_USES = {
    "conv_bn_relu": ([8, 8, 3], [{"conv_bn_relu": {"filters": 4}}, {"conv_bn_relu": {"filters": 4, "strides": 2}}],
                     "GlobalAveragePooling2D"),
    "lstm_stack": ([5, 3], [{"lstm_stack": {"units": 4, "layers": 2}}], None),
    "maxout": ([6], [{"maxout": {"units": 4, "pieces": 2}}, {"Dropout": {"rate": 0.5}}], None),
    "mlp": ([4], [{"dense_dropout": {"units": 8, "dropout": 0.1}}, {"dense_bn": {"units": 8}},
                  {"mlp": {"units": 8}}], None),
    "residual": ([8, 8, 4], [{"residual": {"filters": 4}}, {"residual_projection": {"filters": 8}}],
                 "GlobalAveragePooling2D"),
    "transformer": ([5, 8], [{"transformer_encoder": {"d_model": 8, "heads": 2, "ff": 16}}],
                    "GlobalAveragePooling1D"),
    "vgg": ([8, 8, 3], [{"vgg": {"filters": 4, "convs": 2}}], "Flatten"),
}


def wrapper(stem: str) -> str:
    """A spec that inlines the blocks of specs/blocks/<stem>.yaml and uses each of them."""
    shape, uses, flatten = BLOCK_USES[stem]
    blocks = yaml.safe_load((ROOT / "specs" / "blocks" / f"{stem}.yaml").read_text())["blocks"]
    layers = copy.deepcopy(uses) + ([{flatten: {}}] if flatten else [])
    layers.append({"Dense": {"units": 3, "activation": "softmax"}, "name": "out"})
    tree = {"kspec": 1, "name": f"block-{stem}",
            "model": {"inputs": {"x": {"shape": shape}}, "blocks": blocks, "layers": layers, "outputs": ["out"]},
            "train": TRAIN}
    return yaml.safe_dump(tree, sort_keys=False)


def seeds() -> list[str]:
    stems = sorted(p.stem for p in (ROOT / "specs" / "blocks").glob("*.yaml"))
    return INLINE + [wrapper(s) for s in stems if s in BLOCK_USES]


SEEDS = seeds()

# Layer classes a node may be swapped to, with arguments that pass validation (so the swap reaches Keras).
LAYER_CLASSES = {
    "Dense": {"units": 4}, "Conv1D": {"filters": 4, "kernel_size": 3}, "Conv2D": {"filters": 4, "kernel_size": 3},
    "Conv3D": {"filters": 2, "kernel_size": 2}, "LSTM": {"units": 4}, "GRU": {"units": 4, "return_sequences": True},
    "SimpleRNN": {"units": 3}, "Flatten": {}, "Reshape": {"target_shape": [-1, 2]}, "Add": {}, "Concatenate": {},
    "Multiply": {}, "Dot": {"axes": 1}, "MultiHeadAttention": {"num_heads": 2, "key_dim": 4}, "Attention": {},
    "BatchNormalization": {}, "LayerNormalization": {}, "Embedding": {"input_dim": 10, "output_dim": 4},
    "MaxPooling1D": {}, "MaxPooling2D": {}, "AveragePooling2D": {"pool_size": 3}, "GlobalAveragePooling1D": {},
    "GlobalAveragePooling2D": {}, "GlobalMaxPooling3D": {}, "Dropout": {"rate": 0.5},
    "Activation": {"activation": "relu"},
    "Maxout": {"num_units": 2}, "PReLU": {}, "Permute": {"dims": [2, 1]}, "RepeatVector": {"n": 3},
    "UpSampling2D": {}, "ZeroPadding1D": {}, "Cropping2D": {"cropping": 1}, "Normalization": {},
    "Conv2DTranspose": {"filters": 2, "kernel_size": 3}, "DepthwiseConv2D": {"kernel_size": 3},
}
SMALL = st.sampled_from([0, 1, -1, 2, 3, 5, 8, 17, 64, 0.5, -0.5, 1.5, True, None, "same", "valid", "relu",
                         "he_normal", "$input", "${2 * 3}", "nope",
                         # hostile: infinities, NaN, sizes no machine holds, beyond int64, over-long text
                         math.inf, -math.inf, math.nan, 10**12, 10**30, "x" * 70_000, "1e-3 "])
SHAPES = st.lists(st.one_of(st.integers(0, 9), st.none()), max_size=4)
VALUES = st.recursive(SMALL, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.sampled_from(["units", "filters", "rate",
                                                                                      "kernel_size", "shape",
                                                                                      "x", "y"]), inner,
                                                                     max_size=2)),
                      max_leaves=4)


def layer_nodes(tree):
    """Paths of the one-class-key layer mappings (inside model.layers, repeats and blocks)."""
    return [p for p in paths(tree) if p and isinstance(p[-1], int) and isinstance(get(tree, p), dict)
            and any(isinstance(k, str) and k[:1].isupper() for k in get(tree, p))]


def node_names(tree) -> list[str]:
    names = [v for p in paths(tree) if p and p[-1] == "name" and isinstance(v := get(tree, p), str)]
    inputs = (tree.get("model") or {}).get("inputs") if isinstance(tree, dict) else None
    return names + (list(inputs) if isinstance(inputs, dict) else []) + ["$input"]


@st.composite
def mutated(draw):
    tree = yaml.safe_load(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = [p for p in paths(tree) if p]
        op = draw(st.sampled_from(["swap_class", "swap_class", "number", "number", "shape", "reference",
                                   "replace", "delete", "duplicate"]))
        if op == "swap_class" and layer_nodes(tree):
            node = get(tree, draw(st.sampled_from(layer_nodes(tree))))
            key = next(k for k in node if isinstance(k, str) and k[:1].isupper())
            args = node.pop(key)
            new = draw(st.sampled_from(sorted(LAYER_CLASSES)))
            node[new] = args if draw(st.integers(0, 3)) == 0 else copy.deepcopy(LAYER_CLASSES[new])
            continue
        numbers = [p for p in all_paths
                   if isinstance(get(tree, p), (int, float)) and not isinstance(get(tree, p), bool)]
        if op == "number" and numbers:
            path = draw(st.sampled_from(numbers))
            get(tree, path[:-1])[path[-1]] = draw(SMALL)
            continue
        shapes = [p for p in all_paths if p[-1] == "shape"]
        if op == "shape" and shapes:
            path = draw(st.sampled_from(shapes))
            get(tree, path[:-1])[path[-1]] = draw(SHAPES)
            continue
        refs = [p for p in all_paths if p[-1] in ("inputs", "outputs", "share")]
        if op == "reference" and refs:
            path = draw(st.sampled_from(refs))
            value = draw(st.sampled_from(node_names(tree) + ["missing"]))
            get(tree, path[:-1])[path[-1]] = value if path[-1] == "share" else [value] * draw(st.integers(1, 2))
            continue
        path = draw(st.sampled_from(all_paths))
        parent, key = get(tree, path[:-1]), path[-1]
        if op == "delete" or (op == "duplicate" and not isinstance(parent, list)):
            del parent[key]
        elif op == "duplicate":
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key] = draw(VALUES)
    return yaml.safe_dump(tree, sort_keys=False)


def compile_path(path: Path) -> str:
    """Run the whole compile path; return "ok", "spec error" or raise whatever else escaped."""
    import keras

    from compiler.builder import build_model, compile_model

    try:
        spec = load_spec(path)
        model = build_model(spec.model, spec.name)
        if spec.train is not None:
            compile_model(model, spec.train, spec.model)
        return "ok"
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.loc is not None and d.loc.file, d.format()
            assert d.message
        return "spec error"
    finally:
        keras.backend.clear_session()


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_seeds_compile(tmp_path, index):
    from compiler.builder import build_model, compile_model

    path = tmp_path / "spec.yaml"
    path.write_text(SEEDS[index])
    spec = load_spec(path)
    compile_model(build_model(spec.model, spec.name), spec.train, spec.model)


@FUZZ
@given(text=mutated())
def test_mutations_compile_or_end_in_a_located_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz_build") / "spec.yaml"
    path.write_text(text)
    compile_path(path)


# -- what the fuzzers found, kept as plain cases ---------------------------------------------------

FOUND = [
    # a `$input` or `$$` escape left where a number belongs passed the schema and crashed int()/keras.Input
    ("train: {loss: mse, epochs: $input}", "expected a whole number, got '$input' (at train.epochs)"),
    ("train: {loss: mse, batch_size: $$3}", "expected a whole number, got '$3' (at train.batch_size)"),
    ("train: {loss: mse, phases: [{epochs: $input}]}", "got '$input' (at train.phases[0].epochs)"),
    ("model: {inputs: {x: {shape: [$input]}}, layers: [{Dense: {units: 2}}]}",
     "got '$input' (at model.inputs.x.shape[0])"),
    ("model: {inputs: {x: {shape: [4]}}, layers: [{Dense: {units: $input}}]}",
     "expected a whole number, got '$input' (at model.layers[0].Dense.units)"),
    # an empty output list reached the builder, whose error had no location
    ("model: {inputs: {x: {shape: [4]}}, layers: [{Dense: {units: 2}, name: out}], outputs: []}",
     "`outputs` is empty"),
    # Keras's words for these ("A merge layer should be called on a list of inputs", "Cannot convert
    # '((None, 8),)' to a shape") did not say what to change
    ("model: {inputs: {x: {shape: [4]}}, layers: [{Add: {}}]}",
     "Add 'add' combines several inputs, but it is given one: 'x' (shape (None, 4))"),
    ("model: {inputs: {x: {shape: [4]}}, layers: [{Dense: {units: 2}, name: a}, "
     "{BatchNormalization: {}, inputs: [x, a]}]}",
     "BatchNormalization 'batch_normalization' takes one input, but `inputs` lists 2"),
]


@pytest.mark.parametrize("text, expected", FOUND, ids=[f"found{i}" for i in range(len(FOUND))])
def test_found_cases_end_in_a_located_error(tmp_path, text, expected):
    tree = {"kspec": 1, "model": {"inputs": {"x": {"shape": [4]}}, "layers": [{"Dense": {"units": 2}}]}}
    tree.update(yaml.safe_load(text))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    with pytest.raises(SpecError) as info:
        spec = load_spec(path)
        from compiler.builder import build_model

        build_model(spec.model, spec.name)
    text = str(info.value)
    assert expected in text, text
    assert all(d.loc is not None and d.loc.file == str(path) and d.loc.line for d in info.value.diagnostics), text
