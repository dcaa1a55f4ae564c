"""`train.distribute`, `train.memory_growth`, `train.mixed_precision`: the devices a run trains on.

    plan(train)                  -> Plan          which strategy, and is this process the chief (no TensorFlow)
    start(plan, train)           -> Distribution  GPU memory growth, then the tf.distribute strategy
    choose_precision(train, m, d) -> PrecisionChoice "auto" resolved against the GPUs, the CPU and the model
    mixed_precision_policy(x)    -> str           the same without a model (auto: GPUs only)
    synchronize_batchnorm(m, s)  -> [names]       BatchNormalization(synchronized=True) with several replicas

`train.distribute`:
- `auto` (default): MirroredStrategy over every local GPU when there are two or more;
  MultiWorkerMirroredStrategy when TF_CONFIG describes a cluster of two or more
  workers; otherwise TensorFlow's default strategy (one device, no overhead).
- `none`: the default strategy, whatever the machine has.
- `mirrored`: MirroredStrategy (all local GPUs; the CPU when there are none).
- `multi_worker`: MultiWorkerMirroredStrategy, the cluster from TF_CONFIG (set by
  `kspec train --cluster ... --worker-index I`, or `--workers N` locally).

The model is built, compiled (and reloaded, on --resume) inside `strategy.scope()`.
`train.batch_size` is the *global* batch: tf.distribute splits each batch across the
replicas (per replica: batch_size / replicas).

Order matters: memory growth must be set before TensorFlow touches a GPU, and
MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs,
so `start` is the first thing the trainer does with TensorFlow.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import Cluster, read_tf_config

MODES = ("auto", "none", "mirrored", "multi_worker")
# The launcher (launch.py) names a file here; a worker creates it once its strategy exists,
# i.e. once the cluster has formed.
READY_ENV = "KSPEC_WORKER_READY"
_multi_worker_strategy = None


@dataclass(frozen=True)
class Plan:
    """What `train.distribute` asks for in this process's environment (decided without TensorFlow)."""

    mode: str                       # "auto" | "none" | "mirrored" | "multi_worker"
    cluster: Cluster | None = None  # multi_worker: this process's place (None: no TF_CONFIG, one worker)

    @property
    def multi_worker(self) -> bool:
        return self.mode == "multi_worker"

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def workers(self) -> int:
        return self.cluster.workers if self.cluster else 1

    @property
    def rank(self) -> int:
        return self.cluster.rank if self.cluster else 0


@dataclass
class Distribution:
    """The strategy a run trains under."""

    mode: str                       # resolved: "none" | "mirrored" | "multi_worker"
    strategy: Any
    plan: Plan

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def synchronized(self) -> bool:
        """Several replicas may hold the model: BatchNormalization should use global batch statistics."""
        return self.mode in ("mirrored", "multi_worker")

    def describe(self, batch_size: int) -> str:
        if self.mode == "multi_worker":
            where = f"MultiWorkerMirroredStrategy, worker {self.plan.rank} of {self.plan.workers}"
        elif self.mode == "mirrored":
            where = "MirroredStrategy"
        else:
            where = "one device"
        per = batch_size / self.replicas
        per_text = f"{per:g}" if per == int(per) else f"about {per:.1f}"
        return (f"distributed: {where}, {self.replicas} replica{'s' * (self.replicas != 1)}; "
                f"global batch {batch_size} = {per_text} per replica")


def plan(train, environ=None) -> Plan:
    """Which strategy `train.distribute` means here; the chief is worker 0 of TF_CONFIG's cluster."""
    requested = getattr(train, "distribute", None) or "auto"
    if requested not in MODES:
        raise ValueError(f"train.distribute must be one of {', '.join(MODES)}, got {requested!r}")
    cluster = read_tf_config(environ) if requested in ("auto", "multi_worker") else None
    if requested == "multi_worker" or (requested == "auto" and cluster is not None and cluster.workers > 1):
        return Plan("multi_worker", cluster)
    return Plan(requested, None)


def start(plan: Plan, train) -> Distribution:
    """Configure the GPUs and create the strategy (for multi_worker: wait here until the cluster forms)."""
    import tensorflow as tf

    configure_memory_growth(getattr(train, "memory_growth", "auto"))
    mode = plan.mode
    if mode == "auto":
        mode = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if mode == "multi_worker":
        from ..keras_compat import multi_worker_fix as keras_patch

        keras_patch.apply()
        global _multi_worker_strategy
        if _multi_worker_strategy is None:
            # One per process: TensorFlow configures its collective ops once (an ensemble's members share it).
            _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
        strategy = _multi_worker_strategy
    elif mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    signal_ready()
    return Distribution(mode=mode, strategy=strategy, plan=plan)


def signal_ready(environ=None) -> None:
    """Tell the local launcher that this worker's strategy exists (its cluster has formed)."""
    path = (os.environ if environ is None else environ).get(READY_ENV)
    if path:
        try:
            Path(path).touch()
        except OSError:
            pass


def configure_memory_growth(setting: bool | str = "auto") -> list[str]:
    """`train.memory_growth` (auto = true): let TensorFlow take GPU memory as it needs it instead of
    all of it at start-up. Returns the GPUs it was set on. Must run before any GPU is used."""
    if setting is False or str(setting).lower() == "false":
        return []
    import tensorflow as tf

    done = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            done.append(gpu.name)
        except (RuntimeError, ValueError) as exc:   # the GPU is already initialized: too late
            print(f"kspec: warning: cannot set memory growth on {gpu.name}: {exc}", file=sys.stderr)
    return done


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of every visible GPU ((0, 0) where TensorFlow does not say)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        except Exception:
            cc = (0, 0)
        out.append((int(cc[0]), int(cc[1])) if len(cc) >= 2 else (0, 0))
    return out


# -- mixed precision ------------------------------------------------------------------------

# CPU flags (Linux /proc/cpuinfo) of the instructions that make bfloat16 matmuls and convolutions fast
# in oneDNN: AMX tiles (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, Zen 4).
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# KSPEC_CPU_BF16=1 / 0 overrides the detection (to simulate a CPU with or without it, e.g. in tests).
CPU_BF16_ENV = "KSPEC_CPU_BF16"
# Layers whose work is convolutions that bfloat16 speeds up (README "CPU speed": the 28x28 CNN 2-3x;
# dense-only models and RNN cells, small matmuls, measured slower in bfloat16 on the CPU; a
# MobileNetV3Small Backbone, depthwise convolutions, measured no faster, so Backbone and depthwise or
# separable convolutions do not count).
CONV_LAYERS = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
# Losses of regression targets: bfloat16's 8-bit mantissa (about 2-3 significant digits) costs
# them precision that a classifier's argmax does not notice.
REGRESSION_LOSSES = ("mse", "mae", "mape", "msle", "mean_squared_error", "mean_absolute_error",
                     "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "huber", "log_cosh",
                     "logcosh", "cosine_similarity", "MeanSquaredError", "MeanAbsoluteError", "Huber",
                     "LogCosh", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError", "CosineSimilarity")


@dataclass(frozen=True)
class Support:
    """Whether this CPU computes bfloat16 fast, and how that was decided (for the log)."""

    available: bool
    why: str


@dataclass(frozen=True)
class PrecisionChoice:
    """The Keras dtype policy a run trains under and why (printed, and recorded in metrics.json)."""

    policy: str          # "float32" | "mixed_float16" | "mixed_bfloat16"
    setting: str         # what train.mixed_precision said ("auto", "none", a policy name)
    why: str

    def to_json(self) -> dict:
        return {"policy": self.policy, "setting": self.setting, "why": self.why}

    def describe(self) -> str:
        return f"precision: {self.policy} ({self.why})"


def cpu_bf16_support(environ=None, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> Support:
    """AMX-BF16 or AVX512-BF16 in the CPU's flags, unless KSPEC_CPU_BF16 says otherwise."""
    value = (os.environ if environ is None else environ).get(CPU_BF16_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return Support(True, f"{CPU_BF16_ENV}={value}")
    if value in ("0", "false", "no", "off"):
        return Support(False, f"{CPU_BF16_ENV}={value}")
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags: set[str] = set()
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.partition(":")[2].split())
                    break                      # every core lists the same flags
    except OSError:
        return Support(False, "CPU flags unknown (no /proc/cpuinfo)")
    found = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    if found:
        return Support(True, "CPU has " + " and ".join(found))
    return Support(False, "CPU has neither " + " nor ".join(CPU_BF16_FLAGS))


def bf16_suits(spec_model, train, data=None) -> tuple[bool, str]:
    """The rule read from README's precision table: bfloat16 pays for convolutions; a model of dense
    layers only (tiny on these examples) or an RNN gains nothing, regression targets lose precision,
    and per-pixel classification (segmentation) learns epochs behind float32."""
    if data is not None and data.segmentation:
        # Measured: the segmentation test's conv net, 8 epochs, test pixel accuracy 0.905 in float32,
        # 0.758 (the all-background baseline) in bfloat16, which only caught up epochs later.
        return False, "the output classifies every pixel (segmentation learns slower in bfloat16)"
    layers = {node.layer for node in spec_model.nodes} if spec_model is not None else set()
    losses = getattr(train, "losses", {}) or {}
    regression = [name for name, loss in losses.items() if getattr(loss, "name", loss) in REGRESSION_LOSSES]
    if regression:
        return False, f"output {regression[0]!r} is a regression target"
    regularized = [node.name for node in spec_model.nodes if node.args.get("activity_regularizer")] \
        if spec_model is not None else []
    if regularized:
        # Keras adds a bfloat16 activity penalty to the float32 loss and fails (measured: autoencoder).
        return False, f"layer {regularized[0]!r} has an activity_regularizer"
    conv = sorted(layers & set(CONV_LAYERS))
    if not conv:
        return False, "no convolution in the model (bfloat16 gains nothing on dense-only or recurrent models)"
    return True, f"convolutions ({', '.join(conv)})"


def choose_precision(train, spec_model=None, data=None, *, gpus: list[tuple[int, int]] | None = None,
                     cpu: Support | None = None) -> PrecisionChoice:
    """`train.mixed_precision` resolved on this machine.

    `auto`: mixed_float16 when every GPU has compute capability 7.0 or more (tensor cores);
    on a machine without GPUs, mixed_bfloat16 when the CPU has AMX-BF16 or AVX512-BF16 and the
    model suits it (`bf16_suits`); float32 otherwise. `none`: float32. A policy name: that policy.
    """
    setting = getattr(train, "mixed_precision", None)
    if setting in (None, "none", False, "float32"):
        return PrecisionChoice("float32", "none", "train.mixed_precision: none")
    if setting != "auto":
        return PrecisionChoice(str(setting), str(setting), f"train.mixed_precision: {setting}")
    capabilities = gpu_compute_capabilities() if gpus is None else gpus
    if capabilities:
        if all(cc >= (7, 0) for cc in capabilities):
            return PrecisionChoice("mixed_float16", "auto",
                                   "auto: every GPU has tensor cores (compute capability 7.0+)")
        return PrecisionChoice("float32", "auto", "auto: a GPU without tensor cores")
    support = cpu_bf16_support() if cpu is None else cpu
    if not support.available:
        return PrecisionChoice("float32", "auto", f"auto: {support.why}")
    suits, why = bf16_suits(spec_model, train, data)
    if not suits:
        return PrecisionChoice("float32", "auto", f"auto: {support.why}, but {why}")
    return PrecisionChoice("mixed_bfloat16", "auto", f"auto: {support.why}; {why}")


def mixed_precision_policy(setting: str | None) -> str:
    """The Keras dtype policy of `train.mixed_precision` without a model to judge (see choose_precision):
    `auto` is mixed_float16 on tensor-core GPUs and float32 elsewhere; `none` is float32."""
    return choose_precision(_Setting(setting), None, cpu=Support(False, "no model to judge")).policy


@dataclass(frozen=True)
class _Setting:
    mixed_precision: str | None


def synchronize_batchnorm(model, spec_model) -> list[str]:
    """With several replicas, batch statistics should be those of the global batch: set
    `synchronized=True` on the spec's BatchNormalization layers that do not set it themselves."""
    names = []
    for node in spec_model.nodes:
        if node.layer != "BatchNormalization" or node.shares or "synchronized" in node.args:
            continue
        try:
            layer = model.get_layer(node.name)
        except ValueError:
            continue
        if hasattr(layer, "synchronized") and not layer.synchronized:
            layer.synchronized = True
            names.append(node.name)
    return names
