"""A stratified hold-out split, the very one `sklearn.model_selection.train_test_split(..., stratify=y,
random_state=seed)` draws, without importing scikit-learn (about 2 s of start-up; see bundled.py).

It follows scikit-learn's StratifiedShuffleSplit step by step, with the same random number stream
(numpy's RandomState(seed)): the same examples land in the same splits, so runs, the examples'
results and the tests' numbers do not change (tests/test_perf.py compares both on many label sets).
It raises ValueError where scikit-learn does (a class with one example; fewer train or test
examples than classes), which the caller takes as "split without stratifying".
"""

from __future__ import annotations

import numpy as np


def train_test_split(index: np.ndarray, test_size: int, stratify: np.ndarray,
                     random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) of `index`, `test_size` held out, class proportions kept."""
    index = np.asarray(index)
    y = np.asarray(stratify)
    n = len(index)
    n_test = int(test_size)
    n_train = n - n_test
    if len(y) != n or not 0 < n_test < n:
        raise ValueError("test_size must be between 1 and the number of examples - 1")
    if y.ndim == 2:
        y = np.array([" ".join(row.astype("str")) for row in y])
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    y_indices = y_indices.reshape(-1)
    n_classes = classes.shape[0]
    if np.min(class_counts) < 2 or n_train < n_classes or n_test < n_classes:
        raise ValueError("too few examples per class to stratify")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(random_state)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(n_classes):
        permutation = rng.permutation(class_counts[i])
        members = class_indices[i].take(permutation, mode="clip")
        train.extend(members[:n_i[i]])
        test.extend(members[n_i[i]:n_i[i] + t_i[i]])
    kept = rng.permutation(train)
    held = rng.permutation(test)
    return index[kept], index[held]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's utils.extmath._approximate_mode: per-class draws, ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
