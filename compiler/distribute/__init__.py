"""Training on several devices and machines, on TensorFlow's tf.distribute.

    cluster.py      TF_CONFIG from `--cluster HOST:PORT,... --worker-index I`; who is the chief; free ports
    strategy.py     train.distribute -> a tf.distribute strategy; GPU memory growth; mixed precision `auto`;
                    synchronized BatchNormalization
    launch.py       `kspec train SPEC --workers N`: N local worker processes on loopback

The keras#20585 fix of `fit` under MultiWorkerMirroredStrategy lives with the other uses of
private Keras API, in compiler/keras_compat/multi_worker_fix.py.

The trainer (compiler/train/run.py) asks `strategy.plan` whether this process is the
chief (only the chief writes the run directory; the other workers write the same
files to a temporary directory that is deleted, so every worker runs exactly the same
collective operations), then `strategy.start` for the strategy, and builds the model
in its scope. Importing this package does not import TensorFlow.
"""

from __future__ import annotations
