"""Streamed data (issue 12) and the data-file bounds of issue 13, on real files written by each test.

Image folders are listed, not decoded: the splits are `Stream`s whose pipelines decode in
tf.data. Every bad file is named at listing time (or, under `on_bad_file: skip`, left out
and listed); the bounds keep a one-character typo in a data file from exhausting memory.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler.data import Arrays, input_layers, input_dataset, load_splits, make_dataset, read_inputs
from compiler.data.images import MAX_PIXELS, decode_image
from compiler.data.stream import Stream
from compiler.errors import DataError
from compiler.spec.types import Component, DataSpec, InputSpec, ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def model(shape=(8, 8, 3), name="img"):
    return ModelSpec((InputSpec(name, tuple(shape), "float32"),), (), ("y",))


def images(root: Path, classes=("cat", "dog"), per_class=6, size=(10, 12), fmt="JPEG") -> Path:
    """Class folders of images whose pixels encode the class (and vary a little per image)."""
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), 60 * (k + 1) + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
    return root


def error(data: DataSpec, m: ModelSpec = None) -> str:
    started = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_splits(data, m or model(), 0)
    assert time.perf_counter() - started < 5
    return str(e.value)


# --------------------------------------------------------------------- image folders

def test_image_folder_is_streamed_split_by_file_and_decoded_as_uint8(tmp_path):
    root = images(tmp_path / "pets", per_class=10)
    data = DataSpec("images", {"path": str(root)}, validation=0.2, test=0.2)
    s = load_splits(data, model(), 0)
    assert isinstance(s.train, Stream) and isinstance(s.validation, Stream) and isinstance(s.test, Stream)
    assert (len(s.train), len(s.validation), len(s.test)) == (12, 4, 4)
    for part in (s.validation, s.test):                     # stratified: both classes held out
        assert sorted(part.y["y"].tolist()) == [0, 0, 1, 1]
    files = set(map(str, s.train.files)) | set(map(str, s.validation.files)) | set(map(str, s.test.files))
    assert len(files) == 20                                 # disjoint splits of the file list
    assert "in memory" in s.notes[0] and "data.cache: auto" in s.notes[0]
    again = load_splits(data, model(), 0)
    assert list(again.train.files) == list(s.train.files)   # seeded
    batches = list(make_dataset(s.train, 5, shuffle=True, seed=3))
    x, y = batches[0]
    assert x.dtype.name == "uint8" and tuple(x.shape) == (5, 8, 8, 3) and sum(len(b[1]) for b in batches) == 12
    # each image's pixels say its class: the labels travel with their files through the shuffle
    for xb, yb in batches:
        assert np.all(np.abs(xb.numpy().reshape(len(yb), -1).mean(axis=1) - (60 * (yb.numpy() + 1) + 4.5)) < 6)
    first = [b[1].numpy().tolist() for b in make_dataset(s.train, 5, shuffle=True, seed=3)]
    assert first == [b[1].numpy().tolist() for b in batches]   # the same seed, the same order


def test_decode_image_converts_modes_to_the_input_channels(tmp_path):
    import tensorflow as tf

    rgb = np.random.default_rng(0).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    kinds = {"gray.png": Image.fromarray(rgb[..., 0]), "rgba.png": Image.fromarray(rgb).convert("RGBA"),
             "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "rgb.bmp": Image.fromarray(rgb),
             "la.png": Image.fromarray(rgb[..., 0]).convert("LA"), "p.gif": Image.fromarray(rgb).convert("P")}
    for name, img in kinds.items():
        img.save(tmp_path / name)
        data = tf.io.read_file(str(tmp_path / name))
        for channels in (1, 3, 4):
            out = decode_image(data, 4, 5, channels)
            assert out.dtype == tf.uint8 and tuple(out.shape) == (4, 5, channels), (name, channels)
    same = decode_image(tf.io.read_file(str(tmp_path / "rgb.bmp")), 6, 7, 3).numpy()
    np.testing.assert_array_equal(same, rgb)                # no resize when the size already fits


def test_grayscale_folder_feeds_an_rgb_model_and_standardize_adapts_by_streaming(tmp_path):
    root = tmp_path / "g"
    for k, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), 50 * k + 10 * i, dtype=np.uint8)).save(root / cls / f"{i}.png")
    data = DataSpec("images", {"path": str(root)}, preprocess=(Component("preprocess", "standardize", {}),))
    s = load_splits(data, model((8, 8, 3)), 0)
    layers = input_layers(data, model((8, 8, 3)), s.train)
    norm = layers["img"][0]
    decoded = s.train.sample(100).x["img"].astype(np.float32)
    assert decoded.shape == (8, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(norm.mean).reshape(-1)[:3], decoded.mean(axis=(0, 1, 2)), rtol=1e-4)
    assert sum(len(b) for b in input_dataset(s.train, 3)) == 8


def test_manifest_csv_of_paths_and_labels(tmp_path):
    root = images(tmp_path / "pics", per_class=3)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "kind"])
        for k, cls in enumerate(("cat", "dog")):
            for i in range(3):
                w.writerow([f"pics/{cls}/{i}.jpg", ["meow", "woof"][k]])
    s = load_splits(DataSpec("images", {"path": str(tmp_path / "labels.csv"), "target": "kind"}), model(), 0)
    assert s.class_names["y"] == ["meow", "woof"] and len(s.train) == 6
    (root / "cat" / "0.jpg").unlink()
    message = error(DataSpec("images", {"path": str(tmp_path / "labels.csv"), "target": "kind"}))
    assert "labels.csv:2:1: error:" in message and "0.jpg" in message and "not found" in message


def test_disk_cache_is_written_in_kspecs_cache_folder_and_reused(tmp_path, monkeypatch):
    from compiler.data import stream

    root = images(tmp_path / "pets", per_class=4)
    monkeypatch.setenv(stream.CACHE_DIR_ENV, str(tmp_path / "cache" / "made"))   # created by kspec
    data = DataSpec("images", {"path": str(root)}, cache="disk")
    s = load_splits(data, model(), 0)
    assert s.train.cache.mode == "disk" and f"on disk in {tmp_path / 'cache' / 'made'}" in s.notes[0]
    first = [y.numpy().tolist() for _, y in make_dataset(s.train, 4, shuffle=True, seed=0)]
    written = sorted(p.name for p in (tmp_path / "cache" / "made").iterdir())
    assert written == [f"kspec-cache-{s.train.cache.key}-train"]             # published whole, no partial left
    assert (tmp_path / "cache" / "made" / written[0] / "cache.index").is_file()

    def no_refill(*_):
        raise AssertionError("a completed cache is read, not filled again")

    monkeypatch.setattr(stream, "fill_disk_cache", no_refill)
    s2 = load_splits(data, model(), 0)
    assert s2.train.cache_file() == s.train.cache_file()          # the same spec finds the same cache
    assert [y.numpy().tolist() for _, y in make_dataset(s2.train, 4, shuffle=True, seed=0)] == first
    assert sorted(p.name for p in (tmp_path / "cache" / "made").iterdir()) == written
    none = load_splits(DataSpec("images", {"path": str(root)}, cache="none"), model(), 0)
    assert none.train.cache.mode == "none" and "each epoch" in none.notes[0]


@pytest.mark.parametrize("environ, expected", [
    ({"KSPEC_CACHE_DIR": "/data/kc", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/data/kc"),
    ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/kspec/data"),
    ({"KSPEC_CACHE_DIR": " ", "XDG_CACHE_HOME": "", "HOME": "/h"}, "/h/.cache/kspec/data"),
])
def test_cache_root_resolution(environ, expected, monkeypatch):
    from compiler.data.stream import cache_root

    monkeypatch.setenv("HOME", environ["HOME"])               # expanduser reads the real environment
    assert cache_root(environ) == expected


def test_a_spec_cannot_choose_the_disk_cache_folder(tmp_path, capsys):
    from compiler.cli import main

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("  on_bad_file: skip\n", "  cache: {disk: /etc}\n") % {"root": tmp_path})
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "cache:" in text)
    assert f"{spec}:{line}:" in err and "a spec cannot choose where kspec writes outside its run directory" in err
    assert "(at data.cache.disk)" in err and "`data.cache: disk`" in err and "--cache-dir DIR" in err
    spec.write_text(SPEC.replace("  on_bad_file: skip\n", "  cache: disk\n") % {"root": tmp_path})
    assert main(["validate", str(spec)]) == 0


def test_cache_dir_flag_sets_the_folder_for_the_run_and_its_children(monkeypatch):
    from compiler.cli import _use_cache_dir, parser
    from compiler.data.stream import CACHE_DIR_ENV, cache_root

    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    for command in (["train", "s.yaml"], ["tune", "s.yaml"]):
        args = parser().parse_args([*command, "--cache-dir", "rel/cache"])
        _use_cache_dir(args)
        assert os.environ[CACHE_DIR_ENV] == os.path.abspath("rel/cache") == cache_root()


def _killed_fill(folder: Path, after: int) -> None:
    """A process that dies (os._exit, as kill -9 would) half-way through filling a disk cache."""
    code = f"""
import os, tensorflow as tf
from compiler.data.stream import fill_disk_cache
def die(i):
    if int(i) == {after}:
        os._exit(9)
    return i
ds = tf.data.Dataset.range(50).map(lambda i: tf.py_function(die, [i], tf.int64))
fill_disk_cache(ds, {str(folder)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr


def test_a_killed_fill_leaves_a_partial_that_the_next_run_ignores_and_later_removes(tmp_path):
    import tensorflow as tf

    from compiler.data import stream

    folder = tmp_path / "kspec-cache-k-train"
    _killed_fill(folder, after=20)
    partials = list(tmp_path.glob("kspec-cache-k-train.partial-*"))
    assert len(partials) == 1 and not folder.exists()
    assert any(p.name.endswith(".lockfile") for p in partials[0].iterdir())   # what tf.data left behind
    os.utime(partials[0], (0, 0))
    for f in partials[0].iterdir():
        os.utime(f, (0, 0))                                   # long untouched: a dead run's
    ds = tf.data.Dataset.range(50).map(lambda i: i * 2)
    stream.fill_disk_cache(ds, str(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kspec-cache-k-train"]
    np.testing.assert_array_equal(list(ds.cache(str(folder / "cache")).as_numpy_iterator()), np.arange(50) * 2)


def test_two_runs_filling_one_cache_keep_the_first_complete_copy(tmp_path):
    """The loser of the race (its rename fails: the folder exists) removes its copy and reads the winner's."""
    import tensorflow as tf

    from compiler.data import stream

    folder = tmp_path / "kspec-cache-k-train"
    ds = tf.data.Dataset.range(30)
    stream.fill_disk_cache(ds, str(folder))
    first = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    stream.fill_disk_cache(ds, str(folder))                   # a second run that started before the first ended
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == first
    assert [p.name for p in tmp_path.iterdir()] == ["kspec-cache-k-train"]
    assert list(ds.cache(str(folder / "cache")).as_numpy_iterator()) == list(range(30))


@pytest.mark.slow
def test_two_processes_fill_one_disk_cache_at_once(tmp_path):
    root = images(tmp_path / "pets", per_class=30, size=(40, 40))
    code = f"""
from compiler.data import load_splits, make_dataset
from compiler.spec.types import DataSpec, InputSpec, ModelSpec
m = ModelSpec((InputSpec("img", (8, 8, 3), "float32"),), (), ("y",))
s = load_splits(DataSpec("images", {{"path": {str(root)!r}}}, cache="disk"), m, 0)
print(sorted(sum((b[1].numpy().tolist() for b in make_dataset(s.train, 4, shuffle=False, seed=0)), [])))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KSPEC_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    labels = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert labels[0] == labels[1] and len(labels[0]) > 30            # both read every training example
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and left[0].startswith("kspec-cache-") and ".partial-" not in left[0]


# --------------------------------------------------------------------- bad image files

def _bomb(path: Path) -> None:
    """A PNG of 10000 x 10000 pixels (100 M, over MAX_PIXELS) that is only a few kB on disk."""
    assert 10000 * 10000 > MAX_PIXELS
    Image.new("L", (10000, 10000)).save(path, optimize=True)


BAD = {
    "truncated JPEG": ("cat/bad.jpg", lambda p: p.write_bytes((p.parent / "0.jpg").read_bytes()[:300]),
                       "truncated"),
    "not an image": ("cat/notes.txt", lambda p: p.write_text("hello"), "not an image file"),
    "image extension, text inside": ("cat/fake.png", lambda p: p.write_text("hello"), "cannot read image"),
    "0-byte file": ("cat/empty.jpg", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "broken symlink": ("cat/link.jpg", lambda p: os.symlink(p.parent / "gone.jpg", p), "broken symbolic link"),
    "FIFO": ("cat/pipe.jpg", lambda p: os.mkfifo(p), "FIFO"),
    "decompression bomb": ("cat/bomb.png", _bomb, "decompression bomb"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_file_is_named_before_training(tmp_path, case):
    name, make, expected = BAD[case]
    root = images(tmp_path / "pets", per_class=2)
    make(root / name)
    message = error(DataSpec("images", {"path": str(root)}))
    assert f"{root / name}: error:" in message and expected in message, message
    s = load_splits(DataSpec("images", {"path": str(root)}, on_bad_file="skip"), model(), 0)
    assert len(s.train) == 4 and [f for f, _ in s.skipped] == [str(root / name)]
    assert "skipped 1" in s.notes[-1]


def test_empty_class_folder(tmp_path):
    root = images(tmp_path / "pets", per_class=2)
    (root / "zebra").mkdir()
    message = error(DataSpec("images", {"path": str(root)}))
    assert f"{root / 'zebra'}: error:" in message and "no usable images" in message


def test_image_size_mismatch_with_the_model_input(tmp_path):
    root = images(tmp_path / "pets", per_class=2)
    message = error(DataSpec("images", {"path": str(root), "size": [6, 6]}), model((8, 8, 3)))
    assert "expects shape (8, 8, 3)" in message and "(6, 6, 3)" in message


# --------------------------------------------------------------------- issue 13: bounds on data files

def _csv(tmp_path, rows, header=("a", "b", "label"), name="d.csv", delimiter=","):
    path = tmp_path / name
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def flat(n=2):
    return ModelSpec((InputSpec("x", (n,), "float32"),), (), ("y",))


def test_mistyped_huge_label_is_an_error_at_its_line(tmp_path):
    rows = [[i, i * 2, i % 3] for i in range(60)]
    rows[37][2] = 100000000
    message = error(DataSpec("csv", {"path": _csv(tmp_path, rows), "target": "label"}), flat())
    assert "d.csv:39:1: error:" in message and "100000000" in message and "on line 39" in message
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2)), y=np.array([0, 1, 2, 1, 2 ** 63], dtype=np.uint64))
    message = error(DataSpec("npz", {"path": str(tmp_path / "d.npz")}), flat())
    assert str(2 ** 63) in message and "example 4" in message


def test_unique_text_column_is_not_one_hot_encoded(tmp_path):
    rows = [[f"id-{i:05d}", i % 7, i % 2] for i in range(40_000)]
    message = error(DataSpec("csv", {"path": _csv(tmp_path, rows, ("id", "b", "label")), "target": "label"}),
                    flat())
    assert "column 'id'" in message and "40,000 distinct values" in message and "features:" in message


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_csv_path_must_be_a_regular_file(tmp_path, kind):
    path = {"device": "/dev/zero", "fifo": str(tmp_path / "pipe.csv"), "folder": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    message = error(DataSpec("csv", {"path": path, "target": "label"}), flat())
    assert f"{path}: error:" in message and "regular files only" in message


def test_npz_with_a_0d_array_and_a_crafted_header(tmp_path):
    np.savez(tmp_path / "z.npz", x=np.float32(3.0), y=np.zeros(3))
    message = error(DataSpec("npz", {"path": str(tmp_path / "z.npz")}), flat())
    assert "array 'x' is a single value (0-d)" in message
    import zipfile

    header = np.lib.format
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        with z.open("x.npy", "w") as fh:
            header.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
        with z.open("y.npy", "w") as fh:
            header.write_array(fh, np.zeros(3))
    message = error(DataSpec("npz", {"path": str(tmp_path / "big.npz")}), flat())
    assert "declares shape (1000000000000,)" in message and "damaged or crafted" in message


def test_semicolon_csv_suggests_the_delimiter(tmp_path):
    path = _csv(tmp_path, [[1, 2, 0], [3, 4, 1]], delimiter=";")
    message = error(DataSpec("csv", {"path": path, "target": "label"}), flat())
    assert "d.csv:1:1: error:" in message and 'delimiter: ";"' in message
    s = load_splits(DataSpec("csv", {"path": path, "target": "label", "delimiter": ";"}), flat(), 0)
    assert len(s.train) == 2


def test_headerless_csv_with_column_names(tmp_path):
    path = tmp_path / "h.tsv"
    path.write_text("".join(f"{i}\t{i * 2}\t{i % 2}\n" for i in range(10)))
    s = load_splits(DataSpec("csv", {"path": str(path), "target": "c", "delimiter": "\t", "header": False,
                                     "columns": ["a", "b", "c"]}), flat(), 0)
    assert len(s.train) == 10 and s.feature_names["x"] == ["a", "b"] and s.class_names["y"] == ["0", "1"]
    s = load_splits(DataSpec("csv", {"path": str(path), "target": "column_3", "delimiter": "\t",
                                     "header": False}), flat(), 0)
    assert s.feature_names["x"] == ["column_1", "column_2"]


def test_prediction_csv_cells_are_never_formulas():
    from compiler.train.predict import to_csv

    text = to_csv({"class": ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "cat"], "p": [0.5] * 5})
    rows = list(csv.reader(text.splitlines()))
    assert [r[0] for r in rows[1:]] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "cat"]
    assert rows[1][1] == "0.5"


def test_predict_refuses_a_fifo_and_a_bomb(tmp_path):
    os.mkfifo(tmp_path / "in.npy")
    with pytest.raises(DataError) as e:
        read_inputs(str(tmp_path / "in.npy"), flat(), {})
    assert "FIFO" in str(e.value)
    _bomb(tmp_path / "bomb.png")
    with pytest.raises(DataError) as e:
        read_inputs(str(tmp_path / "bomb.png"), model(), {})
    assert "decompression bomb" in str(e.value)


# --------------------------------------------------------------------- the command line, end to end

SPEC = """\
kspec: 1
name: pets
seed: 0
data:
  source: {images: %(root)s}
  split: {validation: 0.25}
  on_bad_file: skip
model:
  inputs:
    img: {shape: [16, 16, 3]}
  layers:
    - Rescaling: {scale: 0.00392}
    - Conv2D: {filters: 4, kernel_size: 3, activation: relu}
    - GlobalAveragePooling2D: {}
    - Dense: {units: 2, activation: softmax}
      name: label
  outputs: [label]
train:
  optimizer: adam
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 8
  epochs: 2
"""


def kspec(*args, cwd=ROOT):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_evaluate_predict_on_an_image_folder(tmp_path):
    root = images(tmp_path / "pets", per_class=12, size=(20, 20))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    spec = tmp_path / "pets.yaml"
    spec.write_text(SPEC % {"root": root})
    run = tmp_path / "run"
    r = kspec("train", spec, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    assert "caching 24 decoded examples" in r.stdout and "skipped 1" in r.stdout
    info = json.loads((run / "data.json").read_text())
    assert info["sizes"] == {"train": 18, "validation": 6}
    assert [s["file"] for s in info["skipped"]] == [str(root / "dog" / "broken.jpg")]
    r = kspec("evaluate", run)
    assert r.returncode == 0 and "validation (6 examples)" in r.stdout, r.stderr
    r = kspec("evaluate", run, "--data", root)
    assert r.returncode == 0 and "pets (24 examples)" in r.stdout, r.stderr
    r = kspec("predict", run, root / "cat", "-o", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 12 and set(rows[0]) == {"class", "p_cat", "p_dog"}
    spec.write_text((SPEC % {"root": root}).replace("  on_bad_file: skip\n", ""))
    r = kspec("train", spec, "--run-dir", tmp_path / "run2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{root / 'dog' / 'broken.jpg'}: error: cannot read image" in r.stderr
    assert not (tmp_path / "run2").exists()


def test_arrays_keep_the_in_memory_path():
    s = load_splits(DataSpec("sklearn", {"name": "iris"}), flat(4), 0)
    assert isinstance(s.train, Arrays) and s.notes == ()
    assert s.train.sample(5).x["x"].shape == (5, 4)


# --------------------------------------------------------------------- CSV bigger than memory (streamed)

def _numbers_csv(path: Path, rows: int, bad: dict[int, str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    lines = ["a,b,c,d,label"]
    for i in range(rows):
        a, b, c, d = rng.normal(size=4)
        lines.append(f"{a:.3f},{b:.3f},{c:.3f},{d:.3f},{int(a > 0) + int(b > 0)}")
    for number, text in (bad or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_streamed_csv_splits_by_line_and_feeds_several_inputs(tmp_path):
    from compiler.data.csvstream import CsvStream

    path = _numbers_csv(tmp_path / "big.csv", 3000)
    two = ModelSpec((InputSpec("left", (2,), "float32"), InputSpec("right", (2,), "float32")), (), ("y",))
    data = DataSpec("csv", {"path": str(path), "target": "label", "stream": True,
                            "features": {"left": ["a", "b"], "right": ["c", "d"]}}, validation=0.2, test=0.1)
    s = load_splits(data, two, 0)
    assert isinstance(s.train, CsvStream) and "streaming" in s.notes[0]
    sizes = (len(s.train), len(s.validation), len(s.test))
    assert sum(sizes) == 3000 and abs(sizes[1] - 600) < 90 and abs(sizes[2] - 300) < 70
    seen = {}
    for name, part in s.splits().items():
        batches = list(make_dataset(part, 256, shuffle=name == "train", seed=1))
        seen[name] = sum(len(y) for _, y in batches)
        x, y = batches[0]
        assert set(x) == {"left", "right"} and tuple(x["left"].shape[1:]) == (2,) and y.dtype.name == "int32"
    assert (seen["train"], seen["validation"], seen["test"]) == sizes      # the counts are the pipeline's
    assert s.class_names["y"] == ["0", "1", "2"] and s.feature_names == {"left": ["a", "b"], "right": ["c", "d"]}
    sample = s.train.sample(4)
    assert sample.x["left"].shape == (4, 2)
    text = path.read_text().splitlines()
    assert f"{sample.x['left'][0, 0]:.3f}" in {line.split(",")[0] for line in text[1:]}


@pytest.mark.parametrize("bad, expected", [
    ("1.0,2.0,3.0,0", "line 2500 has 4 fields but the header has 5"),
    ("1.0,oops,3.0,4.0,1", "column 'b' holds numbers but has text on line 2500"),
    ("1.0,2.0,3.0,4.0,7", "has the label 7"),
    ("1.0,2.0,3.0,4.0,1,9", "line 2500 has 6 fields but the header has 5"),     # the next three: found by
    ("1.0,,3.0,4.0,1", "column 'b' is missing on line 2500"),                 # the csv op, named by Python
    ('1.0,"2.0\n3.0",3.0,4.0,1', "a quoted field on line 2500 holds a line break"),
])
def test_streamed_csv_bad_line_half_way_is_named(tmp_path, monkeypatch, bad, expected):
    import compiler.data.csvstream

    monkeypatch.setattr(compiler.data.csvstream, "SAMPLE_ROWS", 1000)      # the bad line is past the sample
    path = _numbers_csv(tmp_path / "big.csv", 3000, {2500: bad})
    s = load_splits(DataSpec("csv", {"path": str(path), "target": "label", "stream": True}), flat(4), 0)
    import tensorflow as tf

    from compiler.data.stream import explain_failure

    ds = make_dataset(s.train, 512, shuffle=False, seed=0)
    with pytest.raises(tf.errors.OpError):
        for _ in ds:
            pass
    with pytest.raises(DataError) as e:
        explain_failure(ds)
    assert f"{path}:2500:" in str(e.value) and expected in str(e.value), str(e.value)


def test_streamed_csv_training_order_is_seeded_and_changes_every_epoch(tmp_path):
    """Blocks of rows flow whole: every row still comes once per epoch, in an order that is
    the same for the same seed (resume) and different from one epoch to the next."""
    path = _numbers_csv(tmp_path / "big.csv", 3000)
    s = load_splits(DataSpec("csv", {"path": str(path), "target": "label", "stream": True},
                             validation=0.0, test=0.0), flat(4), 0)

    def two_epochs(seed):
        ds = make_dataset(s.train, 256, shuffle=True, seed=seed)
        return [np.concatenate([np.asarray(x)[:, 0] for x, _ in ds]) for _ in range(2)]

    first, second = two_epochs(1)
    again, _ = two_epochs(1)
    other, _ = two_epochs(2)
    column = np.array([float(line.split(",")[0]) for line in path.read_text().splitlines()[1:]], np.float32)
    assert np.array_equal(np.sort(first), np.sort(column)) and np.array_equal(np.sort(second), np.sort(column))
    assert not np.array_equal(first, column)                      # shuffled
    assert not np.array_equal(first, second)                      # reshuffled every epoch
    assert np.array_equal(first, again)                           # seeded
    assert not np.array_equal(first, other)


def test_streamed_csv_reads_quoted_fields(tmp_path):
    """RFC 4180: a quoted cell may hold the delimiter or a doubled quote; quoted numbers are numbers."""
    path = tmp_path / "quoted.csv"
    rows = ["name,size,colour,label"]
    for i in range(400):
        colour = ['"red, dark"', 'blue', '"say ""green"""'][i % 3]
        rows.append(f'"item {i}","{i / 100:.2f}",{colour},{"yes" if i % 2 else "no"}')
    path.write_text("\n".join(rows) + "\n")
    data = DataSpec("csv", {"path": str(path), "target": "label", "stream": True, "features": ["size", "colour"]},
                    validation=0.0, test=0.0)
    s = load_splits(data, flat(4), 0)
    assert s.feature_names == {"x": ["size", "colour=blue", "colour=red, dark", 'colour=say "green"']}
    x, y = next(iter(make_dataset(s.train, 400, shuffle=False, seed=0)))
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (400, 4) and np.allclose(x[:3, 0], [0.0, 0.01, 0.02])
    assert x[:3, 1:].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert s.class_names["y"] == ["no", "yes"] and y[:4].tolist() == [0, 1, 0, 1]


@pytest.mark.slow
def test_resume_after_kill_9_on_a_streamed_image_folder(tmp_path):
    import signal

    root = images(tmp_path / "pets", per_class=40, size=(16, 16))
    spec = tmp_path / "pets.yaml"
    spec.write_text((SPEC % {"root": root}).replace("epochs: 2", "epochs: 40"))
    run = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "compiler", "train", str(spec), "--run-dir", str(run)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    history = run / "history.csv"
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 4:     # header + 3 epochs
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = kspec("train", spec, "--run-dir", run, "--resume")
    assert r.returncode == 0, r.stderr
    epochs = [int(row["epoch"]) for row in csv.DictReader(open(history))]
    assert epochs == list(range(40))


def test_npz_inputs_memory_mapped_and_read_batch_by_batch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3, 2)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "big.npz", x=x, y=y)
    m = ModelSpec((InputSpec("x", (3, 2), "float32"),), (), ("y",))
    data = DataSpec("npz", {"path": str(tmp_path / "big.npz"), "stream": True}, validation=0.2,
                    preprocess=(Component("preprocess", "standardize", {}),))
    s = load_splits(data, m, 0)
    assert isinstance(s.train, Stream) and "memory-mapping 500 examples" in s.notes[0]
    assert (len(s.train), len(s.validation)) == (400, 100)
    np.testing.assert_array_equal(s.train.sample(5).x["x"], x[s.train.files[:5]])
    got = {}
    for xb, yb in make_dataset(s.train, 64, shuffle=True, seed=0):      # rows travel with their labels
        for row, label in zip(xb.numpy(), yb.numpy()):
            assert label == int(row[0, 0] > 0)
            got[row.tobytes()] = True
    assert len(got) == 400
    norm = input_layers(data, m, s.train)["x"][0]
    np.testing.assert_allclose(np.asarray(norm.mean).reshape(-1), x[s.train.files].mean(axis=(0, 1)), atol=1e-5)
    np.savez_compressed(tmp_path / "small.npz", x=x, y=y)
    message = error(DataSpec("npz", {"path": str(tmp_path / "small.npz"), "stream": True}), m)
    assert "compressed" in message and "np.savez" in message


def _example(features: dict):
    import tensorflow as tf

    def one(v):
        if isinstance(v, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
        if isinstance(v, float) or (isinstance(v, list) and isinstance(v[0], float)):
            return tf.train.Feature(float_list=tf.train.FloatList(value=v if isinstance(v, list) else [v]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v if isinstance(v, list) else [v]))
    return tf.train.Example(features=tf.train.Features(feature={k: one(v) for k, v in features.items()}))


def test_tfrecord_shards_stream_numbers_and_encoded_images(tmp_path):
    import io

    import tensorflow as tf

    rng = np.random.default_rng(0)
    for shard in range(3):
        with tf.io.TFRecordWriter(str(tmp_path / f"part-{shard}.tfrecord")) as w:
            for i in range(40):
                label = int(rng.integers(0, 3))
                buf = io.BytesIO()
                Image.fromarray(np.full((6, 6, 3), 60 * label, np.uint8)).save(buf, "PNG")
                w.write(_example({"v": [float(label), 1.0], "png": buf.getvalue(),
                                  "kind": ["a", "b", "c"][label].encode()}).SerializeToString())
    pattern = str(tmp_path / "part-*.tfrecord")
    features = {"v": {"dtype": "float32", "shape": [2]}, "png": {"dtype": "string"}, "kind": {"dtype": "string"}}
    s = load_splits(DataSpec("tfrecord", {"path": pattern, "features": features, "x": "v", "y": "kind"},
                             validation=0.25), flat(2), 0)
    assert s.class_names["y"] == ["a", "b", "c"] and len(s.train) + len(s.validation) == 120
    assert "3 TFRecord file(s)" in s.notes[0]
    n = 0
    for x, y in make_dataset(s.train, 16, shuffle=True, seed=0):
        np.testing.assert_array_equal(x.numpy()[:, 0], y.numpy())        # the label travels with its record
        n += len(y)
    assert n == len(s.train)
    s = load_splits(DataSpec("tfrecord", {"path": pattern, "features": features, "x": "png", "y": "kind"}),
                    model((6, 6, 3)), 0)
    x, y = next(iter(make_dataset(s.train, 8, shuffle=False, seed=0)))
    assert x.dtype.name == "uint8" and tuple(x.shape) == (8, 6, 6, 3)
    np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], 60 * y.numpy())
    with tf.io.TFRecordWriter(str(tmp_path / "part-9.tfrecord")) as w:
        w.write(_example({"v": [1.0, 1.0], "kind": b"a"}).SerializeToString())    # no "png"
    from compiler.data.stream import explain_failure

    s = load_splits(DataSpec("tfrecord", {"path": pattern, "features": features, "x": "png", "y": "kind"}),
                    model((6, 6, 3)), 0)
    ds = make_dataset(s.train, 200, shuffle=False, seed=0)
    with pytest.raises(tf.errors.OpError):
        list(ds)
    with pytest.raises(DataError) as e:
        explain_failure(ds)
    assert f"{tmp_path / 'part-9.tfrecord'}: error: record 0" in str(e.value) and "png" in str(e.value)


# --------------------------------------------------------------------- multi-worker sharding

@pytest.mark.parametrize("per_file, examples, workers, expected", [
    (True, 100, 1, "data"),        # one worker: nothing to shard
    (True, 100, 2, "files"),       # an image folder: each file decoded by one worker
    (True, 2, 2, "files"),         # as many files as workers: one each
    (True, 1, 2, "data"),          # fewer files than workers: a worker would get none
    (False, 100, 4, "data"),       # TFRecord / CSV rows: a record's split depends on its global position
])
def test_sharding_policy(per_file, examples, workers, expected):
    from compiler.data.shard import policy

    assert policy(per_file, examples, workers) == expected


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_each_worker_reads_a_disjoint_share_of_the_files(tmp_path, cache):
    """One worker's pipeline shards the file list before decoding, with tf.data's auto-sharding off
    (which would make every worker decode every file again); together the shares are the split."""
    import tensorflow as tf

    from compiler.data.shard import Sharding

    root = images(tmp_path / "pets", per_class=5)          # every image's pixel value names its file
    s = load_splits(DataSpec("images", {"path": str(root)}, cache=cache), model(), 0)
    shares = []
    for index in range(2):
        ds = s.train.dataset(3, True, 0, sharding=Sharding(2, index))
        assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        shares.append(sorted(int(x.mean()) for xb, _ in ds for x in xb.numpy()))
    assert len(shares[0]) == len(shares[1]) == 5 and not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(int(x.mean()) for x in s.train.sample(10).x["img"])
    one = make_dataset(s.train, 3, shuffle=True, seed=0)
    assert one.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


def test_predict_streams_a_big_csv_in_the_runs_layout(tmp_path, monkeypatch):
    """`kspec predict RUN BIG.csv`: a file over STREAM_BYTES is parsed block by block (the run's
    feature names say which columns, and a text column's categories, in order) and gives exactly
    the predictions of the in-memory reader; a bad line half-way is named."""
    import compiler.data.csvstream as csvstream
    from compiler.spec.validate import load_spec
    from compiler.train import train
    from compiler.train.predict import predict_run

    rng = np.random.default_rng(0)
    rows = ["a,colour,b,label"]
    for i in range(300):
        a, b = rng.normal(size=2)
        rows.append(f"{a:.3f},{['red', 'green', 'blue'][i % 3]},{b:.3f},{int(a + b > 0)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "spec.yaml").write_text(
        "kspec: 1\nname: big-predict\ndata:\n  source: {csv: train.csv, target: label}\nmodel:\n"
        "  inputs:\n    x: {shape: [5]}\n  layers:\n    - Dense: {units: 2, activation: softmax}\n      name: label\n"
        "  outputs: [label]\ntrain: {optimizer: adam, loss: sparse_categorical_crossentropy, epochs: 1}\n")
    run = train(load_spec(tmp_path / "spec.yaml"), run_dir=tmp_path / "run", verbose=0)
    new = tmp_path / "new.csv"
    new.write_text("b,colour,a\n" + "".join(f"{r.split(',')[2]},{r.split(',')[1]},{r.split(',')[0]}\n"
                                             for r in rows[1:]))       # other column order, no label
    in_memory = predict_run(run, str(new), str(tmp_path / "p1.csv"))["label"]
    monkeypatch.setattr(csvstream, "STREAM_BYTES", 0)
    feed = csvstream.predict_stream(str(new), load_spec(tmp_path / "spec.yaml").model,
                                    json.loads((run / "data.json").read_text())["feature_names"], 64)
    assert feed is not None
    streamed = predict_run(run, str(new), str(tmp_path / "p2.csv"))["label"]
    np.testing.assert_allclose(streamed, in_memory, rtol=1e-6)
    assert (tmp_path / "p1.csv").read_text() == (tmp_path / "p2.csv").read_text()
    lines = new.read_text().splitlines()
    lines[250] = "0.5,purple,0.1"
    new.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        predict_run(run, str(new), str(tmp_path / "p3.csv"))
    assert f"{new}:251:" in str(e.value) and "colour" in str(e.value)
    assert not (tmp_path / "p3.csv").exists()
