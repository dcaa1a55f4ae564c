"""One source of truth for each fact: each test here fails when a copy drifts back in.

Defaults live in the typed spec (compiler/spec/types.py); closed lists in the modules that
own them (data sources, preprocessing steps, synthetic generators, distribution modes, Backbone
options); one did-you-mean, one `trainable` implementation, one ensemble check, one place in the
CLI that loads a spec.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pytest

from compiler.errors import KspecError, SpecError
from compiler.spec.types import DataSpec, InputSpec, TrainSpec, default
from compiler.spec.validate import load_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "spec.schema.json").read_text())
MODEL = "model:\n  inputs: {x: {shape: [4]}}\n  layers:\n    - Dense: {units: 8}\n    - Dense: {units: 3}\n"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        try:
            out[f.name] = default(cls, f.name)
        except KeyError:
            pass
    return out


# -- defaults -------------------------------------------------------------------------------

def test_a_yaml_spec_gets_the_typed_defaults(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "kspec: 1\n" + MODEL + "train: {loss: mse}\n"))
    typed = _defaults(TrainSpec)
    assert typed["distribute"] == typed["jit_compile"] == typed["mixed_precision"] == "auto"
    for name, value in typed.items():
        if name != "loc":
            assert getattr(spec.train, name) == value, name
    assert spec.model.inputs[0].dtype == default(InputSpec, "dtype")


def test_a_yaml_data_section_gets_the_typed_defaults(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "kspec: 1\ndata: {source: {sklearn: iris}}\n" + MODEL))
    assert (spec.data.validation, spec.data.test) == (default(DataSpec, "validation"), default(DataSpec, "test"))


def test_schema_defaults_are_the_typed_defaults():
    train = SCHEMA["properties"]["train"]["properties"]
    stated = {k: v["default"] for k, v in train.items() if "default" in v}
    typed = {k: v for k, v in _defaults(TrainSpec).items()
             if k in train and isinstance(v, (bool, int, float, str))}
    assert stated == typed and "distribute" in stated
    assert SCHEMA["definitions"]["layer_item"] and \
        SCHEMA["properties"]["model"]["properties"]["inputs"]["additionalProperties"]["properties"]["dtype"][
            "default"] == default(InputSpec, "dtype")


def test_schema_closed_lists_are_the_owners_lists():
    from compiler.data.preprocess import INPUT_STEPS, TARGET_STEPS
    from compiler.data.sources import SKLEARN
    from compiler.data.synthetic import GENERATORS
    from compiler.distribute.strategy import MODES

    data = SCHEMA["properties"]["data"]["properties"]
    forms = data["source"]["oneOf"]
    sklearn = next(f for f in forms if "sklearn" in f["properties"])["properties"]["sklearn"]["enum"]
    synthetic = next(f for f in forms if "synthetic" in f["properties"])["properties"]["synthetic"]["enum"]
    assert sklearn == list(SKLEARN) and synthetic == list(GENERATORS)
    bare, with_args = data["preprocess"]["items"]["anyOf"]
    assert set(bare["enum"]) | set(with_args["properties"]) == set(INPUT_STEPS + TARGET_STEPS)
    assert SCHEMA["properties"]["train"]["properties"]["distribute"]["enum"] == list(MODES)
    assert set(SCHEMA["definitions"]["backbone"]["properties"]) == set(_backbone_options())


def _backbone_options() -> tuple:
    """builder/backbone.py's OPTIONS, read without importing Keras."""
    tree = ast.parse((ROOT / "compiler" / "builder" / "backbone.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "OPTIONS" for t in node.targets)]
    return ast.literal_eval(value)


# -- one implementation each -----------------------------------------------------------------

def test_one_did_you_mean():
    from compiler import suggest
    from compiler.data import table

    assert table.did_you_mean is suggest.did_you_mean
    assert "'standardize'" in table.did_you_mean("STANDARDIZE", ["standardize", "log1p"])


def test_the_cli_loads_a_spec_in_one_place():
    tree = ast.parse((ROOT / "compiler" / "cli.py").read_text())
    callers = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
               for call in ast.walk(fn) if isinstance(call, ast.Call)
               and getattr(call.func, "id", getattr(call.func, "attr", None)) == "load_spec"}
    assert callers == {"_load_spec"}


def test_ensemble_with_several_workers_is_one_check_exit_2(tmp_path, monkeypatch, capsys):
    from compiler.cli import main
    from compiler.train.ensemble import check_single_process

    path = write(tmp_path / "ens.yaml", "kspec: 1\ndata: {source: {sklearn: iris}}\n" + MODEL +
                 "train:\n  loss: sparse_categorical_crossentropy\n  ensemble: 3\n")
    assert main(["train", str(path), "--workers", "2"]) == 2        # the CLI, before TensorFlow loads
    assert f"{path}:10:13: error: train.ensemble trains its members" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(KspecError) as refused:                       # the trainer's call: the same check
        check_single_process(load_spec(path))
    assert refused.value.exit_code == 2 and refused.value.diagnostics[0].path == "train.ensemble"


@pytest.mark.parametrize("missing", ["data", "train"])
def test_train_and_train_ensemble_refuse_a_missing_section_in_one_check(tmp_path, missing):
    # train_ensemble used to read `spec.train.ensemble` unchecked: an AttributeError for a spec without `train`.
    from compiler.train.ensemble import train_ensemble
    from compiler.train.run import train

    sections = {"data": "data: {source: {sklearn: iris}}\n", "train": "train: {loss: sparse_categorical_crossentropy}\n"}
    spec = load_spec(write(tmp_path / "s.yaml", "kspec: 1\n" + sections["data" if missing == "train" else "train"] + MODEL))
    for trainer in (train, train_ensemble):
        with pytest.raises(SpecError) as refused:
            trainer(spec, run_dir=tmp_path / "run")
        assert refused.value.exit_code == 2 and refused.value.diagnostics[0].path == missing
        assert f"no `{missing}` section" in str(refused.value) and not (tmp_path / "run").exists()


# -- trainable patterns ------------------------------------------------------------------------

def test_an_invalid_trainable_regex_is_a_validate_error(tmp_path):
    path = write(tmp_path / "s.yaml", "kspec: 1\n" + MODEL + "train:\n  loss: mse\n  phases:\n"
                 "    - {epochs: 1, trainable: false}\n    - {epochs: 1, trainable: 'dense_(1'}\n")
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    (d,) = refused.value.diagnostics
    assert (d.loc.line, d.loc.col, d.path) == (11, 30, "train.phases[1].trainable")
    assert "not a valid regular expression" in d.message


def test_a_phase_pattern_matching_no_layer_is_an_error_before_training(tmp_path):
    from compiler.builder import build_model
    from compiler.train.run import check_phase_patterns, set_trainable

    path = write(tmp_path / "s.yaml", "kspec: 1\n" + MODEL + "train:\n  loss: mse\n  phases:\n"
                 "    - {epochs: 1, trainable: 'dense_1'}\n    - {epochs: 1, trainable: 'dence'}\n")
    spec = load_spec(path)
    model = build_model(spec.model, spec.name)
    with pytest.raises(SpecError) as refused:
        check_phase_patterns(model, spec)
    (d,) = refused.value.diagnostics
    assert (d.loc.line, d.path) == (11, "train.phases[1].trainable")
    assert "'dence' matches no layer of the model; did you mean 'dense'" in d.message
    set_trainable(model, "dense_1")                                   # the matching phase: only dense_1 trains
    assert [layer.trainable for layer in model.layers[1:]] == [False, True]


# -- smaller drifts --------------------------------------------------------------------------

def _public_functions():
    for path in sorted((ROOT / "compiler").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield path, node.name


def test_no_dead_public_functions():
    from collections import Counter

    words = Counter(re.findall(r"\w+", "\n".join(p.read_text() for folder in ("compiler", "tests", "bench")
                                                 for p in sorted((ROOT / folder).rglob("*.py")))))
    dead = [f"{path.relative_to(ROOT)}:{name}" for path, name in _public_functions() if words[name] < 2]
    assert not dead, f"defined but never used: {dead}"


def test_py_typed_is_shipped():
    assert (ROOT / "compiler" / "py.typed").is_file()
    assert re.search(r'compiler = \[.*"py\.typed".*\]', (ROOT / "pyproject.toml").read_text())


def test_errors_docstring_counts_nothing_that_drifts():
    import compiler.errors as errors

    assert not re.search(r"\bone of (two|three|four|five|six|seven|eight|nine|\d+) exceptions", errors.__doc__)
    for name in ("KspecError", "SpecError", "DataError", "TrainingError", "exit_code"):
        assert name in errors.__doc__
