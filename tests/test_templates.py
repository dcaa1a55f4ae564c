"""The template library in specs/ (every file validates) and `kspec templates` / `kspec init`."""

import textwrap
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.errors import SpecError
from compiler.spec.load import load_file
from compiler.spec.tree import plain
from compiler.spec.validate import load_spec
from compiler.templates import SPECS_DIR, TemplateError, find, init, list_templates

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "blocks": {"conv_bn_relu", "residual", "vgg", "transformer", "lstm_stack", "maxout", "mlp"},
    "heads": {"classifier", "regressor", "multilabel"},
    "backbones": {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet50"},
    "recipes": {"sgd_halving", "adam", "finetune", "adamw_cosine"},
    "starters": {"mlp_classifier", "cnn_classifier", "regressor", "transfer"},
}

# One wrapper model per block library: (input shape, layers using every block of the file once,
# the output shapes a build gives). Each block library must be covered here (checked below).
LIBRARIES = {
    "blocks/conv_bn_relu": ([8, 8, 3], """
        - conv_bn_relu: {filters: 8, strides: 2}
    """, [(None, 4, 4, 8)]),
    "blocks/residual": ([8, 8, 3], """
        - Conv2D: {filters: 8, kernel_size: 3, padding: same}
          name: stem
        - residual: {filters: 8}
        - residual_projection: {filters: 16, strides: 2}
          name: down
    """, [(None, 4, 4, 16)]),
    "blocks/vgg": ([8, 8, 3], """
        - vgg: {filters: 8, convs: 3}
    """, [(None, 4, 4, 8)]),
    "blocks/transformer": ([10, 16], """
        - transformer_encoder: {d_model: 16, heads: 4, ff: 32, dropout: 0.1}
    """, [(None, 10, 16)]),
    "blocks/lstm_stack": ([10, 4], """
        - lstm_stack: {units: 8, layers: 3, dropout: 0.1}
    """, [(None, 8)]),
    "blocks/maxout": ([20], """
        - maxout: {units: 8, pieces: 3}
    """, [(None, 8)]),
    "blocks/mlp": ([20], """
        - dense_dropout: {units: 16, dropout: 0.1}
        - dense_bn: {units: 16, activation: tanh}
        - mlp: {units: 8, layers: 2, dropout: 0.2}
    """, [(None, 8)]),
    "heads/classifier": ([8, 8, 3], """
        - pooled_classifier: {classes: 3, dropout: 0.2}
          name: pooled
        - flat_classifier: {classes: 4}
          name: flat
          inputs: [x]
        - GlobalAveragePooling2D: {}
          inputs: [x]
        - classifier: {classes: 5}
          name: plain
    """, [(None, 3), (None, 4), (None, 5)]),
    "heads/regressor": ([4], """
        - regressor: {units: 2}
    """, [(None, 2)]),
    "heads/multilabel": ([4], """
        - multilabel: {labels: 5}
    """, [(None, 5)]),
    "backbones/mobilenet_v2": ([32, 32, 3], "- mobilenet_v2: {}\n", None),
    "backbones/mobilenet_v3_small": ([32, 32, 3], "- mobilenet_v3_small: {trainable: true}\n", None),
    "backbones/efficientnet_b0": ([32, 32, 3], "- efficientnet_b0: {weights: null}\n", None),
    "backbones/resnet50": ([32, 32, 3], "- resnet50: {}\n", None),
}
OUTPUTS = {"heads/classifier": "[pooled, flat, plain]"}   # use names stand for the blocks' last nodes


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def wrapper(tmp_path: Path, library: str) -> Path:
    """A spec in tmp_path including the library by its absolute path and using each block."""
    shape, layers, _ = LIBRARIES[library]
    body = textwrap.indent(textwrap.dedent(layers).strip("\n"), "    ")
    if "backbones/" in library:   # a backbone feeds a head, as in real use
        body += "\n    - Dense: {units: 2, activation: softmax}"
    text = (f"kspec: 1\nmodel:\n  inputs: {{x: {{shape: {shape}}}}}\n"
            f"  blocks: {{include: {SPECS_DIR / library}.yaml}}\n  layers:\n{body}\n")
    if library in OUTPUTS:
        text += f"  outputs: {OUTPUTS[library]}\n"
    return write(tmp_path / f"{library.replace('/', '_')}.yaml", text)


def block_names(path: Path) -> set[str]:
    return set(load_file(path)["blocks"])


# -- the library --------------------------------------------------------------------------

def test_every_template_is_listed_with_a_summary():
    templates = list_templates()
    assert {(t.kind, t.name) for t in templates} == {(k, n) for k, names in EXPECTED.items() for n in names}
    for t in templates:
        first = t.path.read_text().splitlines()[0]
        assert first.startswith("# "), t.path
        assert len(t.summary) > 20 and not t.summary.startswith(("#", "yaml-language-server")), t.path
        assert t.path == SPECS_DIR / t.kind / f"{t.name}.yaml"
    assert [t.kind for t in list_templates("recipes")] == ["recipes"] * 4


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_block_library_validates(tmp_path, library):
    path = SPECS_DIR / f"{library}.yaml"
    used = {line.strip()[2:].split(":")[0] for line in LIBRARIES[library][1].splitlines()
            if line.strip().startswith("- ")}
    assert block_names(path) <= used, f"the wrapper of {library} does not use every block"
    spec = load_spec(wrapper(tmp_path, library))
    assert spec.model.nodes


def test_residual_block_node_names(tmp_path):
    spec = load_spec(wrapper(tmp_path, "blocks/residual"))
    names = [n.name for n in spec.model.nodes]
    assert names == ["stem",
                     "residual_1.conv_a", "residual_1.bn_a", "residual_1.relu_a", "residual_1.conv_b",
                     "residual_1.bn_b", "residual_1.add", "residual_1",
                     "down.conv_a", "down.bn_a", "down.relu_a", "down.conv_b", "down.bn_b",
                     "down.shortcut", "down.shortcut_bn", "down.add", "down"]
    assert spec.model.node("residual_1.add").inputs == ("stem", "residual_1.bn_b")   # the identity skip
    assert spec.model.node("down.shortcut").inputs == ("residual_1",)           # $input of `down`
    assert spec.model.node("down.shortcut").args["strides"] == 2
    assert spec.model.node("down.add").inputs == ("down.shortcut_bn", "down.bn_b")
    assert spec.model.outputs == ("down",)


def test_transformer_and_lstm_blocks(tmp_path):
    spec = load_spec(wrapper(tmp_path, "blocks/transformer"))
    attention = spec.model.node("transformer_encoder_1.attention")
    assert attention.inputs == ("x", "x") and attention.args["key_dim"] == 16 and attention.args["num_heads"] == 4
    assert spec.model.node("transformer_encoder_1.attention_add").inputs == ("x", "transformer_encoder_1.attention_dropout")
    spec = load_spec(wrapper(tmp_path, "blocks/lstm_stack"))
    lstms = [n for n in spec.model.nodes if n.layer == "LSTM"]
    assert [n.args["return_sequences"] for n in lstms] == [True, True, False]
    assert all(n.args["unit_forget_bias"] is True and n.args["dropout"] == 0.1 for n in lstms)
    single = write(tmp_path / "one.yaml", f"""\
        kspec: 1
        model:
          inputs: {{x: {{shape: [10, 4]}}}}
          blocks: {{include: {SPECS_DIR / 'blocks' / 'lstm_stack.yaml'}}}
          layers:
            - lstm_stack: {{units: 8, layers: 1, return_sequences: true}}
    """)
    nodes = load_spec(single).model.nodes
    assert [(n.name, n.args["return_sequences"]) for n in nodes] == [("lstm_stack_1", True)]


def test_maxout_and_backbone_arguments(tmp_path):
    spec = load_spec(wrapper(tmp_path, "blocks/maxout"))
    assert [(n.layer, n.args) for n in spec.model.nodes] == [("Dense", {"units": 24}), ("Maxout", {"num_units": 8})]
    spec = load_spec(wrapper(tmp_path, "backbones/mobilenet_v2"))
    assert spec.model.nodes[0].layer == "Backbone"
    assert spec.model.nodes[0].args == {"application": "MobileNetV2", "weights": "imagenet", "include_top": False,
                                        "pooling": "avg", "trainable": False, "preprocess": True}
    spec = load_spec(wrapper(tmp_path, "backbones/efficientnet_b0"))
    assert spec.model.nodes[0].args["weights"] is None and spec.model.nodes[0].args["application"] == "EfficientNetB0"


RECIPE_USER = """\
    kspec: 1
    extends: {recipe}
    model:
      inputs: {{x: {{shape: [4]}}}}
      layers: [{{Dense: {{units: 1}}}}]
    train:
      loss: mse
"""


@pytest.mark.parametrize("recipe", sorted(EXPECTED["recipes"]))
def test_recipe_validates(tmp_path, recipe):
    path = SPECS_DIR / "recipes" / f"{recipe}.yaml"
    assert set(load_file(path)) == {"kspec", "train"}
    spec = load_spec(write(tmp_path / "user.yaml", RECIPE_USER.format(recipe=path)))
    train = spec.train
    if recipe == "sgd_halving":
        assert train.optimizer.name == "SGD"
        assert train.optimizer.args == {"learning_rate": 0.1, "momentum": 0.9, "clipnorm": 5.0}
        assert [c.name for c in train.callbacks] == ["ReduceLROnPlateau", "EarlyStopping"]
        assert train.callbacks[0].args["factor"] == 0.5
    elif recipe == "adam":
        assert train.optimizer.name == "Adam" and [c.name for c in train.callbacks] == ["EarlyStopping"]
    elif recipe == "finetune":
        assert [(p.name, p.epochs, p.trainable, p.learning_rate) for p in train.phases] == [
            ("head", 5, False, 1e-3), ("finetune", 10, True, 1e-5)]
    elif recipe == "adamw_cosine":
        assert train.optimizer.name == "AdamW"
        assert list(train.optimizer.args["learning_rate"]) == ["CosineDecay"]


@pytest.mark.parametrize("starter", sorted(EXPECTED["starters"]))
def test_starter_validates(starter):
    spec = load_spec(SPECS_DIR / "starters" / f"{starter}.yaml")
    assert spec.train is not None and spec.data is not None
    assert spec.train.losses


def test_starters_use_the_library():
    tree = plain(load_file(SPECS_DIR / "starters" / "cnn_classifier.yaml"))
    assert "../blocks/conv_bn_relu.yaml" in tree["model"]["blocks"]["include"]
    tree = plain(load_file(SPECS_DIR / "starters" / "transfer.yaml"))
    assert tree["extends"] == "../recipes/finetune.yaml"
    spec = load_spec(SPECS_DIR / "starters" / "transfer.yaml")
    assert spec.model.nodes[0].args["application"] == "MobileNetV2" and len(spec.train.phases) == 2


# -- find ---------------------------------------------------------------------------------

def test_find_by_kind_and_name():
    assert find("starters/transfer").path == SPECS_DIR / "starters" / "transfer.yaml"
    assert find("residual").id == "blocks/residual"
    assert find("heads/regressor").kind == "heads"
    assert find("regressor", kind="starters").kind == "starters"
    assert find("specs/recipes/adam.yaml").id == "recipes/adam"
    with pytest.raises(TemplateError, match="several templates: heads/regressor, starters/regressor"):
        find("regressor")
    with pytest.raises(TemplateError, match="did you mean 'residual'") as info:
        find("residul")
    assert info.value.exit_code == 2 and info.value.diagnostics[0].loc is None
    with pytest.raises(TemplateError, match="not one of the starters"):
        find("residual", kind="starters")


# -- the commands -------------------------------------------------------------------------

def test_templates_command_lists_every_file(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == sum(len(v) for v in EXPECTED.values())
    for t in list_templates():
        line = next(line for line in out if line.split()[0] == t.id)
        assert line.endswith(t.summary)
    assert main(["templates", "--kind", "backbones"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "backbones/efficientnet_b0", "backbones/mobilenet_v2", "backbones/mobilenet_v3_small", "backbones/resnet50"]


def test_init_writes_a_spec_that_validates_elsewhere(tmp_path, monkeypatch, capsys):
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["init", "my-model", "--from", "cnn_classifier"]) == 0
    out = capsys.readouterr().out
    assert "my-model.yaml" in out and "kspec train my-model.yaml" in out
    written = work / "my-model.yaml"
    text = written.read_text()
    assert text.splitlines()[1].startswith("# Starter:")   # comments kept
    spec = load_spec(written)
    assert spec.name == "my-model"
    assert spec.train.optimizer.name == "Adam"                       # the recipe was found
    assert any(n.layer == "Conv2D" for n in spec.model.nodes)        # the block library was found
    # a second init does not overwrite
    written.write_text(text + "# edited\n")
    assert main(["init", "my-model", "--from", "cnn_classifier"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert written.read_text().endswith("# edited\n")


@pytest.mark.parametrize("starter", sorted(EXPECTED["starters"]))
def test_init_every_starter_into_a_new_folder(tmp_path, starter):
    dest = init("exp", tmp_path / "a" / "b" / "exp.yaml", starter)
    assert dest == tmp_path / "a" / "b" / "exp.yaml"
    spec = load_spec(dest)
    original = load_spec(SPECS_DIR / "starters" / f"{starter}.yaml")
    assert spec.name == "exp"
    assert {**plain(spec.tree), "name": None} == {**plain(original.tree), "name": None}   # same spec, resolved
    if starter == "transfer":   # `photos/` is a placeholder relative to the user's spec: kept as written
        assert plain(load_file(dest))["data"]["source"]["images"] == "photos/"
    # -o naming a folder writes NAME.yaml in it
    assert init("exp", tmp_path / "a", starter) == tmp_path / "a" / "exp.yaml"


def test_init_rewrites_paths_of_a_custom_library(tmp_path):
    root = tmp_path / "lib"
    write(root / "recipes" / "r.yaml", "# a recipe\nkspec: 1\ntrain: {loss: mse, epochs: 3}\n")
    write(root / "blocks" / "b.yaml", "# blocks\nblocks:\n  one:\n    layers: [{Dense: {units: 1}}]\n")
    write(root / "starters" / "data.csv", "a,b,y\n1,2,3\n4,5,6\n")
    write(root / "starters" / "s.yaml", """\
        # yaml-language-server: $schema=../../../schemas/none.json
        # a starter without a name
        kspec: 1
        extends: ['../recipes/r.yaml']
        data:
          source: {csv: "data.csv", target: y}
        model:
          inputs: {x: {shape: [2]}}
          blocks: {include: ../blocks/b.yaml}
          layers:
            - one: {}
    """)
    dest = init("custom: name", tmp_path / "out" / "s.yaml", "s", root=root)
    text = dest.read_text()
    assert 'name: "custom: name"\n' in text
    assert "extends: ['../lib/recipes/r.yaml']" in text
    assert 'csv: "../lib/starters/data.csv"' in text
    assert "include: ../lib/blocks/b.yaml}" in text
    assert text.startswith("# yaml-language-server: $schema=../../../schemas/none.json")   # no such file: kept
    spec = load_spec(dest)
    assert spec.name == "custom: name" and spec.train.epochs == 3
    assert spec.data.params["path"] == str((root / "starters" / "data.csv").resolve())


def test_init_errors(tmp_path, capsys):
    assert main(["init", "x", "--from", "mlp_clasifier", "-o", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "unknown template 'mlp_clasifier'" in err and "did you mean 'mlp_classifier'" in err
    assert main(["init", "x", "--from", "heads/classifier", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "not one of the starters" in capsys.readouterr().err
    assert main(["init", "../x", "--from", "regressor", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "cannot be a spec name" in capsys.readouterr().err
    assert main(["templates", "--kind", "blocks"]) == 0
    assert not (tmp_path / "x.yaml").exists()
    with pytest.raises(SpecError, match="unknown template kind"):
        list_templates("block")


# -- building (needs the build stage and Keras) -------------------------------------------

@pytest.mark.slow
def test_block_libraries_build(tmp_path):
    from compiler.builder import build_model

    for library, (_, _, shapes) in sorted(LIBRARIES.items()):
        if shapes is None:   # backbones: pretrained applications, built by test_build
            continue
        spec = load_spec(wrapper(tmp_path, library))
        model = build_model(spec.model, spec.name)
        assert [tuple(o.shape) for o in model.outputs] == shapes, library
        assert model.count_params() > 0
