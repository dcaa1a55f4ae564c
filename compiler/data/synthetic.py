"""The classic toy problems, generated with numpy from the spec's seed (no download, no file).

Each generator is a plain function whose keyword defaults ARE its documented
parameters: `{synthetic: line, a: 3}` overrides `a`, an unknown parameter is an
error that lists the real ones. Same seed, same data.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..spec.types import DataSpec
from .table import did_you_mean, source_error


@dataclass(frozen=True)
class Generated:
    """One toy data set: features, targets, and what kind of problem it is."""

    x: np.ndarray
    y: np.ndarray
    task: str
    class_names: list[str] | None = None


def line(rng, a=2.0, b=-1.0, noise=0.1, n=30):
    """y = a*x + b + noise, from n points with x uniform in [-1, 1] (fit a line: linear + MSE)."""
    x = rng.uniform(-1.0, 1.0, (n, 1))
    y = a * x + b + noise * rng.standard_normal((n, 1))
    return Generated(x.astype(np.float32), y.astype(np.float32), "regression")


def sort(rng, count=10, bits=6, n=10000):
    """Sort `count` random `bits`-bit numbers; inputs and sorted outputs scaled to [0, 1]."""
    top = 2 ** bits - 1
    numbers = rng.integers(0, top + 1, (n, count))
    x = (numbers / top).astype(np.float32)
    return Generated(x, np.sort(x, axis=1), "regression")


def parity(rng, bits=8, n=None):
    """n-bit parity: every bit string once (n omitted) or n random ones; y is 1 for an odd count."""
    if n is None:
        if bits > 20:
            raise ValueError(f"all {bits}-bit strings are too many; give `n` to sample some")
        x = (np.arange(2 ** bits)[:, None] >> np.arange(bits)[None, :]) & 1
    else:
        x = rng.integers(0, 2, (n, bits))
    y = (x.sum(axis=1, keepdims=True) % 2).astype(np.float32)   # (n, 1) for Dense(1, sigmoid)
    return Generated(x.astype(np.float32), y, "classification", ["even", "odd"])


def daily(rng, days=730, noise=0.1, window=14):
    """A noisy daily series (yearly + weekly seasons, slow trend) cut into windows -> next value."""
    if window >= days:
        raise ValueError(f"window ({window}) must be shorter than days ({days})")
    t = np.arange(days)
    series = (1.0 + 0.5 * np.sin(2 * np.pi * t / 365.25) + 0.1 * np.sin(2 * np.pi * t / 7)
              + 0.0005 * t + noise * rng.standard_normal(days))
    idx = np.arange(days - window)[:, None] + np.arange(window)[None, :]
    x = series[idx][..., None]
    y = series[window:][:, None]
    return Generated(x.astype(np.float32), y.astype(np.float32), "regression")


def moons(rng, n=200, noise=0.1):
    """Two interleaving half circles (scikit-learn's make_moons): a non-linear 2-class problem."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2 ** 31)))
    return Generated(x.astype(np.float32), y.astype(np.int32), "classification", ["0", "1"])


def blobs(rng, n=300, centers=3, features=2, std=1.0):
    """Gaussian clusters (scikit-learn's make_blobs), one class per cluster."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n, centers=centers, n_features=features, cluster_std=std,
                      random_state=int(rng.integers(2 ** 31)))
    return Generated(x.astype(np.float32), y.astype(np.int32), "classification",
                     [str(i) for i in range(centers)])


def xor(rng, n=200, noise=0.1):
    """Noisy copies of the four XOR corners; y = x0 XOR x1, shape (n, 1) for Dense(1, sigmoid)."""
    corners = rng.integers(0, 2, (n, 2))
    x = corners + noise * rng.standard_normal((n, 2))
    y = (corners[:, 0] ^ corners[:, 1])[:, None]
    return Generated(x.astype(np.float32), y.astype(np.float32), "classification", ["0", "1"])


GENERATORS = {f.__name__: f for f in (line, sort, parity, daily, moons, blobs, xor)}


def generate(data: DataSpec, seed: int) -> Generated:
    """Run the generator `data.params["name"]` with the spec's parameters, checked against its defaults."""
    name = data.params.get("name")
    if name not in GENERATORS:
        raise source_error(data, f"unknown synthetic data set {name!r}{did_you_mean(name, GENERATORS)} "
                           f"(known: {', '.join(GENERATORS)})")
    fn = GENERATORS[name]
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k != "rng"}
    kwargs = {}
    for key, value in data.params.items():
        if key == "name":
            continue
        if key not in defaults:
            raise source_error(data, f"unknown parameter {key!r} for synthetic {name!r}"
                               f"{did_you_mean(key, defaults)} (parameters: {', '.join(defaults)})")
        kwargs[key] = _check(data, name, key, value, defaults[key])
    try:
        return fn(np.random.default_rng(seed), **kwargs)
    except ValueError as exc:
        raise source_error(data, f"synthetic {name!r}: {exc}") from None


def _check(data: DataSpec, name: str, key: str, value, default):
    """Counts are positive integers, the rest numbers: caught here, not deep inside numpy."""
    integer = isinstance(default, int) or default is None
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        kind = "a positive integer" if integer else "a number"
        raise source_error(data, f"parameter {key!r} of synthetic {name!r} must be {kind}, got {value!r}")
    return value
