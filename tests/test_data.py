"""The data stage: every source, splits, preprocessing layers, pipelines, predict inputs, and every DataError.

Tiny data only, no training: the point is that each source lands in the shapes
the model declared and that each mistake names the file, column, row or array.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from compiler.data import Arrays, Splits, check_labels, input_layers, load_splits, make_dataset, read_inputs
from compiler.errors import DataError, KspecError, Loc, SpecError
from compiler.spec.types import Component, DataSpec, InputSpec, ModelSpec


def model(inputs=None, outputs=("y",)):
    """A ModelSpec with inputs {name: shape} or {name: (shape, dtype)}; the nodes don't matter here."""
    specs = []
    for name, s in (inputs or {"x": (None,)}).items():
        shape, dtype = s if len(s) == 2 and isinstance(s[0], tuple) else (s, "float32")
        specs.append(InputSpec(name, tuple(shape), dtype))
    return ModelSpec(tuple(specs), (), tuple(outputs))


def spec(source, params, **kw):
    return DataSpec(source, params, **kw)


def step(name, **args):
    return Component("preprocess", name, args)


def message(exc_info) -> str:
    return str(exc_info.value)


def write_csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------- sources

@pytest.mark.parametrize("name, n, features, task, classes", [
    ("iris", 150, 4, "classification", 3),
    ("digits", 1797, 64, "classification", 10),
    ("wine", 178, 13, "classification", 3),
    ("breast_cancer", 569, 30, "classification", 2),
    ("diabetes", 442, 10, "regression", 0),
])
def test_sklearn_sources(name, n, features, task, classes):
    s = load_splits(spec("sklearn", {"name": name}), model({"x": (features,)}), 0)
    assert len(s.train) == n and s.validation is None and s.test is None
    assert s.task == task and s.tasks == {"y": task} and s.source == f"sklearn:{name}"
    assert s.train.x["x"].dtype == np.float32 and s.train.x["x"].shape == (n, features)
    assert len(s.class_names.get("y", [])) == classes
    assert len(s.feature_names["x"]) == features
    if task == "regression":
        assert s.train.y["y"].shape == (n, 1) and s.train.y["y"].dtype == np.float32
    else:
        assert s.train.y["y"].dtype == np.int32


def test_digits_reshaped_to_image():
    s = load_splits(spec("sklearn", {"name": "digits"}, reshape=(8, 8, 1)), model({"pixels": (8, 8, 1)}, ["digit"]), 0)
    x = s.train.x["pixels"]
    assert x.shape == (1797, 8, 8, 1) and x.min() == 0 and x.max() == 16
    assert s.class_names["digit"] == [str(i) for i in range(10)]


def test_csv_numeric_categorical_and_string_target(tmp_path):
    path = write_csv(tmp_path, "age,color,species\n1,red,cat\n2.5,blue,dog\n3,red,cat\n4,green,dog\n")
    s = load_splits(spec("csv", {"path": path, "target": "species"}), model({"x": (4,)}), 0)
    assert s.feature_names["x"] == ["age", "color=blue", "color=green", "color=red"]
    order = np.argsort(s.train.x["x"][:, 0])            # the training split is shuffled
    np.testing.assert_array_equal(s.train.x["x"][order], [[1, 0, 0, 1], [2.5, 1, 0, 0], [3, 0, 0, 1], [4, 0, 1, 0]])
    assert s.class_names["y"] == ["cat", "dog"] and s.task == "classification"
    np.testing.assert_array_equal(s.train.y["y"][order], [0, 1, 0, 1])
    assert s.source == path


def test_csv_integer_target_is_classification_float_is_regression(tmp_path):
    path = write_csv(tmp_path, "a,b,label,price\n1,2,0,1.5\n3,4,2,2.5\n5,6,1,3.5\n")
    s = load_splits(spec("csv", {"path": path, "target": "label", "features": ["a", "b"]}), model(), 0)
    assert s.task == "classification" and s.class_names["y"] == ["0", "1", "2"]
    s = load_splits(spec("csv", {"path": path, "target": "price", "features": ["a", "b"]}), model(), 0)
    assert s.task == "regression" and s.train.y["y"].shape == (3, 1) and "y" not in s.class_names


def test_csv_targets_for_several_outputs_and_stacked(tmp_path):
    path = write_csv(tmp_path, "a,kind,size\n1,x,0.5\n2,y,1.5\n3,x,2.5\n")
    s = load_splits(spec("csv", {"path": path, "target": ["kind", "size"]}), model(outputs=("kind", "size")), 0)
    assert s.tasks == {"kind": "classification", "size": "regression"}
    assert s.train.x["x"].shape == (3, 1) and s.targets == {"kind": "kind", "size": "size"}
    s = load_splits(spec("csv", {"path": path, "target": ["a", "size"]}), model(), 0)
    assert s.train.y["y"].shape == (3, 2) and s.task == "regression"


def test_npz_default_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 0, 1, 0, 1]))
    s = load_splits(spec("npz", {"path": str(path)}), model({"x": (2,)}), 0)
    assert s.train.x["x"].dtype == np.float32 and s.task == "classification"


def test_npz_named_arrays_for_several_inputs_and_outputs(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pixels=np.zeros((5, 4)), meta=np.ones((5, 2)), digit=np.arange(5), size=np.linspace(0, 1, 5))
    m = model({"pixels": (2, 2, 1), "meta": (2,)}, ["digit", "size"])
    with pytest.raises(DataError) as e:        # reshape is for single-input models
        load_splits(spec("npz", {"path": str(path)}, reshape=(2, 2, 1)), m, 0)
    assert "single-input" in message(e)
    np.savez(path, pixels=np.zeros((5, 2, 2, 1)), meta=np.ones((5, 2)), digit=np.arange(5), size=np.linspace(0, 1, 5))
    s = load_splits(spec("npz", {"path": str(path)}), m, 0)
    assert set(s.train.x) == {"pixels", "meta"} and s.tasks == {"digit": "classification", "size": "regression"}
    assert s.train.y["size"].shape == (5, 1)


def test_npz_selected_keys_and_autoencoder(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=np.random.rand(4, 3))
    s = load_splits(spec("npz", {"path": str(path), "x": "images", "y": "images"}), model({"x": (3,)}), 0)
    np.testing.assert_array_equal(s.train.x["x"], s.train.y["y"])


def _write_images(root, size=(10, 12), classes=("cat", "dog"), per_class=3):
    from PIL import Image

    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((*size, 3), 40 * (k + 1) + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_images_source_resizes_to_model_input(tmp_path):
    _write_images(tmp_path / "imgs")
    s = load_splits(spec("images", {"path": str(tmp_path / "imgs")}), model({"img": (8, 8, 3)}), 0)
    assert s.train.sample(10).x["img"].shape == (6, 8, 8, 3) and s.class_names["y"] == ["cat", "dog"]
    assert sorted(s.train.y["y"].tolist()) == [0, 0, 0, 1, 1, 1]
    s = load_splits(spec("images", {"path": str(tmp_path / "imgs"), "size": [4, 5], "color_mode": "grayscale"}),
                    model({"img": (None, None, 1)}), 0)
    assert s.train.sample(6).x["img"].shape == (6, 4, 5, 1)


def test_synthetic_line():
    s = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 0)
    x, y = s.train.x["x"], s.train.y["y"]
    assert x.shape == (30, 1) and y.shape == (30, 1) and s.task == "regression"
    assert np.abs(y - (2 * x - 1)).max() < 0.5
    s = load_splits(spec("synthetic", {"name": "line", "a": 3, "b": 0, "noise": 0, "n": 5}), model({"x": (1,)}), 0)
    np.testing.assert_allclose(s.train.y["y"], 3 * s.train.x["x"], rtol=1e-6)


def test_synthetic_sort():
    s = load_splits(spec("synthetic", {"name": "sort", "n": 50}), model({"x": (10,)}), 0)
    x, y = s.train.x["x"], s.train.y["y"]
    assert x.shape == y.shape == (50, 10) and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(np.sort(x, axis=1), y)
    np.testing.assert_allclose(x * 63, np.round(x * 63), atol=1e-4)


def test_synthetic_parity_all_strings():
    s = load_splits(spec("synthetic", {"name": "parity", "bits": 4}), model({"x": (4,)}), 0)
    x, y = s.train.x["x"], s.train.y["y"]
    assert x.shape == (16, 4) and y.shape == (16, 1) and y.dtype == np.float32
    assert len({tuple(r) for r in x.tolist()}) == 16
    np.testing.assert_array_equal(y[:, 0], x.sum(axis=1) % 2)
    assert s.task == "classification"


def test_synthetic_daily_windows():
    s = load_splits(spec("synthetic", {"name": "daily", "days": 60, "window": 7}), model({"x": (7, 1)}), 0)
    assert s.train.x["x"].shape == (53, 7, 1) and s.train.y["y"].shape == (53, 1)


@pytest.mark.parametrize("name, shape, classes", [("moons", (2,), 2), ("blobs", (2,), 3), ("xor", (2,), 2)])
def test_synthetic_extras(name, shape, classes):
    s = load_splits(spec("synthetic", {"name": name, "n": 40}), model({"x": shape}), 0)
    assert len(s.train) == 40 and s.task == "classification" and len(s.class_names["y"]) == classes


def test_synthetic_is_seeded():
    a = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 1)
    b = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 1)
    c = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 2)
    np.testing.assert_array_equal(a.train.x["x"], b.train.x["x"])
    assert not np.array_equal(a.train.x["x"], c.train.x["x"])


def test_integer_input_dtype_is_cast(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([[1.0, 2.0], [3.0, 4.0]]), y=np.array([0.5, 1.5]))
    s = load_splits(spec("npz", {"path": str(path)}), model({"x": ((2,), "int32")}), 0)
    assert s.train.x["x"].dtype == np.int32
    np.savez(path, x=np.array([[1.0, 2.5], [3.0, 4.0]]), y=np.array([0.5, 1.5]))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path)}), model({"x": ((2,), "int32")}), 0)
    assert "non-integer" in message(e) and "example 0" in message(e)


# ------------------------------------------------------------- source errors

def test_unknown_sklearn_name():
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "irsi"}), model(), 0)
    assert "'irsi'" in message(e) and "did you mean 'iris'" in message(e) and "breast_cancer" in message(e)


def test_unknown_source_kind_and_parameter():
    with pytest.raises(DataError) as e:
        load_splits(spec("parquet", {}), model(), 0)
    assert "'parquet'" in message(e) and "csv" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "iris", "nme": 1}), model(), 0)
    assert "'nme'" in message(e)


def test_unknown_synthetic_name_and_parameters():
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "parit"}), model(), 0)
    assert "did you mean 'parity'" in message(e) and "line, sort, parity, daily" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "line", "slope": 2}), model(), 0)
    assert "'slope'" in message(e) and "a, b, noise, n" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "line", "n": -3}), model(), 0)
    assert "positive integer" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "daily", "days": 10, "window": 14}), model(), 0)
    assert "window (14)" in message(e)


def test_csv_empty_cell_names_file_column_and_row(tmp_path):
    path = write_csv(tmp_path, "age,height,label\n30,1.7,a\n40,1.8,b\n,1.6,a\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "label"}), model(), 0)
    assert f"{path}:4:1: error: column 'age' is empty on line 4 (missing values are not allowed" in message(e)
    assert e.value.exit_code == 2


def test_csv_missing_marker_nonfinite_and_text_in_numbers(tmp_path):
    path = write_csv(tmp_path, "age,height,label\n30,1.7,a\n40,NA,b\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "label"}), model(), 0)
    assert f"{path}:3:4:" in message(e) and "column 'height' is missing ('NA') on line 3" in message(e)
    path = write_csv(tmp_path, "age,height,label\n30,inf,a\n40,1.5,b\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "label"}), model(), 0)
    assert "column 'height' is not a finite number on line 2" in message(e)
    path = write_csv(tmp_path, "age,label\n30,a\n4O,b\n50,a\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "label"}), model(), 0)
    assert f"{path}:3:1:" in message(e) and "column 'age' holds numbers but line 3 has '4O'" in message(e)


def test_csv_missing_target_lists_columns(tmp_path):
    path = write_csv(tmp_path, "sepal,petal,species\n1,2,a\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "specis"}), model(), 0)
    text = message(e)
    assert "'specis'" in text and "data.csv" in text and "did you mean 'species'" in text
    assert "columns: sepal, petal, species" in text
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "species", "features": ["sepla"]}), model(), 0)
    assert "feature column 'sepla'" in message(e) and "did you mean 'sepal'" in message(e)


def test_csv_structure_errors(tmp_path):
    path = write_csv(tmp_path, "a,b\n1,2\n3\n")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "b"}), model(), 0)
    assert f"{path}:3:1:" in message(e) and "line 3 has 1 field but the header has 2" in message(e)
    path = write_csv(tmp_path, "a,b\n", name="empty.csv")
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "b"}), model(), 0)
    assert "no data rows" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": str(tmp_path / "nope.csv"), "target": "b"}), model(), 0)
    assert "nope.csv" in message(e) and "not found" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": write_csv(tmp_path, "a,b\n1,2\n")}), model(), 0)
    assert "needs `target: COLUMN` (columns of data.csv: a, b)" in message(e)


def test_npz_missing_key_names_file_and_keys(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, pixels=np.zeros((3, 2)), digit=np.arange(3))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path)}), model({"a": (2,), "b": (2,)}, ["digit"]), 0)
    assert "d.npz has no array 'a'" in message(e) and "arrays present: pixels, digit" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path), "x": "pixels", "y": "digits"}), model({"x": (2,)}), 0)
    assert "no array 'digits'" in message(e) and "did you mean 'digit'" in message(e)


def test_npz_nan_names_array_and_example(tmp_path):
    path = tmp_path / "d.npz"
    x = np.zeros((4, 2))
    x[2, 1] = np.nan
    np.savez(path, x=x, y=np.arange(4.0))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path)}), model({"x": (2,)}), 0)
    assert "array 'x'" in message(e) and "NaN at example 2" in message(e) and str(path) in message(e)
    np.savez(path, x=np.zeros((4, 2)), y=np.array([0.0, np.inf, 1.0, 2.0]))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path)}), model({"x": (2,)}), 0)
    assert "target 'y'" in message(e) and "infinite value at example 1" in message(e)


def test_npz_length_mismatch_and_bad_file(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(3))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(path)}), model({"x": (2,)}), 0)
    assert "different numbers of examples" in message(e) and "input 'x': 4" in message(e)
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(bad)}), model(), 0)
    assert "bad.npz" in message(e) and "cannot read" in message(e)


def test_image_errors(tmp_path):
    with pytest.raises(DataError) as e:
        load_splits(spec("images", {"path": str(tmp_path / "missing")}), model({"i": (4, 4, 3)}), 0)
    assert "missing" in message(e) and "not found" in message(e)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError) as e:
        load_splits(spec("images", {"path": str(tmp_path / "flat")}), model({"i": (4, 4, 3)}), 0)
    assert "no sub-folders" in message(e)
    _write_images(tmp_path / "imgs", per_class=1)
    (tmp_path / "imgs" / "cat" / "broken.png").write_text("nope")
    with pytest.raises(DataError) as e:
        load_splits(spec("images", {"path": str(tmp_path / "imgs")}), model({"i": (4, 4, 3)}), 0)
    assert "broken.png" in message(e) and "cannot read image" in message(e)


def test_single_matrix_for_a_multi_input_model():
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "iris"}), model({"a": (4,), "b": (4,)}), 0)
    assert "2 inputs (a, b)" in message(e) and "sklearn:iris" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "iris"}), model({"x": (4,)}, ["p", "q"]), 0)
    assert "2 outputs (p, q)" in message(e)


def test_shape_mismatch_suggests_reshape():
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "digits"}), model({"pixels": (8, 8, 1)}), 0)
    assert ("input 'pixels' expects shape (8, 8, 1) per example but the data (sklearn:digits features) has "
            "shape (64,); "
            "add `reshape: [8, 8, 1]` under data") in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "digits"}, reshape=(8, 8, 2)), model({"pixels": (8, 8, 2)}), 0)
    assert "cannot reshape examples of shape (64,) (64 values) into (8, 8, 2)" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("sklearn", {"name": "iris"}), model({"x": (5,)}), 0)
    assert "expects shape (5,)" in message(e) and "reshape" not in message(e)


# ---------------------------------------------------------------------- splits

def test_split_sizes_and_determinism():
    d = spec("sklearn", {"name": "iris"}, validation=0.1, test=0.2)
    a, b = load_splits(d, model({"x": (4,)}), 7), load_splits(d, model({"x": (4,)}), 7)
    assert (len(a.train), len(a.validation), len(a.test)) == (105, 15, 30)
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(a, part).x["x"], getattr(b, part).x["x"])
    c = load_splits(d, model({"x": (4,)}), 8)
    assert not np.array_equal(a.test.x["x"], c.test.x["x"])
    full = load_splits(spec("sklearn", {"name": "iris"}), model({"x": (4,)}), 7).train
    rows = sorted(r for p in (a.train, a.validation, a.test) for r in np.c_[p.x["x"], p.y["y"]].tolist())
    assert rows == sorted(np.c_[full.x["x"], full.y["y"]].tolist())      # nothing lost or repeated


def test_split_is_stratified_for_classification():
    s = load_splits(spec("sklearn", {"name": "iris"}, test=0.2, validation=0.2), model({"x": (4,)}), 3)
    assert np.bincount(s.test.y["y"]).tolist() == [10, 10, 10]
    assert np.bincount(s.validation.y["y"]).tolist() == [10, 10, 10]
    u = load_splits(spec("sklearn", {"name": "iris"}, test=0.2, stratify=False), model({"x": (4,)}), 3)
    assert len(u.test) == 30 and np.bincount(u.test.y["y"]).tolist() != [10, 10, 10]


def test_stratify_falls_back_when_a_class_is_too_small(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(10.0)[:, None], y=np.array([0] * 9 + [1]))
    s = load_splits(spec("npz", {"path": str(path)}, test=0.3, stratify=True), model({"x": (1,)}), 0)
    assert (len(s.train), len(s.test)) == (7, 3)


def test_split_fractions_that_leave_nothing():
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "line", "n": 4}, validation=0.5, test=0.5), model({"x": (1,)}), 0)
    assert "no training examples" in message(e)


# --------------------------------------------------------------------- classes

def test_classes_keeps_and_renumbers_in_the_listed_order():
    digits = load_splits(spec("sklearn", {"name": "digits"}), model({"x": (64,)}), 0).train
    d = spec("sklearn", {"name": "digits"}, classes=("7", "5"), test=0.5)
    s = load_splits(d, model({"x": (64,)}), 0)
    assert s.class_names == {"y": ["7", "5"]}
    x = np.concatenate([s.train.x["x"], s.test.x["x"]])
    y = np.concatenate([s.train.y["y"], s.test.y["y"]])
    origin = np.concatenate([s.train.origin, s.test.origin])
    original = digits.y["y"][np.argsort(digits.origin)][origin]         # the label each example had
    assert sorted(set(original)) == [5, 7] and len(y) == int(np.isin(digits.y["y"], [5, 7]).sum())
    np.testing.assert_array_equal(y, np.where(original == 7, 0, 1))
    np.testing.assert_array_equal(x, digits.x["x"][np.argsort(digits.origin)][origin])
    assert abs(np.mean(s.test.y["y"]) - np.mean(s.train.y["y"])) < 0.02      # still stratified


def test_classes_by_text_label_and_errors_name_the_example_of_the_file(tmp_path):
    path = write_csv(tmp_path, "a,species\n1,cat\n2,dog\n3,eel\n4,dog\n")
    d = spec("csv", {"path": path, "target": "species"}, classes=("eel", "dog"))
    s = load_splits(d, model({"x": (1,)}), 0)
    assert s.class_names == {"y": ["eel", "dog"]}
    assert sorted(zip(s.train.x["x"][:, 0], s.train.y["y"])) == [(2.0, 1), (3.0, 0), (4.0, 1)]
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.array([[0.0], [1.0], [np.nan]]), y=np.array([3, 1, 2]))
    with pytest.raises(DataError) as e:
        load_splits(spec("npz", {"path": str(npz)}, classes=("1", "2")), model({"x": (1,)}), 0)
    assert "NaN at example 2 (counting from 0)" in message(e)       # the file's example 2, not the selection's 1
    loc = Loc("spec.yaml", 5, 12)
    with pytest.raises(DataError) as e:
        load_splits(spec("csv", {"path": path, "target": "species"}, classes=("eel", "dgo"), classes_loc=loc),
                    model({"x": (1,)}), 0)
    assert message(e).startswith(f"spec.yaml:5:12: error: class 'dgo' is not in {path}; did you mean 'dog'? "
                                 f"(its classes: cat, dog, eel) (at data.classes)")
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "line"}, classes=("1",)), model({"x": (1,)}), 0)
    assert "`classes` selects examples by the class of one classification target" in message(e)


def test_classes_in_a_spec_file_validate_and_reach_the_data_stage(tmp_path):
    from compiler.spec.validate import load_spec

    path = tmp_path / "s.yaml"
    path.write_text("kspec: 1\ndata:\n  source: {sklearn: iris}\n  classes: [setosa, virginica]\n"
                    "model:\n  inputs: {x: {shape: [4]}}\n  layers: [{Dense: {units: 2}}]\n")
    data = load_spec(path).data
    assert data.classes == ("setosa", "virginica") and data.classes_loc.line == 4
    path.write_text(path.read_text().replace("[setosa, virginica]", "[]"))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "s.yaml:4:12: error:" in str(e.value) and "(at data.classes)" in str(e.value)


# --------------------------------------------------------------- preprocessing

def test_one_hot_targets_and_check_labels():
    d = spec("sklearn", {"name": "iris"}, test=0.2, preprocess=(step("one_hot"),))
    s = load_splits(d, model({"x": (4,)}), 0)
    assert s.train.y["y"].shape == (120, 3) and s.train.y["y"].dtype == np.float32
    check_labels(s, {"y": 3})
    with pytest.raises(DataError) as e:
        check_labels(s, {"y": 4})
    assert "3 one-hot columns but output 'y' has 4 units" in message(e)
    with pytest.raises(DataError) as e:
        load_splits(spec("synthetic", {"name": "line"}, preprocess=(step("one_hot"),)), model({"x": (1,)}), 0)
    assert "one_hot applies to classification targets" in message(e)


def test_check_labels_sparse_binary_and_regression(tmp_path):
    path = write_csv(tmp_path, "a,species\n1,0\n2,9\n3,4\n")
    s = load_splits(spec("csv", {"path": path, "target": "species"}), model({"x": (1,)}, ["digit"]), 0)
    with pytest.raises(DataError) as e:
        check_labels(s, {"digit": 3})
    assert "labels in column 'species' of data.csv go up to 9 but output 'digit' has 3 units (the first on line 3)" in message(e)
    check_labels(s, {"digit": 10})
    parity = load_splits(spec("synthetic", {"name": "parity", "bits": 3}), model({"x": (3,)}), 0)
    check_labels(parity, {"y": 1})                      # one sigmoid unit, labels 0/1
    line = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 0)
    check_labels(line, {"y": 1})
    with pytest.raises(DataError) as e:
        check_labels(line, {"y": 3})
    assert "target 'y' has 1 value per example but output 'y' has 3 units" in message(e)


def test_standardize_is_fitted_on_the_training_split_only():
    d = spec("sklearn", {"name": "iris"}, test=0.3, preprocess=(step("standardize"),))
    s = load_splits(d, model({"x": (4,)}), 0)
    (norm,) = input_layers(d, model({"x": (4,)}), s.train)["x"]
    mean = np.asarray(norm.mean).reshape(-1)
    np.testing.assert_allclose(mean, s.train.x["x"].mean(axis=0), rtol=1e-5)
    everything = np.concatenate([s.train.x["x"], s.test.x["x"]])
    assert not np.allclose(mean, everything.mean(axis=0), rtol=1e-5)
    out = np.asarray(norm(s.train.x["x"]))
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)


def test_preprocessing_order_and_kinds():
    d = spec("synthetic", {"name": "line"}, preprocess=(step("log1p"), step("standardize"),
                                                       step("rescale", scale=2.0, offset=1.0)))
    m = model({"x": (1,)})
    s = load_splits(d, m, 0)
    log, norm, rescale = input_layers(d, m, s.train)["x"]
    assert (type(log).__name__, type(norm).__name__, type(rescale).__name__) == ("Log1p", "Normalization", "Rescaling")
    x = s.train.x["x"]
    logged = np.sign(x) * np.log1p(np.abs(x))
    np.testing.assert_allclose(np.asarray(norm.mean).reshape(-1), logged.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rescale(np.array([[1.0]]))), [[3.0]])
    assert [layer.name for layer in (log, norm, rescale)] == ["x_log1p", "x_standardize", "x_rescale"]


def test_augmentation_layers_follow_preprocessing_on_chosen_inputs():
    m = model({"img": (4, 4, 1), "ids": ((3,), "int32")})
    d = spec("npz", {}, preprocess=(step("rescale", scale=1 / 255),),
             augment=(Component("augment", "RandomFlip", {"mode": "horizontal"}),
                      Component("augment", "GaussianNoise", {"stddev": 0.1, "inputs": ["img"]})))
    train = Arrays({"img": np.zeros((2, 4, 4, 1), np.float32), "ids": np.zeros((2, 3), np.int32)}, {"y": np.zeros(2)})
    layers = input_layers(d, m, train)
    assert [type(layer).__name__ for layer in layers["img"]] == ["Rescaling", "RandomFlip", "GaussianNoise"]
    assert layers["ids"] == []
    assert layers["img"][1].mode == "horizontal"


def test_preprocessing_errors():
    m = model({"x": (2,)})
    train = Arrays({"x": np.ones((3, 2), np.float32)}, {"y": np.zeros(3)})
    with pytest.raises(SpecError) as e:
        input_layers(spec("npz", {}, preprocess=(step("standardise"),)), m, train)
    assert "did you mean 'standardize'" in message(e)
    with pytest.raises(SpecError) as e:
        input_layers(spec("npz", {}, augment=(Component("augment", "RandomFlp", {}),)), m, train)
    assert "did you mean 'RandomFlip'" in message(e)
    with pytest.raises(SpecError) as e:
        input_layers(spec("npz", {}, augment=(Component("augment", "RandomFlip", {"mood": "x"}),)), m, train)
    assert "RandomFlip" in message(e) and "mood" in message(e)
    with pytest.raises(SpecError) as e:
        input_layers(spec("npz", {}, preprocess=(step("log1p", inputs=["z"]),)), m, train)
    assert "'z', which is not a model input" in message(e)
    with pytest.raises(SpecError):
        load_splits(spec("sklearn", {"name": "iris"}, preprocess=(step("normalise"),)), model({"x": (4,)}), 0)


def test_log1p_values_and_save_load_round_trip(tmp_path):
    import keras

    from compiler.layers import Log1p

    x = np.array([[-9.0, 0.0, 99.0]], np.float32)
    np.testing.assert_allclose(np.asarray(Log1p()(x)), [[-np.log(10), 0, np.log(100)]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(Log1p(signed=False)(x[:, 1:])), [[0, np.log(100)]], rtol=1e-6)
    inp = keras.Input((3,))
    m = keras.Model(inp, keras.layers.Dense(1)(Log1p(signed=False, name="log")(inp)))
    m.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("log"), Log1p) and loaded.get_layer("log").signed is False
    np.testing.assert_allclose(loaded.predict(np.abs(x), verbose=0), m.predict(np.abs(x), verbose=0), rtol=1e-6)


# ------------------------------------------------------------------- pipelines

def test_make_dataset_single_and_multi_structure():
    single = Arrays({"x": np.arange(10, dtype=np.float32)[:, None]}, {"y": np.arange(10)})
    ds = make_dataset(single, 4, shuffle=False, seed=0)
    batches = list(ds.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2] and batches[0][0].shape == (4, 1)
    multi = Arrays({"a": np.zeros((5, 2)), "b": np.ones((5, 3))}, {"p": np.zeros(5), "q": np.ones((5, 1))})
    x, y = next(make_dataset(multi, 5, shuffle=True, seed=0).as_numpy_iterator())
    assert set(x) == {"a", "b"} and set(y) == {"p", "q"} and x["b"].shape == (5, 3)


def test_make_dataset_shuffle_is_seeded_and_reshuffles():
    arrays = Arrays({"x": np.arange(50, dtype=np.float32)}, {"y": np.arange(50)})
    ds = make_dataset(arrays, 50, shuffle=True, seed=3)
    first, second = [b[1].tolist() for b in ds.as_numpy_iterator()], [b[1].tolist() for b in ds.as_numpy_iterator()]
    assert sorted(first[0]) == list(range(50)) and first != second
    again = make_dataset(arrays, 50, shuffle=True, seed=3)
    assert [b[1].tolist() for b in again.as_numpy_iterator()] == first


# ----------------------------------------------------------------- read_inputs

def test_read_inputs_csv_by_feature_names(tmp_path):
    path = write_csv(tmp_path, "color,species,age\nblue,cat,2\nred,dog,3\n")
    m = model({"x": (4,)})
    x = read_inputs(path, m, {"x": ["age", "color=blue", "color=green", "color=red"]})["x"]
    np.testing.assert_array_equal(x, [[2, 1, 0, 0], [3, 0, 0, 1]])
    bad = write_csv(tmp_path, "color,age\npink,2\n", name="bad.csv")
    with pytest.raises(DataError) as e:
        read_inputs(bad, m, {"x": ["age", "color=blue", "color=green", "color=red"]})
    assert f"{bad}:2:1:" in message(e) and "'pink'" in message(e) and "known: blue, green, red" in message(e)
    with pytest.raises(DataError) as e:
        read_inputs(path, m, {"x": ["age", "weight"]})
    assert "feature 'weight' is not a column" in message(e)


def test_read_inputs_headerless_csv_npz_npy_and_images(tmp_path):
    m = model({"pixels": (2, 2, 1)})
    path = write_csv(tmp_path, "1,2,3,4\n5,6,7,8\n")
    x = read_inputs(path, m, {})["pixels"]
    assert x.shape == (2, 2, 2, 1) and x[1, 1, 1, 0] == 8
    assert read_inputs(path, m, {"pixels": ["a", "b", "c", "d"]})["pixels"].shape == (2, 2, 2, 1)
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 4)))
    assert read_inputs(str(tmp_path / "in.npz"), m, {})["pixels"].shape == (3, 2, 2, 1)
    np.save(tmp_path / "in.npy", np.zeros((3, 2, 2, 1)))
    assert read_inputs(str(tmp_path / "in.npy"), m, {})["pixels"].dtype == np.float32
    with pytest.raises(DataError) as e:
        read_inputs(str(tmp_path / "in.npy"), model({"x": (3,)}), {})
    assert "expects shape (3,)" in message(e)
    _write_images(tmp_path / "imgs", per_class=1)
    x = read_inputs(str(tmp_path / "imgs" / "cat"), model({"img": (6, 6, 3)}), {})["img"]
    assert x.shape == (1, 6, 6, 3)
    with pytest.raises(DataError) as e:
        read_inputs(str(tmp_path / "in.json"), m, {})
    assert "unsupported input file" in message(e)


# --------------------------------------------------------------------- general

def test_errors_are_kspec_errors_with_exit_status_2():
    with pytest.raises(KspecError) as e:
        load_splits(spec("sklearn", {"name": "nope"}), model(), 0)
    assert e.value.exit_code == 2


def test_importing_the_data_stage_does_not_import_tensorflow():
    code = ("import sys, compiler.data; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_splits_is_a_frozen_dataclass():
    s = load_splits(spec("synthetic", {"name": "line"}), model({"x": (1,)}), 0)
    assert isinstance(s, Splits) and s.splits().keys() == {"train"}
    with pytest.raises(Exception):
        s.task = "x"


def test_standardize_keeps_constant_training_features_finite():
    """A pixel blank in every training image must not explode where it is lit at test time."""
    import keras

    from compiler.data.preprocess import _keep_constant_features_finite

    x = np.random.default_rng(0).random((50, 3)).astype("float32")
    x[:, 1] = 0.0
    layer = keras.layers.Normalization()
    layer.adapt(x)
    _keep_constant_features_finite(layer)
    out = keras.ops.convert_to_numpy(layer(np.array([[0.5, 1.0, 0.5]], "float32")))
    assert out[0, 1] == pytest.approx(1.0)          # centred (mean 0), not divided by ~0
    assert np.all(np.abs(out) < 10)
