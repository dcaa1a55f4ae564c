"""Multi-worker input: which worker reads which examples.

Under MultiWorkerMirroredStrategy, tf.data's `AutoShardPolicy.DATA` makes every worker read
and decode every example and keep its share: N workers decode N times the data. Where an
example is a file of its own (an image folder, segmentation pairs) and there are at least as
many files as workers, each worker's pipeline is built by `strategy.distribute_datasets_from_function`
instead: it shards the file list before decoding (`ds.shard(workers, index)`) and batches by
the per-replica batch, so each file is decoded by one worker and no batch is split again.
(Sharding the list inside a dataset handed to `fit` as usual is wrong: the strategy re-batches
each worker's batches as if they were global ones, and drops examples: measured, a 2-worker
validation counted 8 of its 10 images.)

TFRecord shards stay on DATA: a record's split (train / validation / test) is a hash of its
position in the whole record stream, which sharding by file would renumber. Arrays in memory
and streamed CSV stay on DATA as well (their examples are rows, not files).
"""

from __future__ import annotations

from dataclasses import dataclass

FILES, DATA = "files", "data"


@dataclass(frozen=True)
class Sharding:
    """One input pipeline's place among the workers that read the same split."""

    workers: int = 1
    index: int = 0


def policy(per_file: bool, examples: int, workers: int) -> str:
    """FILES (shard the file list before decoding) or DATA (tf.data's element-wise auto-sharding).
    `per_file`: each example is a file of its own (image folders, segmentation pairs)."""
    if workers > 1 and per_file and examples >= workers:
        return FILES
    return DATA


def distributed_dataset(part, strategy, workers: int, global_batch: int, shuffle: bool, seed: int):
    """`part` (a streamed split) for `fit` under a multi-worker `strategy`: sharded by file where
    `policy` says so (a distributed dataset), else the usual dataset (DATA auto-sharding)."""
    from .pipeline import make_dataset
    from .stream import Stream, register

    per_file = isinstance(part, Stream) and not getattr(part.reader, "batched", False)
    if policy(per_file, len(part), workers) != FILES:
        return make_dataset(part, global_batch, shuffle=shuffle, seed=seed)

    def one_pipeline(context):
        return part.dataset(context.get_per_replica_batch_size(global_batch), shuffle, seed,
                            sharding=Sharding(context.num_input_pipelines, context.input_pipeline_id))

    return register(strategy.distribute_datasets_from_function(one_pipeline), part)
