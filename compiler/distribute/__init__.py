"""Training on several devices and machines, on TensorFlow's tf.distribute.

    cluster.py      TF_CONFIG from `--cluster HOST:PORT,... --worker-index I`; who is the chief; free ports
    strategy.py     train.distribute -> a tf.distribute strategy; GPU memory growth; mixed precision `auto`;
                    synchronized BatchNormalization
    keras_patch.py  a targeted fix of Keras 3.15's `fit` under MultiWorkerMirroredStrategy (keras#20585)
    launch.py       `kspec train SPEC --workers N`: N local worker processes on loopback

The trainer (compiler/train/run.py) asks `strategy.plan` whether this process is the
chief (only the chief writes the run directory; the other workers write the same
files to a temporary directory that is deleted, so every worker runs exactly the same
collective operations), then `strategy.start` for the strategy, and builds the model
in its scope. Importing this package does not import TensorFlow.
"""

from __future__ import annotations
