"""The spec language: loading, resolving (extends, --set, blocks, repeats, expressions), validating."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.spec.load import load_text
from compiler.spec.resolve import resolve
from compiler.spec.tree import plain
from compiler.spec.validate import load_spec

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- loading ------------------------------------------------------------------------------

def test_yaml_12_scalars():
    tree = load_text("a: 1e-4\nb: on\nc: yes\nd: true\ne: 0x10\nf: .inf\ng: '1'\nh: ~\n")
    assert tree == {"a": 1e-4, "b": "on", "c": "yes", "d": True, "e": 16, "f": float("inf"), "g": "1", "h": None}


def test_positions_of_keys_and_values():
    tree = load_text("model:\n  layers:\n    - Dense: {units: 3}\n", "f.yaml")
    layer = tree["model"]["layers"][0]
    assert str(tree["model"].key_loc("layers")) == "f.yaml:2:3"
    assert str(layer["Dense"].value_loc("units")) == "f.yaml:3:22"


@pytest.mark.parametrize("text, message", [
    ("a: !!python/object/apply:os.system [ls]\n", "is not allowed"),
    ("a: !!binary aGVsbG8=\n", "is not allowed"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    ("a: 1\n---\nb: 2\n", "one YAML document"),
    ("a: !!int x\n", "not a valid !!int"),
])
def test_unsafe_or_ambiguous_yaml_is_refused(text, message):
    with pytest.raises(SpecError, match=message):
        load_text(text)


def test_alias_bomb_and_deep_nesting_fail_fast():
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(SpecError, match="alias bomb"):
        load_text(bomb)
    with pytest.raises(SpecError) as deep:                 # PyYAML or kspec's own bound: either is fine
        load_text("[" * 10000 + "]" * 10000)
    assert len(deep.value.diagnostics) == 1 and deep.value.diagnostics[0].loc.line == 1


# -- resolving ----------------------------------------------------------------------------

BASE = """\
    kspec: 1
    train:
      optimizer: {Adam: {learning_rate: 0.001}}
      loss: mse
      epochs: 20
      callbacks:
        - EarlyStopping: {patience: 5}
"""


def test_extends_deep_merges_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    spec = write(tmp_path, "spec.yaml", """\
        kspec: 1
        extends: base.yaml
        model:
          inputs: {x: {shape: [4]}}
          layers: [{Dense: {units: 1}}]
        train:
          optimizer: {Adam: {learning_rate: 0.01}}
          callbacks: []
    """)
    tree = plain(resolve(spec))
    assert tree["train"]["optimizer"] == {"Adam": {"learning_rate": 0.01}}
    assert tree["train"]["epochs"] == 20 and tree["train"]["callbacks"] == []
    assert list(tree)[:2] == ["kspec", "name"] and tree["name"] == "spec"


def test_overrides_are_yaml_values(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    spec = write(tmp_path, "spec.yaml", "kspec: 1\nextends: base.yaml\nmodel:\n  inputs: {x: {shape: [4]}}\n"
                                        "  layers: [{Dense: {units: 1}}]\n")
    tree = plain(resolve(spec, ["train.epochs=5", "train.optimizer.Adam.learning_rate=1e-2",
                                "model.layers[0].Dense.units=3", "data.reshape=[2, 2]"]))
    assert tree["train"]["epochs"] == 5
    assert tree["train"]["optimizer"]["Adam"]["learning_rate"] == 0.01
    assert tree["model"]["layers"][0]["Dense"]["units"] == 3
    assert tree["data"]["reshape"] == [2, 2]


def test_override_of_a_numbered_key_replaces_it(tmp_path):
    # YAML keys are read as text ('1'); `--set train.class_weight.1=5` once added an int key 1 beside
    # it, and the spec.yaml a run saves then had `'1': 2.0` and `1: 5`, a duplicate key kspec rejects.
    spec = write(tmp_path, "spec.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n"
                                        "  layers: [{Dense: {units: 2, activation: softmax}}]\n"
                                        "train:\n  loss: sparse_categorical_crossentropy\n  class_weight: {0: 1.0, 1: 2.0}\n")
    tree = plain(resolve(spec, ["train.class_weight.1=5", "train.class_weight[0]=3"]))
    assert tree["train"]["class_weight"] == {"0": 3, "1": 5}
    assert load_spec(spec, ["train.class_weight.1=5"]).train.class_weight == {0: 1.0, 1: 5.0}


def test_bad_override_is_a_spec_error(tmp_path):
    spec = write(tmp_path, "spec.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  layers: [{Dense: {units: 1}}]\n")
    with pytest.raises(SpecError, match="PATH=VALUE"):
        resolve(spec, ["train.epochs"])
    with pytest.raises(SpecError, match="not a mapping or list"):
        resolve(spec, ["kspec.x=1"])


RESNET = """\
    kspec: 1
    model:
      inputs: {img: {shape: [8, 8, 16]}}
      blocks:
        residual:
          params: [filters]
          layers:
            - Conv2D: {filters: $filters, kernel_size: 3, padding: same}
              name: conv_a
            - Conv2D: {filters: $filters, kernel_size: 3, padding: same}
              name: conv_b
            - Add: {}
              inputs: [$input, conv_b]
      layers:
        - repeat: {times: 3, as: i}
          layers:
            - residual: {filters: 16}
        - GlobalAveragePooling2D: {}
        - Dense: {units: "${2 * 5}"}
          name: out
"""


def test_blocks_repeat_and_local_names(tmp_path):
    spec = load_spec(write(tmp_path, "resnet.yaml", RESNET))
    names = [n.name for n in spec.model.nodes]
    assert names[:3] == ["residual_1.conv_a", "residual_1.conv_b", "residual_1"]
    assert names[6:9] == ["residual_3.conv_a", "residual_3.conv_b", "residual_3"]
    add2 = spec.model.node("residual_2")
    assert add2.inputs == ("residual_1", "residual_2.conv_b")   # $input is the use's input
    assert spec.model.node("residual_2.conv_a").inputs == ("residual_1",)
    assert spec.model.node("out").args == {"units": 10}
    assert spec.model.outputs == ("out",)
    # a block node remembers the block's line and the use site
    conv = spec.model.node("residual_3.conv_a")
    assert conv.loc.line == 8 and conv.via[0].line == 17


def test_repeat_with_index_expression(tmp_path):
    spec = load_spec(write(tmp_path, "vgg.yaml", """\
        kspec: 1
        model:
          inputs: {x: {shape: [32, 32, 3]}}
          layers:
            - repeat: {times: 3, as: i}
              layers:
                - Conv2D: {filters: "${32 * 2 ** i}", kernel_size: 3, padding: same}
                - MaxPooling2D: {}
            - Flatten: {}
    """))
    filters = [n.args["filters"] for n in spec.model.nodes if n.layer == "Conv2D"]
    assert filters == [32, 64, 128]
    assert [n.name for n in spec.model.nodes][:2] == ["conv2d", "max_pooling2d"]


def test_include_blocks_from_another_file(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path, "lib/blocks.yaml", """\
        blocks:
          mlp:
            params: {width: 8}
            layers:
              - Dense: {units: $width, activation: relu}
    """)
    spec = load_spec(write(tmp_path, "s.yaml", """\
        kspec: 1
        model:
          inputs: {x: {shape: [4]}}
          blocks: {include: lib/blocks.yaml}
          layers:
            - mlp: {width: 16}
            - mlp: {}
    """))
    assert [n.args["units"] for n in spec.model.nodes] == [16, 8]


def test_shared_layers_and_multiple_inputs(tmp_path):
    spec = load_spec(write(tmp_path, "siamese.yaml", """\
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
    """))
    shared = spec.model.node("encoder_right")
    assert shared.shares == "encoder" and shared.layer == "Dense" and shared.args == {"units": 8}


def test_train_section_typed(tmp_path):
    spec = load_spec(write(tmp_path, "mt.yaml", """\
        kspec: 1
        model:
          inputs: {x: {shape: [4]}}
          layers:
            - Dense: {units: 8}
              name: trunk
            - Dense: {units: 3, activation: softmax}
              name: cls
              inputs: [trunk]
            - Dense: {units: 1}
              name: reg
              inputs: [trunk]
          outputs: [cls, reg]
        train:
          optimizer: {SGD: {learning_rate: 0.1, momentum: 0.9, clipnorm: 5}}
          loss: {cls: sparse_categorical_crossentropy, reg: mse}
          loss_weights: {cls: 1.0, reg: 0.5}
          metrics: {cls: [accuracy], reg: [mae]}
          callbacks: [{ReduceLROnPlateau: {factor: 0.5, patience: 2}}]
    """))
    train = spec.train
    assert train.optimizer.name == "SGD" and train.optimizer.args["momentum"] == 0.9
    assert {k: v.name for k, v in train.losses.items()} == {"cls": "sparse_categorical_crossentropy", "reg": "mse"}
    assert [m.name for m in train.metrics["reg"]] == ["mae"]
    assert train.callbacks[0].name == "ReduceLROnPlateau"


def test_every_shipped_spec_validates():
    specs = sorted((ROOT / "examples").rglob("*.yaml")) + sorted((ROOT / "specs").rglob("*.yaml"))
    assert specs
    for path in specs:
        text = path.read_text()
        if "kspec:" not in text or "model:" not in text:
            continue   # a recipe or a block library: checked through the specs that use them
        if "\nplugins:" in text:
            continue   # needs its --plugin module: examples/plugins/ is checked with it in test_model_language.py
        load_spec(path)


def test_validate_imports_no_tensorflow(tmp_path):
    spec = write(tmp_path, "resnet.yaml", RESNET)
    probe = ("import sys\nfrom compiler.cli import main\nassert main(['validate', %r]) == 0\n"
             "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]\n"
             "assert not heavy, heavy[:5]\n" % str(spec))
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_resolve_command_prints_expanded_spec(tmp_path, capsys):
    from compiler.cli import main

    spec = write(tmp_path, "resnet.yaml", RESNET)
    assert main(["resolve", str(spec), "--set", "model.layers[0].repeat.times=2"]) == 0
    out = capsys.readouterr().out
    assert "residual_2.conv_b" in out and "residual_3" not in out and "$filters" not in out and "blocks" not in out
