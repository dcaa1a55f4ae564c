"""Write the small data files of the model examples (siamese, text Transformer, Wide & Deep, text) into examples/data/.

Everything is made offline from the seed: the siamese pairs from scikit-learn's digits, the token
sequences and the tabular rows from numpy. Run it again to remake the files exactly:

    python scripts/make_model_examples_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "examples" / "data"


def siamese(rng, n=600) -> dict:
    """Pairs of handwritten digits (8x8, scaled to [0, 1]); `same` is 1 when both show the same digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float16), digits.target
    left = rng.integers(0, len(x), n)
    same = rng.random(n) < 0.5
    right = np.empty(n, dtype=int)
    for i in range(n):
        pool = np.flatnonzero((y == y[left[i]]) == same[i])
        right[i] = rng.choice(pool)
    return {"left": x[left], "right": x[right], "same": same.astype(np.float16)[:, None]}


def tokens(rng, n=1000, length=16, vocabulary=50) -> dict:
    """Sequences of token ids; `label` is 1 when token 7 comes before token 3 (order matters, so positions do)."""
    ids = rng.integers(10, vocabulary, (n, length))
    label = rng.random(n) < 0.5
    for i in range(n):
        a, b = sorted(rng.choice(length, 2, replace=False))
        ids[i, a], ids[i, b] = (7, 3) if label[i] else (3, 7)
    return {"tokens": ids.astype(np.int8), "label": label.astype(np.int8)}


def wide_deep(rng, n=1000) -> dict:
    """Three categorical features and four numbers; `buy` depends on a crossing of two categories and the numbers."""
    color, size, shape = rng.integers(0, 5, n), rng.integers(0, 4, n), rng.integers(0, 3, n)
    numbers = rng.normal(size=(n, 4)).astype(np.float16)
    score = (color == size) * 1.5 + numbers[:, 0] - 0.5 * numbers[:, 1] + (shape == 2) * 0.5
    buy = (score + 0.3 * rng.normal(size=n) > 0.5).astype(np.int8)
    return {"color": color.astype(np.int8)[:, None], "size": size.astype(np.int8)[:, None],
            "shape": shape.astype(np.int8)[:, None], "numbers": numbers, "buy": buy}


def reviews(rng, n=800) -> dict:
    """Short made-up reviews as raw text; `positive` says whether their opinion words lean positive."""
    good = "great lovely superb fine delightful charming excellent".split()
    bad = "awful dull poor boring terrible clumsy weak".split()
    filler = "the film plot cast music story ending was and a with very quite rather".split()
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = list(rng.choice(filler, rng.integers(4, 8)))
        opinion = rng.choice(good if positive else bad, 2).tolist() + rng.choice(bad if positive else good, 1).tolist()
        for word in opinion:
            words.insert(int(rng.integers(0, len(words) + 1)), word)
        texts.append(" ".join(words).capitalize() + ".")
        labels.append(int(positive))
    return {"text": np.array(texts)[:, None], "positive": np.array(labels, dtype=np.int8)}


def main() -> None:
    rng = np.random.default_rng(0)
    for name, make in (("siamese_digits", siamese), ("order_tokens", tokens), ("wide_deep", wide_deep),
                       ("reviews", reviews)):
        np.savez_compressed(OUT / f"{name}.npz", **make(rng))
        print(f"wrote {OUT / name}.npz")


if __name__ == "__main__":
    main()
