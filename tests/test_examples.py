"""The examples/ folder: every spec validates, builds and trains (briefly); ensembles (train.ensemble).

The training tests run in this process (a subprocess per example would spend ~10 s each
importing TensorFlow) with one epoch, and check only that a complete run directory comes out:
the measured effects of the full runs are in examples/README.md (scripts/examples_table.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SPECS = sorted(EXAMPLES.glob("*.yaml"))
NAMES = [p.stem for p in SPECS]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# What each example is cut down to for a test run, besides one epoch: less data where it is big,
# fewer members, and 3 of the 20 layers of the deep stacks (tracing 20 layers is most of their
# time; test_example_builds builds them at full depth).
QUICK = {
    "sort": ["data.source.n=2000"],
    "ensemble": ["train.ensemble=2"],
    "deep_plain": ["model.layers[0].repeat=3"],
    "deep_residual": ["model.layers[1].repeat=3"],
    "deep_batchnorm": ["model.layers[0].repeat=3"],
}


# digits_transfer.yaml reuses the trunk of a digits_pretrain.yaml run (`from: ../runs/...`); the
# tests point it at the run the `pretrained` fixture makes.
TRUNK_FROM = "model.layers[0].Backbone.from"


def quick(path: Path, request) -> list[str]:
    """The overrides that make `path` trainable in a test (see QUICK)."""
    sets = list(QUICK.get(path.stem, []))
    if path.stem == "digits_transfer":
        sets.append(f"{TRUNK_FROM}={request.getfixturevalue('pretrained')}")
    return sets


def load(path: Path, overrides=()):
    from compiler.spec.validate import load_spec

    return load_spec(path, list(overrides))


def test_the_examples_are_there():
    expected = {"iris_mlp", "digits_cnn", "iris_base", "iris_lr_high", "iris_lr_good", "iris_lr_low", "line",
                "sort", "parity", "deep_plain", "deep_residual", "deep_batchnorm", "overfit_nodropout",
                "overfit_dropout", "lstm_nobias", "lstm_forget_bias", "autoencoder",
                "multitask", "ensemble", "digits_pretrain", "digits_scratch", "digits_transfer"}
    assert expected <= set(NAMES), sorted(expected - set(NAMES))


@pytest.mark.parametrize("path", SPECS, ids=NAMES)
def test_example_validates(path):
    text = path.read_text()
    assert text.startswith("# yaml-language-server: $schema=../schemas/spec.schema.json\n")
    assert text.splitlines()[1].startswith("# "), "the second line says what the example shows"
    spec = load(path)
    assert spec.data is not None and spec.train is not None


@pytest.mark.parametrize("path", SPECS, ids=NAMES)
def test_example_builds(path, request):
    from compiler.builder import build_model, compile_model

    spec = load(path, [o for o in quick(path, request) if o.startswith(TRUNK_FROM)])
    model = build_model(spec.model, spec.name)
    compile_model(model, spec.train, spec.model)
    assert model.count_params() > 0


# ensemble.yaml trains 2 members here (~10 s); the ensemble machinery is tested below on iris.
SLOW_TO_TRAIN = {"ensemble"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_TO_TRAIN else p
                                  for p in SPECS], ids=NAMES)
def test_example_trains(path, tmp_path, request):
    from compiler.train import train

    spec = load(path, ["train.epochs=1", *quick(path, request)])
    run = train(spec, run_dir=tmp_path / "run", verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    held_out = "validation" if spec.data.validation else "test"
    assert {"train", held_out} <= set(metrics)
    assert all(np.isfinite(v) for section in ("train", held_out) for v in metrics[section].values())
    assert (run / "model.keras").is_file()


@pytest.mark.parametrize("bits", [4, 12])
def test_parity_takes_other_bit_counts(bits):
    spec = load(EXAMPLES / "parity.yaml", [f"data.source.bits={bits}", f"model.inputs.bits.shape=[{bits}]"])
    assert spec.data.params["bits"] == bits and spec.model.inputs[0].shape == (bits,)


def test_the_table_script_names_only_real_examples():
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_table", ROOT / "scripts" / "examples_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["examples_table"] = module          # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["examples_table"]
    for experiment in module.EXPERIMENTS:
        assert (EXAMPLES / experiment.spec).is_file(), experiment.spec
    readme = (EXAMPLES / "README.md").read_text()
    assert readme.count("<!-- table:start -->") == 1 and readme.count("<!-- table:end -->") == 1
    table = readme.split("<!-- table:start -->")[1].split("<!-- table:end -->")[0]
    for experiment in module.EXPERIMENTS:
        assert f"`{experiment.spec}`" in table, f"{experiment.spec} has no row in examples/README.md"


# -- transfer learning: digits 0-4 -> 5-9 ------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """digits_pretrain.yaml trained as written (about 10 s): the run digits_transfer.yaml reuses."""
    from compiler.train import train

    return train(load(EXAMPLES / "digits_pretrain.yaml"), run_dir=tmp_path_factory.mktemp("pretrain") / "run",
                 verbose=0)


def test_transfer_beats_training_from_scratch_with_the_trunk_unchanged(pretrained, tmp_path):
    """The issue's whole journey, as the examples are written: the trunk pretrained on the digits 0-4,
    frozen, learns the digits 5-9 from a few dozen images better than the same network from scratch."""
    import keras

    import compiler.layers  # noqa: F401
    from compiler.data import load_splits
    from compiler.train import train

    pretrain = load(EXAMPLES / "digits_pretrain.yaml")
    transfer = load(EXAMPLES / "digits_transfer.yaml", [f"{TRUNK_FROM}={pretrained}"])
    scratch = load(EXAMPLES / "digits_scratch.yaml")
    seen = load_splits(pretrain.data, pretrain.model, pretrain.seed)
    new = load_splits(transfer.data, transfer.model, transfer.seed)
    assert seen.class_names == {"digit": ["0", "1", "2", "3", "4"]}
    assert new.class_names == {"digit": ["5", "6", "7", "8", "9"]}       # disjoint: no test image was seen
    assert 20 <= len(new.train) <= 40 and len(new.test) > 800              # a few dozen labelled images
    baseline = load_splits(scratch.data, scratch.model, scratch.seed)
    np.testing.assert_array_equal(new.test.origin, baseline.test.origin)  # both judged on the same images
    np.testing.assert_array_equal(new.train.origin, baseline.train.origin)

    transfer_run = train(transfer, run_dir=tmp_path / "transfer", verbose=0)
    scratch_run = train(scratch, run_dir=tmp_path / "scratch", verbose=0)
    accuracy = {name: json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
                for name, run in [("transfer", transfer_run), ("scratch", scratch_run)]}
    assert accuracy["transfer"] > accuracy["scratch"], accuracy

    trunk = keras.saving.load_model(transfer_run / "model.keras").get_layer("trunk")
    original = keras.saving.load_model(pretrained / "model.keras")
    checked = []
    for layer in trunk.layers:
        for after, before in zip(layer.weights, original.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(after.numpy(), before.numpy(), err_msg=after.path)
            checked.append(after.path)
    assert len(checked) == 2 + 2 * 4 and sum("moving_mean" in p for p in checked) == 2, checked   # 2 convs, 2 BNs

    # The run speaks the digits' own names: evaluating on the raw labels 5-9 gives the same accuracy.
    from compiler.train.evaluate import evaluate_run

    raw = tmp_path / "raw.npz"
    np.savez(raw, x=new.test.x["pixels"], y=np.array(new.class_names["digit"]).astype(int)[new.test.y["digit"]])
    assert evaluate_run(transfer_run, str(raw), verbose=False)["accuracy"] == pytest.approx(accuracy["transfer"], abs=1e-6)


# -- ensembles ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """An ensemble of 3 tiny iris MLPs (1 epoch each)."""
    from compiler.train import train

    spec = load(EXAMPLES / "iris_mlp.yaml", ["train.ensemble=3", "train.epochs=1", "model.layers[0].Dense.units=8"])
    run = train(spec, run_dir=tmp_path_factory.mktemp("ensemble") / "run", verbose=0)
    return spec, run


def test_ensemble_run_directory(ensemble_run):
    import yaml

    spec, run = ensemble_run
    members = sorted(p.name for p in (run / "members").iterdir())
    assert members == ["member_0", "member_1", "member_2"]
    for i, name in enumerate(members):
        member = run / "members" / name
        for artifact in ("spec.yaml", "model.keras", "metrics.json", "history.csv", "data.json"):
            assert (member / artifact).is_file(), (member, artifact)
        member_spec = yaml.safe_load((member / "spec.yaml").read_text())
        assert member_spec["seed"] == spec.seed + i and "ensemble" not in member_spec["train"]
    top = yaml.safe_load((run / "spec.yaml").read_text())
    assert top["train"]["ensemble"] == 3 and top["seed"] == spec.seed
    assert (run / "data.json").is_file() and not (run / "history.csv").exists()


def test_ensemble_model_is_the_mean_of_its_members(ensemble_run):
    import keras

    import compiler.layers  # noqa: F401

    _, run = ensemble_run
    model = keras.saving.load_model(run / "model.keras")
    assert [layer.name for layer in model.layers if layer.name.startswith("member_")] == \
        ["member_0", "member_1", "member_2"]
    x = np.random.default_rng(0).normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.8, 0.8], (20, 4)).astype("float32")
    members = [keras.saving.load_model(run / "members" / f"member_{i}" / "model.keras") for i in range(3)]
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), mean, rtol=1e-5, atol=1e-6)
    outputs = [m.predict(x, verbose=0) for m in members]
    assert not np.allclose(outputs[0], outputs[1]), "members with different seeds should differ"


def test_ensemble_metrics(ensemble_run):
    _, run = ensemble_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["members"]) == 3
    assert [m["seed"] for m in metrics["members"]] == [0, 1, 2]
    for section in ("train", "validation", "test"):
        assert set(metrics["ensemble"][section]) >= {"loss", "accuracy"}
        assert metrics[section] == metrics["ensemble"][section]
        for member in metrics["members"]:
            assert set(member[section]) >= {"loss", "accuracy"}
    # Cross-entropy is convex in the predicted probabilities: the averaged model's loss is at most
    # the members' average loss (on the same examples).
    assert metrics["test"]["loss"] <= metrics["member_mean"]["test"]["loss"] + 1e-6


def test_ensemble_members_share_the_data_split(ensemble_run):
    """Every member is tested on the ensemble's test split (seed + i changes the weights, not the split)."""
    import keras

    import compiler.layers  # noqa: F401
    from compiler.data import load_splits, make_dataset

    spec, run = ensemble_run
    test = load_splits(spec.data, spec.model, spec.seed).test
    recorded = json.loads((run / "metrics.json").read_text())["members"]
    for i in (1, 2):
        model = keras.saving.load_model(run / "members" / f"member_{i}" / "model.keras")
        got = model.evaluate(make_dataset(test, 16, shuffle=False, seed=0), verbose=0, return_dict=True)
        assert got["loss"] == pytest.approx(recorded[i]["test"]["loss"], rel=1e-4)


def test_ensemble_refuses_multi_worker(tmp_path, monkeypatch):
    from compiler.errors import KspecError
    from compiler.train import train

    cluster = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(KspecError, match="one process"):
        train(load(EXAMPLES / "ensemble.yaml"), run_dir=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_ensemble_resume(ensemble_run, capsys):
    """--resume of a finished ensemble does nothing; with its averaged model gone, only that is redone."""
    from compiler.train import train

    spec, run = ensemble_run
    before = {p: p.stat().st_mtime_ns for p in (run / "members").rglob("model.keras")}
    train(spec, run_dir=run, resume=True, verbose=1)
    assert "already complete" in capsys.readouterr().out
    (run / "model.keras").unlink()
    (run / "metrics.json").unlink()
    train(spec, run_dir=run, resume=True, verbose=1)
    out = capsys.readouterr().out
    assert len(re.findall("already trained", out)) == 3
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    assert before == {p: p.stat().st_mtime_ns for p in (run / "members").rglob("model.keras")}
