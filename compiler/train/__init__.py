"""The train stage: a validated Spec -> a trained model and a complete, resumable run directory.

    train(spec, run_dir=None, resume=False, workers=1, verbose=None, splits=None) -> Path   (run.py)
    evaluate.evaluate_run(run, data=None)                                      (evaluate.py)
    predict.predict_run(run, input, output=None)                               (predict.py)
    compiler.rundir: the run directory (layout, claim, lock, atomic writes), shared by every stage

Importing this package is cheap; TensorFlow and Keras are imported when `train` is called.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) is not for kspec's users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = ["train"]


def train(spec, run_dir=None, resume=False, workers=1, verbose=None, splits=None):
    """Train `spec` into a run directory and return its path (see compiler.train.run.train;
    `train.ensemble: N > 1`: compiler.train.ensemble.train_ensemble)."""
    if spec.train is not None and spec.train.ensemble > 1:
        from .ensemble import train_ensemble

        return train_ensemble(spec, run_dir=run_dir, resume=resume, workers=workers, verbose=verbose,
                              splits=splits)
    from .run import train as _train

    return _train(spec, run_dir=run_dir, resume=resume, workers=workers, verbose=verbose, splits=splits)
