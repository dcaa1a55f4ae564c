"""Bad data through the real command line: `kspec train` on a small spec whose data is broken.

Each case must end with exit status 2, a message that names the file and the
column / line / array / shape at fault, no Python traceback, and nothing left
behind: the new run directory is removed again (so the corrected spec can reuse
it) and an earlier, finished run is untouched, byte for byte.

The runs are forks of a server that imported TensorFlow once (tests/kspec_procs.py;
KSPEC_TEST_FORK=0 runs plain `python -m compiler` subprocesses instead), each a separate
process running the `kspec` entry point; the refusal to reuse the earlier run's directory
is checked with a plain subprocess. The failing runs are independent and run concurrently;
the good run they are compared against runs first.
"""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from kspec_procs import Procs

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240
PARALLEL = 2

pytestmark = pytest.mark.slow

CSV_SPEC = """\
kspec: 1
name: bad-data
seed: 0
data:
  source: {csv: %(csv)s, target: %(target)s}
  split: {validation: 0.2, test: 0.2}
model:
  inputs:
    x: {shape: [4]}
  layers:
    - Dense: {units: 8, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: species
  outputs: [species]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  batch_size: 16
  epochs: 2
"""

NPZ_SPEC = CSV_SPEC.replace("{csv: %(csv)s, target: %(target)s}", "{npz: %(npz)s}")

IMAGES_SPEC = """\
kspec: 1
name: bad-images
seed: 0
data:
  source: {images: %(images)s}
  split: {validation: 0.25}
model:
  inputs:
    img: {shape: [8, 8, 3]}
  layers:
    - Flatten: {}
    - Dense: {units: 2, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  epochs: 1
"""

HEADER = ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
SPECIES = ["setosa", "versicolor", "virginica"]


def rows() -> list[list[str]]:
    """60 iris-like examples; line k of the file holds rows()[k - 2] (line 1 is the header)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(60):
        c = i % 3
        out.append([f"{5 + c + rng.random():.2f}", f"{3 + rng.random():.2f}", f"{1 + 2 * c + rng.random():.2f}",
                    f"{0.2 + 0.8 * c:.2f}", SPECIES[c]])
    return out


def write_csv(path: Path, data: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *data])
    return path


def write_png(path: Path, seed: int) -> None:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_cases(d: Path) -> dict[str, tuple[str, list[str]]]:
    """case -> (spec text, substrings stderr must hold: the file and what/where is wrong)."""
    good = write_csv(d / "good.csv", rows())

    nan = rows()
    nan[6][2] = "nan"                                   # line 8, column petal_length
    write_csv(d / "nan.csv", nan)

    text = rows()
    text[8][1] = "abc"                                  # line 10, column sepal_width
    write_csv(d / "text.csv", text)

    labels = rows()
    for row in labels:
        row[4] = {"setosa": "0", "versicolor": "1", "virginica": "5"}[row[4]]   # first 5: line 4
    write_csv(d / "labels.csv", labels)

    x = np.asarray([[float(v) for v in r[:4]] + [0.0] for r in rows()], np.float32)
    y = np.arange(60) % 3
    np.savez(d / "shape.npz", x=x, y=y)                 # 5 values per example, the model takes 4
    np.savez(d / "keys.npz", features=x[:, :4], labels=y)

    for k, cls in enumerate(["cat", "dog"]):
        (d / "images" / cls).mkdir(parents=True)
        for i in range(4):
            write_png(d / "images" / cls / f"{i}.png", 10 * k + i)
    (d / "images" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")

    def csv_spec(file: Path, target: str = "species") -> str:
        return CSV_SPEC % {"csv": file, "target": target}

    return {
        "good": (csv_spec(good), []),
        "csv_nan": (csv_spec(d / "nan.csv"),
                    [f"{d / 'nan.csv'}:8:", "column 'petal_length' is missing ('nan') on line 8"]),
        "csv_text": (csv_spec(d / "text.csv"),
                     [f"{d / 'text.csv'}:10:", "column 'sepal_width' holds numbers but line 10 has 'abc'"]),
        "csv_missing_target": (csv_spec(good, "specis"),
                               [f"{good}:1:", "target column 'specis' is not a column of good.csv; "
                                              "did you mean 'species'?"]),
        "csv_labels_out_of_range": (csv_spec(d / "labels.csv"),
                                    [f"{d / 'labels.csv'}:4:", "labels in column 'species' of labels.csv go up "
                                     "to 5 but output 'species' has 3 units (the first on line 4)",
                                     "give output 'species' 6 units"]),
        "npz_wrong_shape": (NPZ_SPEC % {"npz": d / "shape.npz"},
                            ["input 'x' expects shape (4,) per example but the data (array 'x' of shape.npz) "
                             "has shape (5,)"]),
        "npz_missing_key": (NPZ_SPEC % {"npz": d / "keys.npz"},
                            [f"{d / 'keys.npz'}: error:", "keys.npz has no array 'x' (for input 'x')",
                             "arrays present: features, labels", "hint: name the array to use under data.source: "
                             "`x: KEY`"]),
        "images_unreadable": (IMAGES_SPEC % {"images": d / "images"},
                              [f"{d / 'images' / 'dog' / 'broken.png'}: error: cannot read image"]),
    }


def env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def kspec(*args) -> subprocess.CompletedProcess:
    """A plain `python -m compiler ...` subprocess."""
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def snapshot(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """Train the good spec once into `earlier/`, then every bad case (concurrently) into its own run dir,
    and the bad CSV into `earlier/` itself."""
    d = tmp_path_factory.mktemp("bad_data")
    cases = make_cases(d)
    specs = {}
    for name, (text, _) in cases.items():
        specs[name] = d / f"{name}.yaml"
        specs[name].write_text(text)
    earlier = d / "earlier"
    procs = Procs()
    try:
        good = procs.run(["train", specs["good"], "--run-dir", earlier, "--verbose", "0"], timeout=TIMEOUT, env=env())
        assert good.returncode == 0, good.stderr
        before = snapshot(earlier)

        def bad(name):
            return procs.run(["train", specs[name], "--run-dir", d / "runs" / name, "--verbose", "0"],
                             timeout=TIMEOUT, env=env())

        with ThreadPoolExecutor(PARALLEL) as pool:
            into = pool.submit(kspec, "train", specs["good"], "--run-dir", earlier, "--verbose", "0")
            bad_into = pool.submit(procs.run, ["train", specs["csv_nan"], "--run-dir", earlier, "--verbose", "0"],
                                   timeout=TIMEOUT, env=env())
            futures = {name: pool.submit(bad, name) for name in cases if name != "good"}
            results = {name: f.result() for name, f in futures.items()}
            results["into_earlier"] = into.result()
            results["bad_into_earlier"] = bad_into.result()
    finally:
        procs.close()
    return {"dir": d, "cases": cases, "results": results, "earlier": earlier, "before": before}


BAD = ["csv_nan", "csv_text", "csv_missing_target", "csv_labels_out_of_range", "npz_wrong_shape",
       "npz_missing_key", "images_unreadable"]


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_a_clear_exit_2(outcome, case):
    result = outcome["results"][case]
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    for text in outcome["cases"][case][1]:
        assert text in err, f"expected {text!r} in:\n{err}"
    assert not (outcome["dir"] / "runs" / case).exists(), "a run that failed on its data leaves nothing behind"


def test_earlier_run_is_untouched(outcome):
    """A new run into a finished run's directory is refused; bad data aimed at it fails on the data
    (read before the run directory is claimed); either way not a byte of the earlier run changes."""
    into = outcome["results"]["into_earlier"]
    assert into.returncode == 2 and "holds an earlier run; nothing in it was changed" in into.stderr, into.stderr
    bad = outcome["results"]["bad_into_earlier"]
    assert bad.returncode == 2 and "column 'petal_length' is missing ('nan') on line 8" in bad.stderr, bad.stderr
    assert "Traceback" not in into.stderr + bad.stderr
    assert snapshot(outcome["earlier"]) == outcome["before"]


def test_bad_data_is_found_before_tensorflow_starts(tmp_path):
    """`kspec train` reads the data before it imports TensorFlow: a data mistake costs a second, not
    TensorFlow's start-up, and leaves no run directory behind."""
    rows = ["a,b,c,d,species"] + [f"{i},1,2,3,{i % 3}" for i in range(10)] + ["1,,2,3,0"]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "s.yaml").write_text(CSV_SPEC % {"csv": "d.csv", "target": "species"})
    code = ("import sys; from compiler.cli import main; "
            f"rc = main(['train', {str(tmp_path / 's.yaml')!r}, '--run-dir', {str(tmp_path / 'run')!r}]); "
            "print('exit', rc, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.stdout.split() == ["exit", "2", "False"], done.stdout + done.stderr
    assert "d.csv:12:" in done.stderr and "column 'b'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
