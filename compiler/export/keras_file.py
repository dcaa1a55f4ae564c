"""`--format keras`: a copy of the run's .keras file, checked by loading it back with Keras."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

DIRECTORY = False
DEFAULT_NAME = "model.keras"
SUFFIX = ".keras"


def check_available() -> None:
    pass


def runtime_name() -> str:
    import keras

    return f"Keras {keras.__version__}"


def write(source, target: Path) -> dict:
    shutil.copyfile(source.model_path, target)
    return {}


def run(target: Path, source, info: dict) -> list[np.ndarray]:
    from .signature import keras_outputs
    from .source import load_model

    return keras_outputs(load_model(target), source.inputs)
