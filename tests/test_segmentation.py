"""Segmentation (issue 12): `{images: DIR, masks: DIR}` pairs, streamed like image folders.

The data is drawn at test time (scripts/make_segmentation_data.py: circles and squares on noise,
masks 0 background, 1 circle, 2 square) into tmp_path; each error case breaks one pair.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compiler.data import bound_masks, load_splits, make_dataset
from compiler.data.stream import Stream
from compiler.errors import DataError, Loc
from compiler.spec.types import Component, DataSpec, InputSpec, ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_segmentation_data", ROOT / "scripts" / "make_segmentation_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_shapes = _generator().write_shapes


def model(size=16):
    return ModelSpec((InputSpec("image", (size, size, 3), "float32"),), (), ("mask",))


def shapes(tmp_path: Path, n=12, size=20) -> Path:
    return write_shapes(tmp_path / "shapes", n=n, size=size)


def data(root: Path, **kw) -> DataSpec:
    params = {"path": str(root / "images"), "masks": str(root / "masks"), "size": [16, 16]}
    params.update(kw.pop("params", {}))
    return DataSpec("images", params, loc=Loc("spec.yaml", 4, 3), **kw)


def error(spec: DataSpec) -> str:
    started = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_splits(spec, model(), 0)
    assert time.perf_counter() - started < 5
    return str(e.value)


def test_pairs_are_streamed_masks_resized_nearest_and_split_unstratified(tmp_path):
    root = shapes(tmp_path, n=20, size=20)              # read at 16 x 16: both resized
    s = load_splits(data(root, validation=0.2), model(), 0)
    assert isinstance(s.train, Stream) and s.train.paired and s.tasks == {"mask": "segmentation"}
    assert (len(s.train), len(s.validation)) == (16, 4)
    assert any("not stratified" in note for note in s.notes)
    for image, mask in zip(s.train.files, s.train.masks):          # each image with its own mask
        assert Path(image).name == Path(mask).name and "images" in image and "masks" in mask
    x, y = next(iter(make_dataset(s.train, 8, shuffle=True, seed=0)))
    assert x.dtype.name == "uint8" and tuple(x.shape) == (8, 16, 16, 3)
    assert y.dtype.name == "uint8" and tuple(y.shape) == (8, 16, 16)
    assert set(np.unique(y.numpy())) <= {0, 1, 2}                    # NEAREST: no blended class indices
    sample = s.train.sample(3)
    assert sample.y["mask"].shape == (3, 16, 16) and sample.x["image"].shape == (3, 16, 16, 3)
    # the shapes are brighter than the noise: a mask's pixels mark the bright pixels of its image
    bright = sample.x["image"].mean(axis=-1) > 160
    assert (bright == (sample.y["mask"] > 0)).mean() > 0.9


def test_sub_folders_are_mirrored_and_extensions_may_differ(tmp_path):
    root = shapes(tmp_path, n=6, size=16)
    (root / "images" / "a").mkdir()
    (root / "masks" / "a").mkdir()
    Image.open(root / "images" / "000.png").convert("RGB").save(root / "images" / "a" / "x.jpg", quality=95)
    (root / "masks" / "000.png").rename(root / "masks" / "a" / "x.png")
    (root / "images" / "000.png").unlink()
    s = load_splits(data(root), model(), 0)
    pairs = dict(zip(map(str, s.train.files), map(str, s.train.masks)))
    assert pairs[str(root / "images" / "a" / "x.jpg")] == str(root / "masks" / "a" / "x.png") and len(pairs) == 6


def _break(root: Path, case: str) -> None:
    images, masks = root / "images", root / "masks"
    if case == "no mask":
        (masks / "003.png").unlink()
    elif case == "no image":
        (images / "003.png").unlink()
    elif case == "size":
        Image.new("L", (10, 12)).save(masks / "003.png")
    elif case == "rgb mask":
        Image.new("RGB", (20, 20)).save(masks / "003.png")
    elif case == "palette mask":
        Image.new("L", (20, 20)).convert("P").save(masks / "003.png")
    elif case == "jpeg mask":
        (masks / "003.png").unlink()
        Image.new("L", (20, 20)).save(masks / "003.jpg")
    elif case == "broken image":
        (images / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


CASES = {
    "no mask": ("images/003.png", ["image has no mask", "masks/003.*"]),
    "no image": ("masks/003.png", ["mask has no image", "images/003.*"]),
    "size": ("masks/003.png", ["10 x 12 pixels", "images/003.png is 20 x 20"]),
    "rgb mask": ("masks/003.png", ["has 3 channels", "one 8-bit grayscale channel"]),
    "palette mask": ("masks/003.png", ["palette image"]),
    "jpeg mask": ("masks/003.jpg", ["JPEG file", "lossless"]),
    "broken image": ("images/003.png", ["cannot read image"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_pair_is_named_and_skip_leaves_both_members_out(tmp_path, case):
    root = shapes(tmp_path)
    _break(root, case)
    named, words = CASES[case]
    message = error(data(root))
    assert message.startswith("spec.yaml:4:3: error: ") and "(at data.source)" in message
    assert f"{root / named}:" in message and all(w in message for w in words), message
    s = load_splits(data(root, on_bad_file="skip"), model(), 0)
    assert len(s.train) == 11 and str(root / named) in {f for f, _ in s.skipped}
    assert not {str(root / "images" / "003.png"), str(root / "masks" / "003.png")} & set(map(str, s.train.files))


def test_empty_folders_classes_and_geometric_augmentation_are_refused(tmp_path):
    root = shapes(tmp_path)
    (tmp_path / "empty").mkdir()
    assert "has no images" in error(data(root, params={"path": str(tmp_path / "empty")}))
    assert "has no masks" in error(data(root, params={"masks": str(tmp_path / "empty")}))
    assert "masks folder" in error(data(root, params={"masks": str(tmp_path / "nowhere")}))
    message = error(data(root, classes=("1",), classes_loc=Loc("spec.yaml", 9, 12)))
    assert message.startswith("spec.yaml:9:12: error: ") and "(at data.classes)" in message
    flip = Component("augment", "RandomFlip", {}, Loc("spec.yaml", 7, 7), "data.augment[0]")
    message = error(data(root, augment=(flip,)))
    assert message.startswith("spec.yaml:7:7: error: RandomFlip moves pixels") and "not supported" in message
    contrast = Component("augment", "RandomContrast", {"factor": 0.2}, Loc("spec.yaml", 7, 7), "data.augment[0]")
    assert len(load_splits(data(root, augment=(contrast,)), model(), 0).train) == 12


def test_a_mask_value_above_the_units_is_named_with_its_value(tmp_path):
    import tensorflow as tf

    root = shapes(tmp_path, n=40)
    s = load_splits(data(root), model(), 0)
    with pytest.raises(DataError, match="has shape"):
        bound_masks(s, {"mask": (8, 8, 3)})                     # the output must be at the masks' size
    late = s.train.masks[-1]                                 # past the eager sample: found as read
    Image.fromarray(np.full((20, 20), 7, np.uint8), mode="L").save(late)
    bounded = bound_masks(s, {"mask": (16, 16, 3)})
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(make_dataset(bounded.train, 8, shuffle=False, seed=0))
    with pytest.raises(DataError) as e:
        bounded.train.find_bad_file()                       # what a failed epoch calls
    assert str(e.value).startswith(f"{late}: error: mask holds the class index 7") and "3 units" in str(e.value)
    first = s.train.masks[0]
    Image.fromarray(np.full((20, 20), 3, np.uint8), mode="L").save(first)
    with pytest.raises(DataError, match="class index 3"):
        bound_masks(s, {"mask": (16, 16, 3)})                   # eagerly, on the sample


SPEC = """\
kspec: 1
name: shapes
seed: 0
data:
  source: {images: %(root)s/images, masks: %(root)s/masks, size: [32, 32]}
  split: {validation: 0.15, test: 0.15}
model:
  inputs:
    image: {shape: [32, 32, 3]}
  layers:
    - Rescaling: {scale: 0.00392}
    - Conv2D: {filters: 16, kernel_size: 3, padding: same, activation: relu}
    - Conv2D: {filters: 16, kernel_size: 3, padding: same, activation: relu}
    - Conv2D: {filters: 3, kernel_size: 1, padding: same, activation: softmax}
      name: mask
  outputs: [mask]
train:
  optimizer: {Adam: {learning_rate: 0.01}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  batch_size: 16
  epochs: 8
"""


@pytest.mark.slow
def test_train_evaluate_predict_a_segmentation_run(tmp_path, capsys):
    from compiler.cli import main

    root = write_shapes(tmp_path / "shapes", n=200, size=32)
    spec = tmp_path / "shapes.yaml"
    spec.write_text(SPEC % {"root": root})
    run = tmp_path / "run"
    assert main(["train", str(spec), "--run-dir", str(run), "--verbose", "0"]) == 0, capsys.readouterr().err
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "masks").iterdir())])
    baseline = (masks == 0).mean()                          # always "background"
    accuracy = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy > baseline + 0.05, (accuracy, baseline)
    assert json.loads((run / "data.json").read_text())["tasks"] == {"mask": "segmentation"}
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert "test (30 examples): accuracy" in capsys.readouterr().out
    assert main(["predict", str(run), str(root / "images"), "-o", str(tmp_path / "maps.npz")]) == 0
    saved = np.load(tmp_path / "maps.npz")
    assert saved["mask"].shape == (200, 32, 32, 3) and saved["mask_class"].shape == (200, 32, 32)
    assert (saved["mask_class"] == masks).mean() > baseline        # the maps follow the shapes
    assert main(["predict", str(run), str(root / "images"), "-o", str(tmp_path / "maps.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), saved["mask_class"])
    capsys.readouterr()
    assert main(["predict", str(run), str(root / "images")]) == 2
    assert "does not fit a CSV" in capsys.readouterr().err


def test_a_disk_cache_of_pairs_is_checked_against_each_model(tmp_path, monkeypatch):
    """The cache holds decoded masks; the bound on their values is checked after it, for the model at hand."""
    import dataclasses

    import tensorflow as tf

    monkeypatch.setenv("KSPEC_CACHE_DIR", str(tmp_path / "cache"))
    root = shapes(tmp_path, n=12)
    s = load_splits(data(root, cache="disk"), model(), 0)
    three = bound_masks(s, {"mask": (16, 16, 3)})
    first = [m.numpy() for _, m in make_dataset(three.train, 4, shuffle=False, seed=0)]
    assert len(list((tmp_path / "cache").iterdir())) == 1 and max(m.max() for m in first) == 2
    two = dataclasses.replace(s.train, reader=dataclasses.replace(s.train.reader, classes=2))
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(make_dataset(two, 4, shuffle=False, seed=0))    # read from the cache, and still refused
