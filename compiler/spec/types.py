"""The typed spec: what `validate` hands to every later stage.

Later stages (build, data, train, export) read these frozen dataclasses only,
never the raw YAML tree, and never import the front half's internals. Each
piece keeps its source `loc` (and `via`, the block use sites it came through)
so a Keras error at build or train time still points at the spec.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import Loc


def default(cls: type, name: str) -> Any:
    """The default of field `name` of the dataclass `cls`: the one place a spec default is written.

    `validate` fills what a spec leaves out from here, and `schemagen` writes the schema's
    `default`s from here (tests/test_single_source.py checks both)."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__}.{name} has no default")


def relative_to(loc: Loc | None, value: str) -> Path:
    """A path written in a spec, made relative to the folder of the file it was written in."""
    base = Path(loc.file).parent if loc and loc.line else Path(".")
    return base / value


@dataclass(frozen=True)
class Component:
    """A Keras component by name, with keyword arguments: `adam`, `{Adam: {learning_rate: 0.01}}`.

    `kind` is the registry kind it belongs to ("optimizers", "losses", "metrics",
    "callbacks", "initializers", ...). `args` may nest further components
    (e.g. a learning-rate schedule inside an optimizer), still as plain values.
    """

    kind: str
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    loc: Loc | None = None
    path: str = ""


@dataclass(frozen=True)
class InputSpec:
    """A model input: `pixels: {shape: [8, 8, 1], dtype: float32}`."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    loc: Loc | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One node of the model graph, after blocks and repeats are expanded.

    `layer` is a Keras layer class name (`Dense`, `Conv2D`, ...), `Backbone`, or a
    class registered by a plugin. `args` are that class's keyword arguments as
    written in the spec (initializers, regularizers... still as names or one-key
    mappings; the builder turns them into Keras objects). `inputs` is explicit:
    default chaining is already resolved. If `shares` names another node, this
    node calls that node's layer again (same weights) and `layer`/`args` are the
    shared node's.
    """

    name: str
    layer: str
    args: Mapping[str, Any]
    inputs: tuple[str, ...]
    loc: Loc | None = None
    path: str = ""
    via: tuple[Loc, ...] = ()
    shares: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    inputs: tuple[InputSpec, ...]
    nodes: tuple[NodeSpec, ...]
    outputs: tuple[str, ...]

    def node(self, name: str) -> NodeSpec:
        return next(n for n in self.nodes if n.name == name)


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is split and prepared.

    `source` is the kind (`sklearn`, `csv`, `npz`, `images`, `synthetic`) and
    `params` its arguments as written (`{csv: data.csv, target: y}` gives
    source="csv", params={"path": "data.csv", "target": "y"}); relative paths in
    params are already made absolute against the spec file's folder.
    `preprocess` and `augment` are Components of kind "preprocess"/"augment"
    (`standardize`, `log1p`, `{rescale: {scale: 0.0039}}`, `{RandomFlip: {...}}`).
    `classes` (`[5, 6, 7, 8, 9]`) keeps the examples of those classes only, as
    class names (the source's labels, as text).
    """

    source: str
    params: Mapping[str, Any]
    validation: float = 0.0
    test: float = 0.0
    stratify: bool | None = None          # None: automatic (classification targets)
    split_seed: int | None = None         # None: the spec's seed (an ensemble's members share one split)
    reshape: tuple[int, ...] | None = None
    preprocess: tuple[Component, ...] = ()
    augment: tuple[Component, ...] = ()
    classes: tuple[str, ...] | None = None   # keep only these classes, renumbered 0..k-1 in this order
    loc: Loc | None = None
    classes_loc: Loc | None = None
    cache: Any = "auto"                   # one of data.stream.CACHE_MODES (streamed sources)
    on_bad_file: str = "error"            # "error" | "skip" (image files that cannot be read)

    @property
    def segmentation(self) -> bool:
        """`{images: DIR, masks: DIR}`: every pixel is classified."""
        return self.source == "images" and self.params.get("masks") is not None


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase: `{epochs: 5, trainable: false}`, then
    `{epochs: 10, trainable: "block_16.*", learning_rate: 1e-5}`."""

    name: str
    epochs: int
    trainable: bool | str | None = None   # None: leave as is
    optimizer: Component | None = None    # None: keep the train optimizer
    learning_rate: float | None = None
    loc: Loc | None = None
    trainable_loc: Loc | None = None      # where the `trainable` pattern is written (for its errors)


@dataclass(frozen=True)
class TrainSpec:
    optimizer: Component
    losses: Mapping[str, Component]                  # output name -> loss
    metrics: Mapping[str, tuple[Component, ...]]     # output name -> metrics
    loss_weights: Mapping[str, float] | None = None
    batch_size: int = 32
    epochs: int = 10
    callbacks: tuple[Component, ...] = ()
    class_weight: Mapping[int, float] | str | None = None   # a mapping, "balanced" or None
    phases: tuple[PhaseSpec, ...] = ()                       # empty: one phase of `epochs`
    keep: str = "best"                    # model.keras holds the "best" (by monitor) or "last" weights
    monitor: str = "val_loss"
    deterministic: bool = False
    mixed_precision: str | None = "auto"  # "auto" | "mixed_float16" | "mixed_bfloat16" | None (float32)
    jit_compile: bool | str = "auto"      # True, False or "auto"
    distribute: str = "auto"              # "auto" | "none" | "mirrored" | "multi_worker"
    memory_growth: bool | str = "auto"    # True, False or "auto" (= True): GPU memory taken as needed
    steps_per_execution: int = 1
    ensemble: int = 1
    diagnostics: Mapping[str, Any] = field(default_factory=dict)   # {update_ratio: true, gradient_check: true}
    # train.checkpoint.every_seconds: save a checkpoint when this many seconds passed since the last one
    # (and at every phase end, and on SIGTERM/SIGINT); 0 saves every epoch. Default: README "Checkpoints".
    checkpoint_every_seconds: float = 10.0
    loc: Loc | None = None


@dataclass(frozen=True)
class Spec:
    """A validated spec. `tree` is the resolved YAML tree (for `kspec resolve` and the run directory)."""

    version: int
    name: str
    seed: int
    file: str
    model: ModelSpec
    data: DataSpec | None
    train: TrainSpec | None
    tree: Any = field(default=None, compare=False, repr=False)
    search: Any = None                    # a compiler.tune.space.SearchSpec when the spec has `search:`
