"""scikit-learn's small data sets read from the files scikit-learn ships, without importing scikit-learn.

`import sklearn.datasets` pulls in SciPy and most of scikit-learn: about 2 s on the 2-core reference
machine, more than everything else kspec does before the first training step of the iris example
(README "Start-up"). The four classification sets are plain CSV files in scikit-learn's package
directory (found with `importlib.util.find_spec`, which imports nothing); this module reads them
as `sklearn.datasets.load_*` does, to the same arrays and names (tests/test_perf.py compares
them). `load` returns None for anything else (diabetes is scaled by scikit-learn's own code), or
when the files are not where this scikit-learn version keeps them: the caller then uses
scikit-learn itself.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FEATURES = {
    "iris": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"],
    "wine": ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
             "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280/od315_of_diluted_wines",
             "proline"],
    "digits": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
}
FILES = {"iris": "iris.csv", "wine": "wine_data.csv", "digits": "digits.csv.gz"}
MAX_ROWS = 100_000          # these files hold a few thousand rows; anything bigger is not them


@dataclass
class Bunch:
    data: np.ndarray
    target: np.ndarray
    target_names: np.ndarray
    feature_names: list[str] = field(default_factory=list)


def _data_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load(name: str) -> Bunch | None:
    directory = _data_dir()
    if name not in FILES or directory is None or not (directory / FILES[name]).is_file():
        return None
    try:
        if name == "digits":
            with gzip.open(directory / FILES[name], "rt") as f:
                table = np.loadtxt(f, delimiter=",", max_rows=MAX_ROWS)
            return Bunch(table[:, :-1], table[:, -1].astype(int), np.arange(10), FEATURES[name])
        with open(directory / FILES[name], encoding="utf-8", newline="") as f:
            rows = csv.reader(f)
            head = next(rows)
            n, features = int(head[0]), int(head[1])
            if not 0 < n <= MAX_ROWS or features != len(FEATURES[name]):
                return None
            data, target = np.empty((n, features)), np.empty((n,), dtype=int)
            for i, row in enumerate(rows):
                data[i] = np.asarray(row[:-1], dtype=np.float64)
                target[i] = int(row[-1])
            return Bunch(data, target, np.array(head[2:]), FEATURES[name])
    except (OSError, ValueError, IndexError, StopIteration):
        return None
