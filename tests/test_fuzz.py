"""Property-based fuzzing of the front half: load -> resolve -> validate.

Valid specs (every shipped example and template, plus the specs below) are
mutated structurally (keys renamed, values replaced by other types, items
deleted or duplicated, references broken) and byte by byte. Whatever the
mutation, the outcome is a Spec or the project's SpecError in which every
diagnostic has a location: never another exception, never a hang.

`make test` runs a bounded number of cases; `make fuzz` sets
KSPEC_FUZZ_EXAMPLES for a long run.
"""

import math
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.errors import SpecError
from compiler.spec.validate import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("KSPEC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="KSPEC_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck))

INLINE = ["""\
kspec: 1
data: {source: {sklearn: iris}, split: {validation: 0.2, test: 0.2}, preprocess: [standardize]}
model:
  inputs: {x: {shape: [4]}}
  blocks:
    res:
      params: {units: 8}
      layers:
        - Dense: {units: $units, activation: relu, kernel_initializer: {RandomNormal: {stddev: 0.02}}}
        - Add: {}
          inputs: [$input, dense]
  layers:
    - Dense: {units: 8}
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
  epochs: 3
  callbacks: [{EarlyStopping: {patience: 2}}]
"""]


def seeds() -> list[str]:
    texts = list(INLINE)
    for path in sorted(ROOT.glob("examples/**/*.yaml")) + sorted(ROOT.glob("specs/**/*.yaml")):
        text = path.read_text()
        if "extends:" not in text and "include:" not in text and "model:" in text:
            texts.append(text)
    return texts


SEEDS = seeds()
# Hostile scalars for every field: infinities, NaN, integers beyond int64 and beyond kspec's digit bound,
# over-long strings (beyond the one-value bound), numeric text with spaces.
HOSTILE = st.sampled_from([math.inf, -math.inf, math.nan, 10**30, 10**100, -(10**60), "x" * 70_000, "y" * 5000,
                           "9" * 300, "1e-3 ", " 32"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["$units", "${1/0}", "${x.y}", "$input", "Dense",
                                                            "species", "stem", "nope"]), HOSTILE)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from paths(v, prefix + (i,))


def get(tree, path):
    for step in path:
        tree = tree[step]
    return tree


@st.composite
def mutated(draw):
    tree = yaml.safe_load(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = [p for p in paths(tree) if p]
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent, key = get(tree, path[:-1]), path[-1]
        op = draw(st.sampled_from(["replace", "delete", "rename", "duplicate"]))
        if op == "replace":
            parent[key] = draw(VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(key)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, parent[key])
    return yaml.safe_dump(tree, sort_keys=False)


def check(path: Path) -> None:
    try:
        load_spec(path)
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.loc is not None and d.loc.file, d.format()
            assert d.message


@FUZZ
@given(text=mutated())
def test_structural_mutations_end_in_a_spec_or_a_located_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text)
    check(path)


@FUZZ
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_byte_corruption_ends_in_a_spec_or_a_located_error(tmp_path_factory, seed, data):
    raw = bytearray(seed.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw[at:at] = data.draw(st.sampled_from([b":", b"-", b"[", b"{", b"&a", b"*a", b"!!", b"\t", b"\n  ", b"$",
                                                    b"1e309", b"9" * 5000, b".nan", b"-.inf", b"<<: ",
                                                    b"z" * 70_000]))
        else:
            del raw[at]
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(bytes(raw))
    check(path)
