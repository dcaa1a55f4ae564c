"""`tf.data` input pipelines: cache, shuffle, batch, prefetch.

A single input (output) is passed as a plain tensor, not a one-key dict, so
`model.fit` sees exactly the structure it sees for `fit(x, y)`; several inputs
or outputs are dicts keyed by their names, which Keras matches to the model's
named inputs and outputs. Prefetching overlaps the next batch with the current
step, which is what makes this as fast as `fit` on numpy arrays.
"""

from __future__ import annotations

from .split import Arrays, Examples


def make_dataset(arrays: Examples, batch_size: int, shuffle: bool, seed: int, cache: bool = True):
    """A batched `tf.data.Dataset` of (x, y), reshuffled each epoch (deterministically from `seed`).

    `arrays` may be a streamed split (`stream.Stream`): it builds its own file-reading pipeline."""
    import tensorflow as tf

    if not isinstance(arrays, Arrays):
        return arrays.dataset(batch_size, shuffle, seed, cache=cache)

    x = _structure(arrays.x)
    elements = (x, _structure(arrays.y)) if arrays.y else x
    ds = tf.data.Dataset.from_tensor_slices(elements)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(arrays), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # tf.data's model-based autotuning has nothing to tune here (no parallel map; prefetch keeps its
    # own buffer tuner), yet with it on, the first batch of an epoch waited about 1.2 s in a third
    # to a half of the epochs while the CPU sat idle (2-core machine, the 28x28 CNN of
    # bench/train_speed.py: 1.2 s epochs became 2.4 s). Off, no epoch stalled (README "CPU speed").
    options.autotune.enabled = False
    # In-memory arrays: under MultiWorkerMirroredStrategy each worker takes its share of batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _structure(arrays: dict):
    return next(iter(arrays.values())) if len(arrays) == 1 else dict(arrays)


def input_dataset(part, batch_size: int = 256):
    """The inputs of a split (Arrays or Stream) as a batched dataset, in order: what in-model layers
    (Normalization, TextVectorization) are adapted on. A single input is a tensor, several a dict."""
    import tensorflow as tf

    if not isinstance(part, Arrays):
        return part.dataset(batch_size, shuffle=False, seed=0, targets=False, cache=False)
    return tf.data.Dataset.from_tensor_slices(_structure(part.x)).batch(batch_size)
