"""`--format onnx`: an ONNX model (ONNX Runtime, TensorRT, OpenVINO, browsers...), via tf2onnx.

The model is traced as a TensorFlow function of its flat inputs, frozen (all
weights and constants, Normalization's mean and variance included, become
graph constants: calling tf2onnx on the function directly turns such captured
constants into extra graph inputs) and converted with tf2onnx. Inputs and
outputs are named after the model's Input and output layers; the batch
dimension stays dynamic. kspec's Log1p layer (TensorFlow's Log1p op, which
tf2onnx does not map) is written as Log(1 + x). Checked with onnxruntime.

Needs the optional dependencies: pip install 'kspec[onnx]' (tf2onnx, onnx, onnxruntime).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from ..errors import Diagnostic, KspecError
from . import ExportError

DIRECTORY = False
DEFAULT_NAME = "model.onnx"
SUFFIX = None
EXTRA = "pip install 'kspec[onnx]'"


def check_available() -> None:
    missing = []
    for module in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
        except Exception as exc:         # installed, but broken (e.g. a protobuf version it cannot use)
            raise ExportError(Diagnostic(f"exporting to ONNX needs {module}, which is installed but fails to "
                                         f"import ({type(exc).__name__}: {exc})",
                                         hint=f"reinstall the tested versions: {EXTRA}")) from None
    if missing:
        raise ExportError(Diagnostic(
            f"exporting to ONNX needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: {EXTRA}"))


def runtime_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def write(source, target: Path) -> dict:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from .signature import flat_call, input_names, input_specs, output_names, quiet

    model = source.model
    function = tf.function(flat_call(model), input_signature=input_specs(model))
    unsupported: list[str] = []
    with quiet():
        concrete = function.get_concrete_function()
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
        graph_def = frozen.graph.as_graph_def(add_shapes=True)
        tf_inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        tf_outputs = [t.name for t in frozen.outputs]
        rename = dict(zip(tf_inputs, input_names(model))) | dict(zip(tf_outputs, output_names(model)))
        with _tf2onnx_log(unsupported):
            import tf2onnx

            proto, _ = tf2onnx.convert.from_graph_def(
                graph_def, name=_graph_name(model), input_names=tf_inputs, output_names=tf_outputs,
                custom_op_handlers={"Log1p": (_log1p, [])}, tensors_to_rename=rename)
    if unsupported:
        ops = sorted(set(re.findall(r"'(\w+)': \d+", " ".join(unsupported))))
        what = f"tf2onnx has no ONNX conversion for TensorFlow's {', '.join(ops)}" if ops else "; ".join(unsupported)
        raise KspecError(Diagnostic(f"cannot export the model to ONNX: {what}",
                                    hint="the SavedModel and TFLite exports may support it"))
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param.startswith("unk__"):
            dims[0].dim_param = "batch"
    try:
        target.write_bytes(proto.SerializeToString())
    except ValueError as exc:          # protobuf's 2 GB limit
        raise KspecError(Diagnostic(f"the ONNX model cannot be serialized: {exc}")) from None
    return {}


def _graph_name(model) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(getattr(model, "name", "model"))) or "model"


def _log1p(ctx, node, name, args):
    """tf2onnx handler: Log1p(x) -> Log(Add(x, 1))."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    add = ctx.make_node("Add", [node.input[0], one.output[0]])
    ctx.replace_inputs(node, [add.output[0]])
    node.type = "Log"


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record):
        message = record.getMessage()
        if "Unsupported ops" in message or "is not supported" in message or "Failed to convert" in message:
            self.sink.append(message)


class _tf2onnx_log:
    """Keep tf2onnx's INFO chatter off the terminal; collect its conversion errors."""

    def __init__(self, sink: list[str]):
        self.handler = _Collect(sink)
        self.logger = logging.getLogger("tf2onnx")

    def __enter__(self):
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.ERROR)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


def run(target: Path, source, info: dict) -> list[np.ndarray]:
    import onnxruntime

    from .signature import input_names, output_names

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise KspecError(Diagnostic(f"onnxruntime cannot load the exported model: {exc}")) from None
    feed = dict(zip(input_names(source.model), source.inputs))
    names = output_names(source.model)
    return [np.asarray(o) for o in session.run(names, feed)]
