"""Issue 18's spec language: repeat over lists and mappings, `share:` of a whole block use, block defaults that
use other parameters, the list form of `loss`, plugins' losses and metrics (declared in the spec, loaded only by
--plugin), in-model adaptation, and `kspec build` seeded and naming its diagram after `-o`."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from compiler.errors import SpecError
from compiler.spec.validate import load_spec

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "examples" / "plugins"


def write(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text("kspec: 1\nname: lang\n" + textwrap.dedent(body))
    return path


def errors_of(path: Path) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value.diagnostics


def layer_args(spec, cls: str) -> list:
    return [(n.name, dict(n.args)) for n in spec.model.nodes if n.layer == cls]


# -- repeat over lists and mappings ------------------------------------------------------------

def test_repeat_over_a_list(tmp_path):
    spec = load_spec(write(tmp_path, """\
        model:
          inputs: {x: {shape: [4]}}
          layers:
            - repeat: {for: [32, 64, 128], as: width}
              layers:
                - Dense: {units: $width}
                  name: hidden_${width}
        """))
    assert [(n, a["units"]) for n, a in layer_args(spec, "Dense")] == [
        ("hidden_32", 32), ("hidden_64", 64), ("hidden_128", 128)]
    assert [n.inputs for n in spec.model.nodes] == [("x",), ("hidden_32",), ("hidden_64",)]


def test_repeat_over_a_mapping_makes_one_input_block_per_feature(tmp_path):
    spec = load_spec(write(tmp_path, """\
        model:
          inputs: {color: {shape: [1], dtype: int32}, size: {shape: [1], dtype: int32}}
          blocks:
            embed:
              params: [vocabulary]
              layers:
                - Embedding: {input_dim: $vocabulary, output_dim: 2}
                - Flatten: {}
          layers:
            - repeat: {for: {color: 5, size: 3}, as: [feature, vocabulary]}
              layers:
                - embed: {vocabulary: $vocabulary}
                  name: ${feature}_vector
                  inputs: [$feature]
            - Concatenate: {}
              inputs: [color_vector, size_vector]
        """))
    assert [(n, a["input_dim"]) for n, a in layer_args(spec, "Embedding")] == [
        ("color_vector.embedding", 5), ("size_vector.embedding", 3)]
    embeddings = [n for n in spec.model.nodes if n.layer == "Embedding"]
    assert [n.inputs for n in embeddings] == [("color",), ("size",)]
    assert spec.model.nodes[-1].inputs == ("color_vector", "size_vector")


def test_a_node_may_not_take_an_input_name(tmp_path):
    (d,) = errors_of(write(tmp_path, """\
        model:
          inputs: {x: {shape: [2]}}
          layers:
            - Dense: {units: 2}
              name: x
        """))
    assert "node name 'x' is also a model input's name" in d.message and d.loc.line == 7


@pytest.mark.parametrize("repeat, message", [
    ("{for: 3, as: i}", "'for' takes a list or a mapping"),
    ("{for: [1, 2], as: [a, b]}", "names what each item is called with `as: name`"),
    ("{for: [1, 2], times: 2, as: i}", "takes `times` or `for`, not both"),
])
def test_repeat_for_mistakes_are_located(tmp_path, repeat, message):
    path = write(tmp_path, f"""\
        model:
          inputs: {{x: {{shape: [4]}}}}
          layers:
            - repeat: {repeat}
              layers:
                - Dense: {{units: 2}}
        """)
    diagnostics = errors_of(path)
    assert any(message in d.message and d.loc.line == 6 for d in diagnostics), diagnostics


# -- share: of a block use ---------------------------------------------------------------------

TOWER = """\
        model:
          inputs: {left: {shape: [6]}, right: {shape: [6]}}
          blocks:
            tower:
              layers:
                - Dense: {units: 5, activation: relu}
                - BatchNormalization: {}
                - Dense: {units: 3}
          layers:
            - tower: {}
              name: a
              inputs: [left]
            - share: a
              name: b
              inputs: %s
            - Concatenate: {}
              inputs: [a, b]
        """


def test_share_of_a_block_use_shares_every_layer(tmp_path):
    from compiler.builder import build_model

    spec = load_spec(write(tmp_path, TOWER % "[right]"))
    shared = {n.name: n.shares for n in spec.model.nodes if n.shares}
    assert shared == {"b.dense": "a.dense", "b.batch_normalization": "a.batch_normalization", "b": "a"}
    model = build_model(spec.model)
    assert model.count_params() == (6 * 5 + 5) + 4 * 5 + (5 * 3 + 3)      # one tower's weights
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    out = model.predict([x, x], verbose=0)
    np.testing.assert_allclose(out[:, :3], out[:, 3:], rtol=1e-6)       # the same tower on the same input


def test_share_of_a_block_use_with_the_wrong_number_of_inputs_is_a_validate_error(tmp_path):
    (d,) = errors_of(write(tmp_path, TOWER % "[left, right]"))
    assert "takes 1 input(s) (left), but this item gives 2" in d.message
    assert d.loc.line == 15 and d.path == "model.layers[1].share"


def test_a_block_default_may_use_other_parameters(tmp_path):
    spec = load_spec(write(tmp_path, """\
        model:
          inputs: {tokens: {shape: [6, 8]}}
          blocks: {include: %s}
          layers:
            - transformer_encoder: {d_model: 8, heads: 2, ff: 16}
            - transformer_encoder: {d_model: 8, heads: 2, ff: 16, key_dim: 4}
        """ % (ROOT / "specs" / "blocks" / "transformer.yaml")))
    assert [a["key_dim"] for _, a in layer_args(spec, "MultiHeadAttention")] == [8, 4]


# -- losses ------------------------------------------------------------------------------------

TWO_OUTPUTS = """\
        model:
          inputs: {x: {shape: [4]}}
          layers:
            - Dense: {units: 3, activation: softmax}
              name: kind
            - Dense: {units: 1}
              name: size
              inputs: [x]
          outputs: [kind, size]
        train:
          loss: %s
        """


def test_the_list_form_of_loss_is_one_per_output(tmp_path):
    spec = load_spec(write(tmp_path, TWO_OUTPUTS % "[sparse_categorical_crossentropy, mse]"))
    assert {k: v.name for k, v in spec.train.losses.items()} == {"kind": "sparse_categorical_crossentropy",
                                                                 "size": "mse"}
    (d,) = errors_of(write(tmp_path, TWO_OUTPUTS % "[mse]", "bad.yaml"))
    assert "lists 1 value(s) for 2 output(s) (kind, size)" in d.message and d.loc.line == 13


# -- plugins -----------------------------------------------------------------------------------

@pytest.fixture
def example_plugin():
    """The example plugin loaded for one test; what it registered is forgotten afterwards."""
    from compiler import registry
    from compiler.spec import schemas

    saved = (dict(registry._plugins), {k: dict(v) for k, v in registry._plugin_components.items()},
             list(registry._loaded), set(schemas._plugin_layers),
             {k: set(v) for k, v in schemas._plugin_components.items()})
    sys.path.insert(0, str(PLUGINS))
    registry.load_plugins(["kspec_example_plugin"])
    yield
    sys.path.remove(str(PLUGINS))
    registry._plugins.clear()
    registry._plugins.update(saved[0])
    registry._plugin_components.clear()
    registry._plugin_components.update(saved[1])
    registry._loaded[:] = saved[2]
    schemas._plugin_layers.clear()
    schemas._plugin_layers.update(saved[3])
    schemas._plugin_components.clear()
    schemas._plugin_components.update(saved[4])
    registry._table.cache_clear()
    registry._clear_validator()


def test_a_declared_plugin_needs_the_flag(kspec):
    spec = PLUGINS / "siamese_contrastive.yaml"
    result = kspec("validate", spec)
    assert result.returncode == 2
    assert f"{spec}:10:11: error: the spec declares plugin module 'kspec_example_plugin', which is not loaded" \
        in result.stderr
    assert "pass `--plugin kspec_example_plugin`" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_plugin_loss_metric_and_layer_train_and_reload(example_plugin, tmp_path):
    import keras

    from compiler.builder import build_model, compile_model
    from compiler.registry import require_declared_plugins

    path = PLUGINS / "siamese_contrastive.yaml"
    require_declared_plugins(path)                      # loaded: no error
    spec = load_spec(path)
    assert spec.train.losses["scaled"].name == "ContrastiveLoss"
    model = build_model(spec.model, spec.name)
    compile_model(model, spec.train, spec.model)
    rng = np.random.default_rng(0)
    x = [rng.random((32, 64)).astype("float32"), rng.random((32, 64)).astype("float32")]
    y = rng.integers(0, 2, (32, 1)).astype("float32")
    history = model.fit(x, y, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "pair_accuracy"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert type(loaded.loss).__name__ == "ContrastiveLoss" and loaded.loss.margin == 1.0


# -- adapt -------------------------------------------------------------------------------------

def test_adapt_layers_wherever_they_stand(tmp_path):
    import tensorflow as tf

    from compiler.builder import build_model
    from compiler.builder.adapt import adapt_layers

    spec = load_spec(write(tmp_path, """\
        model:
          inputs: {x: {shape: [3]}, code: {shape: [1], dtype: int32}}
          layers:
            - Dense: {units: 4, kernel_initializer: ones}
              name: hidden
              inputs: [x]
            - Normalization: {}
              name: norm
            - IntegerLookup: {}
              name: lookup
              inputs: [code]
            - Normalization: {mean: 0.0, variance: 1.0}
              name: given
              inputs: [x]
            - Concatenate: {}
              inputs: [norm, lookup, given]
        """))
    model = build_model(spec.model)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(50, 3)) * 3 + 5).astype("float32")
    code = rng.choice([3, 7, 11], (50, 1)).astype("int32")
    lines: list[str] = []
    adapted = adapt_layers(model, tf.data.Dataset.from_tensor_slices({"x": x, "code": code}).batch(16),
                           lines.append, spec.model)
    assert adapted == ["norm", "lookup"]                  # `given` has its state in the spec
    hidden = x.sum(axis=1, keepdims=True).repeat(4, axis=1)   # Dense with ones, zero bias
    np.testing.assert_allclose(model.get_layer("norm").mean.numpy().ravel(), hidden.mean(0), rtol=1e-4)
    assert model.get_layer("lookup").vocabulary_size() == 4     # 3 codes + the OOV token
    assert lines[0] == "adapted Normalization 'norm' on the training split"
    assert lines[1] == "adapted IntegerLookup 'lookup' on the training split (vocabulary of 4)"


def test_a_shared_adaptable_layer_is_an_error_at_its_node(tmp_path):
    import tensorflow as tf

    from compiler.builder import build_model
    from compiler.builder.adapt import adapt_layers

    spec = load_spec(write(tmp_path, """\
        model:
          inputs: {a: {shape: [2]}, b: {shape: [2]}}
          layers:
            - Normalization: {}
              name: norm
              inputs: [a]
            - share: norm
              inputs: [b]
            - Concatenate: {}
              inputs: [norm, norm_shared]
        """))
    model = build_model(spec.model)
    data = tf.data.Dataset.from_tensor_slices({"a": np.ones((4, 2), "float32"), "b": np.ones((4, 2), "float32")})
    with pytest.raises(SpecError) as info:
        adapt_layers(model, data.batch(2), print, spec.model)
    (d,) = info.value.diagnostics
    assert d.loc.line == 6 and "Normalization 'norm' needs adapting" in d.message and "applied at 2 places" in d.message


def test_training_adapts_an_in_model_normalization(tmp_path, capsys):
    import keras

    from compiler.train import train

    path = write(tmp_path, """\
        seed: 0
        data:
          source: {synthetic: line, a: 3, n: 40}
        model:
          inputs: {x: {shape: [1]}}
          layers:
            - Dense: {units: 2, kernel_initializer: ones}
            - Normalization: {}
              name: norm
            - Dense: {units: 1}
        train:
          loss: mse
          epochs: 1
        """)
    run = train(load_spec(path), run_dir=tmp_path / "run", verbose=1)
    assert "adapted Normalization 'norm' on the training split" in capsys.readouterr().out
    model = keras.saving.load_model(run / "model.keras")
    assert np.abs(model.get_layer("norm").variance.numpy()).min() > 0 and \
        not np.allclose(model.get_layer("norm").variance.numpy(), 1.0)


# -- kspec build -------------------------------------------------------------------------------

def test_build_is_seeded_and_names_its_diagram_after_the_output(tmp_path, capsys):
    import keras

    from compiler.cli import main

    spec = ROOT / "examples" / "siamese.yaml"
    for name in ("one", "two"):
        assert main(["build", str(spec), "-o", str(tmp_path / f"{name}.keras")]) == 0
    capsys.readouterr()
    diagrams = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".txt", ".png"))
    assert diagrams in (["one.txt", "two.txt"], ["one.png", "two.png"])
    one, two = (keras.saving.load_model(tmp_path / f"{n}.keras") for n in ("one", "two"))
    for a, b in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_text_model_adapts_its_vocabulary_and_exports_taking_raw_strings(tmp_path, capsys):
    import keras
    import tensorflow as tf

    from compiler.export import export_run
    from compiler.train import train

    run = train(load_spec(ROOT / "examples" / "text_classifier.yaml", ["train.epochs=2"]), run_dir=tmp_path / "run",
                verbose=1)
    assert "adapted TextVectorization 'tokens' on the training split (vocabulary of" in capsys.readouterr().out
    report = export_run(run, "saved_model", tmp_path / "served", verbose=False)
    assert report.max_abs_diff <= 1e-5
    texts = np.array([["A great and lovely film."], ["Dull, boring plot."]])
    expected = keras.saving.load_model(run / "model.keras")(tf.constant(texts)).numpy()
    loaded = tf.saved_model.load(str(tmp_path / "served"))        # kept referenced while serving
    served = loaded.serve(tf.constant(texts))
    np.testing.assert_allclose(served.numpy(), expected, atol=1e-6)


def test_node_names_inside_blocks_and_repeats_get_did_you_mean(tmp_path):
    path = write(tmp_path, """\
        model:
          inputs: {x: {shape: [4]}}
          blocks:
            tower:
              layers:
                - Dense: {units: 3}
                  name: inner
                - Dense: {units: 2}
          layers:
            - tower: {}
              name: a
            - repeat: 2
              layers:
                - Dense: {units: 2}
                  name: hidden
            - Concatenate: {}
              inputs: [a.iner, hiden_2]
        """)
    spec_nodes = ["a.inner", "a", "hidden_1", "hidden_2"]
    first, second = errors_of(path)
    assert "'a.iner' is not a node or model input; did you mean 'a.inner'?" in first.message
    assert "'hiden_2' is not a node or model input; did you mean 'hidden_2'" in second.message
    assert first.loc.line == second.loc.line == 19
    fixed = path.read_text().replace("a.iner, hiden_2", "a.inner, hidden_2")
    path.write_text(fixed)
    assert [n.name for n in load_spec(path).model.nodes][:4] == spec_nodes


def test_a_csv_text_column_trains_and_predicts_from_raw_text(tmp_path, capsys):
    import csv

    from compiler.train import train
    from compiler.train.predict import predict_run

    reviews = np.load(ROOT / "examples" / "data" / "reviews.npz")
    with open(tmp_path / "reviews.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "positive"])
        writer.writerows(zip(reviews["text"][:200, 0], reviews["positive"][:200]))
    spec_text = (ROOT / "examples" / "text_classifier.yaml").read_text().replace(
        "source: {npz: data/reviews.npz}", "source: {csv: reviews.csv, target: positive}")
    (tmp_path / "spec.yaml").write_text(spec_text)
    run = train(load_spec(tmp_path / "spec.yaml", ["train.epochs=2"]), run_dir=tmp_path / "run", verbose=0)
    (tmp_path / "new.csv").write_text('review\n"A great, lovely film."\nDull and boring.\n')
    predictions = predict_run(run, str(tmp_path / "new.csv"))
    assert predictions["positive"].shape == (2, 2)
    assert capsys.readouterr().out.splitlines()[0] == "class,p_0,p_1"

    from compiler.errors import DataError

    (tmp_path / "other.csv").write_text("comment,stars\nfine,5\n")          # no `review` column
    with pytest.raises(DataError, match="review"):
        predict_run(run, str(tmp_path / "other.csv"))
