"""The data stage: load a spec's data, fit it to the model's inputs, split it, feed it to Keras.

    load_splits   DataSpec + ModelSpec -> Splits (train / validation / test Arrays)
    input_layers  preprocessing + augmentation as Keras layers for the builder
    make_dataset  Arrays or Stream -> batched, prefetching tf.data.Dataset
    input_dataset the inputs of a split as a batched dataset (to adapt in-model layers)
    read_inputs   a file of new inputs (for `kspec predict`)
    check_labels  class labels vs the output layer's units (the builder knows those)
    bound_masks   segmentation masks vs the output's shape and units (checked as they are read)

Flow inside `load_splits`: sources (file / generator -> Table keyed by model
names) -> `classes` selection -> bind (reshape, shape/dtype/NaN checks) -> target preprocessing
(`one_hot`) -> split. Importing this package does not import TensorFlow or
Keras (`kspec validate` stays instant); the functions that need them import
them when called.
"""

from __future__ import annotations

from ..spec.types import DataSpec, ModelSpec
from .bind import bind
from .classes import keep_classes
from .csvstream import stream_csv, wants_stream
from .inputs import read_inputs
from .pipeline import input_dataset, make_dataset
from .preprocess import check_steps, encode_targets, input_layers
from .sources import load_table
from .split import Arrays, Splits, check_labels, split_table
from .streamed import bound_masks, check_streamed, stream_splits


def load_splits(data: DataSpec, model: ModelSpec, seed: int) -> Splits:
    """Load the data described by `data`, checked against `model`, split deterministically by `seed`
    (or by `data.split_seed` when the spec sets `split: {seed: N}`).

    A streamed source (image files) is split on its list of files; its splits are `Stream`s."""
    seed = data.split_seed if data.split_seed is not None else seed
    check_steps(data)
    if wants_stream(data):                      # a CSV file bigger than memory
        return stream_csv(data, model, seed)
    if data.source == "tfrecord":
        from .tfrecord import stream_tfrecord

        return stream_tfrecord(data, model, seed)
    table = keep_classes(load_table(data, model, seed), data)
    if table.reader is not None:
        return stream_splits(split_table(encode_targets(check_streamed(table, data, model), data), data, seed),
                             table, data, seed)
    table = bind(table, data, model)
    return split_table(encode_targets(table, data), data, seed)


__all__ = ["Arrays", "Splits", "load_splits", "input_layers", "make_dataset", "input_dataset", "read_inputs",
           "check_labels", "bound_masks"]
