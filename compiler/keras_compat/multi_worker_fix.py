"""A targeted fix of Keras 3's `fit` under MultiWorkerMirroredStrategy (keras issue 20585).

With several worker processes (TF_CONFIG naming two or more workers), `model.fit`
fails on every worker of Keras 3.15.1 / TensorFlow 2.21 with

    ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type
    (<class 'tensorflow.python.distribute.values.PerReplica'>) to a Tensor.

although the cluster itself forms. Two places in keras/src/backend/tensorflow/trainer.py
reduce values across replicas in a way that only works with one worker:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch of the distributed
   dataset to build the model's metrics and optimizer, and calls
   `strategy.reduce("MEAN", batch, axis=None)` on the whole `(x, y)` *structure*.
   `Strategy.reduce` does not accept a nest ("TODO: support `value` being a nest" in
   distribute_lib.py); with one worker the value goes through
   `reduce_non_distributed_value`, which lets it pass, but with several workers it
   reaches `CollectiveAllReduce.reduce`, which tries to turn the tuple of PerReplica
   into a tensor: the error above. The batch is only used for its shapes and dtypes, so
   the fix takes this worker's first replica's part of each element (no collective op).

2. `reduce_per_replica(..., reduction="auto"|"mean")` — the reduction of the step's
   outputs (the logs: loss, metrics) in `one_step_on_data` — calls
   `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode. The logs are scalars, so
   `axis=0` fails ("Invalid reduction dimension 0 for input with 0 dimensions") once
   the first error is out of the way. With one worker Keras averages across replicas
   only (`tf.reduce_mean(local_results, axis=0)`); the fix does the same across
   workers: `strategy.reduce("MEAN", v, axis=None)`. "sum" gets `axis=None` too
   (`Strategy.reduce` requires the argument, which Keras leaves out). "concat"
   (predict) and "first" already work and are left to Keras.

What the logs then hold is what Keras logs with MirroredStrategy on one machine: each
replica's running metric (Keras's metric variables are SyncOnRead, read locally inside
the step), averaged over all replicas, so every worker logs the same values and makes
the same decisions (EarlyStopping, ReduceLROnPlateau, the best epoch).

`apply()` patches the module in place, once, and only when a multi-worker strategy is
used (compiler.distribute.strategy calls it); with one worker, MirroredStrategy or no
strategy, the patched functions hand over to Keras's own code unchanged.
tests/test_distribute.py::test_keras_patch_is_needed_and_sufficient runs a two-process
`fit` without and with it.
"""

from __future__ import annotations

_applied = False


def apply() -> bool:
    """Install the fix (idempotent). Returns True if this call installed it."""
    global _applied
    if _applied:
        return False
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica

    def multi_worker(strategy) -> bool:
        return strategy is not None and trainer._collective_all_reduce_multi_worker(strategy)

    def local_part(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return value.values[0]
        return value

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            # Shapes and dtypes are all the symbolic build needs: this worker's first replica's batch.
            data_batch = tree.map_structure(local_part, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if multi_worker(strategy) and reduction in ("auto", "mean", "sum"):
            op = "SUM" if reduction == "sum" else "MEAN"
            return tree.map_structure(lambda v: strategy.reduce(op, v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    # setattr: mypy does not know that functions take attributes; __wrapped__ lets the originals be found.
    setattr(_maybe_symbolic_build, "__wrapped__", original_build)
    setattr(reduce_per_replica, "__wrapped__", original_reduce)
    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica      # looked up as a module global at trace time
    _applied = True
    return True


def applied() -> bool:
    return _applied
