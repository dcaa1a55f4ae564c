"""The served run: what is known without TensorFlow (`read_run`), and the model behind one `tf.function`.

`read_run` is the fast, TensorFlow-free half: it re-validates the run's spec.yaml and reads
data.json and metrics.json, so a wrong RUN fails before the server starts. The spec's
`plugins:` key is never imported here: a served run's code comes only from `--plugin`.

`ServedModel` loads model.keras with Keras `safe_mode` (off only with `--trust`) and wraps
`model(x, training=False)` in one `tf.function` whose input signature leaves the batch
dimension open (`None`), so batches of any size reuse one trace.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Diagnostic, KspecError, SpecError
from ..rundir import RunDir, read_json
from ..spec.types import Spec
from . import ServeError

IMAGE_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class InputInfo:
    """One model input as a request sees it."""

    name: str
    shape: tuple                     # per example; None = any size
    dtype: str
    features: tuple[str, ...] = ()   # recorded CSV/feature names (`/predict` record fields), or ()
    image: tuple | None = None       # ((height, width), color mode) when {"b64": image bytes} is accepted


@dataclass
class RunInfo:
    path: Path
    spec: Spec
    name: str
    inputs: list[InputInfo]
    outputs: list[str]
    info: dict                       # data.json: tasks, class names, feature names
    metrics: dict
    spec_hash: str
    has_curves: bool
    extra: dict = field(default_factory=dict)

    def task(self, output: str) -> str:
        return (self.info.get("tasks") or {}).get(output) or "regression"

    def class_names(self, output: str) -> list[str]:
        return list((self.info.get("class_names") or {}).get(output) or [])


def read_run(path: str) -> RunInfo:
    """The run's spec, inputs, outputs, data facts and metrics: no TensorFlow, no model file read."""
    from ..spec.validate import load_spec

    run = RunDir(path)
    if not run.path.is_dir():
        raise ServeError(Diagnostic(f"run directory {run.path} does not exist"))
    for required in (run.spec, run.model):
        if not required.is_file():
            raise ServeError(Diagnostic(f"{run.path} holds no {required.name}; is it a finished kspec run?"))
    try:
        spec = load_spec(run.spec)
    except SpecError as exc:
        if re.search(r"^plugins:", run.spec.read_text(errors="replace"), re.M):
            raise SpecError(exc.diagnostics + [Diagnostic(
                f"{run.spec} names `plugins:`, which kspec serve never imports",
                hint="pass each plugin module you trust with --plugin MODULE")]) from None
        raise
    info = read_json(run.data) or {}
    features = info.get("feature_names") or {}
    image_data = spec.data if spec.data is not None and spec.data.source == "images" else None
    inputs = []
    for i in spec.model.inputs:
        shape = tuple(i.shape)
        image = None
        if len(shape) == 3 and shape[-1] in IMAGE_CHANNELS and i.dtype != "string":
            from ..data.sources import image_format

            image = image_format(image_data, shape)
        inputs.append(InputInfo(i.name, shape, i.dtype, tuple(features.get(i.name) or ()), image))
    return RunInfo(run.path, spec, spec.name, inputs, list(spec.model.outputs), info, read_json(run.metrics) or {},
                   hashlib.sha256(run.spec.read_bytes()).hexdigest(), run.curves.is_file())


class ServedModel:
    """model.keras behind one compiled inference function. `run(arrays)` is thread-safe."""

    def __init__(self, run: RunInfo, trust: bool = False):
        import keras
        import tensorflow as tf

        import compiler.layers  # noqa: F401  (registers kspec's own layers for deserialization)

        from ..export.signature import flat_call, flat_inputs, input_specs

        self.run = run
        path = RunDir(run.path).model
        try:
            self.model = keras.saving.load_model(str(path), compile=False, safe_mode=not trust)
        except Exception as exc:
            from ..builder.errors import keras_message

            message = keras_message(exc)
            hint = ("the model holds code (a Lambda layer); if you made this run yourself, pass --trust"
                    if "safe_mode" in message or "unsafe" in message.lower() else "")
            raise ServeError(Diagnostic(f"cannot load {path}: {message}", hint=hint)) from None
        names = [t.name for t in flat_inputs(self.model)]
        by_name = {i.name: i for i in run.inputs}
        if sorted(names) == sorted(by_name):
            self.order = names           # the flat order the function takes its inputs in
        elif len(names) == len(run.inputs):
            self.order = [i.name for i in run.inputs]
        else:
            raise ServeError(Diagnostic(f"{path} takes {len(names)} inputs but the run's spec declares "
                                        f"{len(run.inputs)}"))
        out = self.model.output
        self.output_order = sorted(out) if isinstance(out, dict) else list(run.outputs)
        self._fn = tf.function(flat_call(self.model), input_signature=input_specs(self.model))
        self._lock = threading.Lock()

    def run_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Input name -> batch array, to output name -> batch array (the raw model outputs)."""
        import tensorflow as tf

        with self._lock:
            outputs = self._fn(*[tf.convert_to_tensor(arrays[n]) for n in self.order])
        return {name: np.asarray(o) for name, o in zip(self.output_order, outputs)}

    def warm_up(self, sizes: tuple[int, ...]) -> None:
        """Trace and run the function once per batch size before /readyz says 200."""
        for n in sizes:
            self.run_batch({i.name: _zeros(i, n) for i in self.run.inputs})

    @property
    def traces(self) -> int:
        return int(self._fn.experimental_get_tracing_count())

    def signature(self) -> dict[str, Any]:
        """Input and output names, dtypes, shapes (batch first, -1 = any) as the model itself states them."""
        import keras

        from ..export.signature import flat_inputs

        def spec(t) -> dict:
            return {"dtype": str(t.dtype), "shape": [-1 if d is None else int(d) for d in t.shape]}

        inputs = {t.name: spec(t) for t in flat_inputs(self.model)}
        outputs = dict(zip(self.output_order, (spec(t) for t in keras.tree.flatten(self.model.output))))
        return {"inputs": inputs, "outputs": outputs}


def _zeros(i: InputInfo, n: int) -> np.ndarray:
    shape = tuple(1 if d is None else d for d in i.shape)
    if i.image is not None and None in i.shape:
        (h, w), _ = i.image
        shape = (h, w, shape[-1])
    dtype = object if i.dtype == "string" else (np.float32 if i.dtype in ("bfloat16",) else np.dtype(i.dtype))
    return np.zeros((n, *shape), dtype=dtype) if dtype is not object else np.full((n, *shape), "", dtype=object)


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from .. import __version__

    return {"kspec": __version__, "tensorflow": tf.__version__, "keras": keras.__version__}


def load_failed(exc: BaseException) -> str:
    """A load failure as one line for the log and /readyz."""
    if isinstance(exc, KspecError):
        return str(exc)
    return f"error: {type(exc).__name__}: {exc}"
