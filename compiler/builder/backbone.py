"""`Backbone` nodes: a pretrained network used as one layer of the spec.

    - Backbone: {application: MobileNetV2, weights: imagenet, include_top: false, pooling: avg,
                 trainable: false, preprocess: true}
    - Backbone: {from: ../runs/digits/2024-05-01T10-00-00, cut_at: flatten, trainable: "dense_1"}

A Backbone has exactly one source:
- `application`: a `keras.applications` model, built for the shape of the tensor
  it is applied to, with `weights` `imagenet` (Keras's own download and cache,
  `$KERAS_HOME/models/` or `~/.keras/models/`), null (random) or a local weights
  file; `include_top`, `pooling` and, where the application takes it, `alpha`.
- `from`: a `.keras` file, or the run directory of an earlier `kspec train`
  (it holds `model.keras`; `runs/NAME/latest` is the newest run of NAME);
  loaded with Keras safe mode on: a model with a Lambda layer, a TFSMLayer or a
  lookup layer reading a file is refused (the message says which), unless the
  person running the command trusts the file with `--trust PATH`; a spec's
  `safe_mode: false` is an error at validate (compiler/spec/safety.py).

Then `cut_at` keeps the network up to that layer's output, `pooling` (for a
`from` model or a cut one) adds global pooling after it, `preprocess: true`
puts the application's own `preprocess_input` in front (an `AppPreprocess`
layer, not a Lambda), and `trainable` freezes all of it (false), none of it
(true) or all but the layers whose names match a regular expression
(`re.search`). Frozen BatchNormalization layers have `trainable = False`, so they
run in inference mode and keep their moving statistics during `fit`.

The default of `trainable` is false (transfer learning: train the head on
frozen features), except with `weights: null`, where nothing is pretrained and
the default is true.

The result is one Keras model named after the node, called on the node's input
tensor like any layer (so `- share: NAME` reuses it with the same weights).
Every mistake is a SpecError at the node: no source or two, an unknown
application (did you mean), a missing file, the ImageNet weights that cannot
be downloaded (which file to place where), an input the application cannot
take, a `cut_at` naming no layer (did you mean), a Lambda refused by safe mode.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import keras

from .. import registry
from ..errors import Diagnostic, SpecError
from ..keras_compat import model_nodes, producer
from ..registry import UnknownComponent
from ..rundir import LATEST
from ..rundir import MODEL as RUN_MODEL
from ..spec.types import NodeSpec, relative_to
from ..suggest import did_you_mean, suggest
from .errors import keras_message, shape_text

OPTIONS = ("application", "from", "weights", "include_top", "pooling", "cut_at", "trainable",
           "preprocess", "alpha", "safe_mode")
APPLICATION_ONLY = ("weights", "include_top", "alpha", "preprocess")
POOLING = {"avg": "GlobalAveragePooling", "max": "GlobalMaxPooling"}


def apply_backbone(node: NodeSpec, tensor) -> tuple[keras.Model, Any]:
    """(the backbone model, its output on `tensor`) for a Backbone node."""
    model = backbone_model(node, tensor)
    try:
        out = model(tensor)
    except Exception as exc:
        raise _error(node, f"Backbone '{node.name}' cannot take its input{_inputs_text(node, tensor)}: "
                           f"{keras_message(exc)}") from None
    return model, out


def backbone_model(node: NodeSpec, tensor) -> keras.Model:
    """The Keras model of a Backbone node, for input `tensor` (a KerasTensor, or a list of them)."""
    args = _plain(node.args or {})
    _check_options(node, args)
    if "application" in args:
        base = _application(node, args, tensor)
    else:
        base = _load(node, args)
    cut_at = args.get("cut_at")
    if cut_at is not None:
        base = _cut(node, base, cut_at)
    elif len(base.outputs) > 1:
        names = ", ".join(repr(_producer(t)) for t in base.outputs)
        raise _error(node, f"Backbone '{node.name}': the model has {len(base.outputs)} outputs ({names}); "
                           f"a Backbone gives one", key="cut_at",
                     hint="name the layer to use with `cut_at`")
    pooling = args.get("pooling")
    if pooling is not None and ("from" in args or cut_at is not None):
        base = _pool(node, base, pooling)
    if args.get("preprocess"):
        base = _with_preprocess(node, base, args["application"], tensor)
    _rename(base, node.name)
    _set_trainable(node, base, _trainable(args))
    return base


# -- options -----------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_options(node: NodeSpec, args: dict) -> None:
    for key in args:
        if key not in OPTIONS:
            raise _error(node, f"Backbone '{node.name}': unknown option '{key}'{did_you_mean(key, OPTIONS)}",
                         key=key, hint=f"the options are {', '.join(OPTIONS)}")
    sources = [k for k in ("application", "from") if args.get(k) is not None]
    for k in ("application", "from"):
        if k in args and args[k] is None:
            del args[k]
    if len(sources) != 1:
        what = "both `application` and `from`" if sources else "neither `application` nor `from`"
        raise _error(node, f"Backbone '{node.name}' needs exactly one source, `application: NAME` (a Keras "
                           f"application) or `from: FILE.keras | RUN_DIR` (a saved model), but has {what}",
                     hint="e.g. `Backbone: {application: MobileNetV2, weights: imagenet}`")
    if "from" in args:
        extra = [k for k in APPLICATION_ONLY if args.get(k) not in (None, False)]
        if extra:
            hint = ("a saved model keeps its own preprocessing layers" if extra[0] == "preprocess"
                    else "these options describe how to build an application")
            raise _error(node, f"Backbone '{node.name}': `{extra[0]}` applies to `application` backbones, "
                               f"not to one loaded `from` a saved model", key=extra[0], hint=hint)
    else:
        if "safe_mode" in args:
            raise _error(node, f"Backbone '{node.name}': `safe_mode` applies to a model loaded with `from`",
                         key="safe_mode")
    trainable = args.get("trainable")
    if trainable is not None and not isinstance(trainable, (bool, str)):
        raise _error(node, f"Backbone '{node.name}': `trainable` must be true, false or a pattern of layer "
                           f"names, not {trainable!r}", key="trainable")
    if args.get("pooling") not in (None, *POOLING):
        raise _error(node, f"Backbone '{node.name}': `pooling` must be null, avg or max, not "
                           f"{args['pooling']!r}", key="pooling")


def _trainable(args: dict) -> bool | str:
    if args.get("trainable") is not None:
        return args["trainable"]
    if "application" in args and "weights" in args and args["weights"] is None:
        return True                    # random weights: nothing to preserve
    return False


# -- application ---------------------------------------------------------------------------------

class _DownloadFailed(Exception):
    def __init__(self, fname: str, origin: str, directory: str, had_file: bool, file_hash: str | None,
                 cause: BaseException):
        self.fname, self.origin, self.directory = fname, origin, directory
        self.had_file, self.file_hash, self.cause = had_file, file_hash, cause
        super().__init__(str(cause))


@contextmanager
def _watch_downloads():
    """Record where `keras.utils.get_file` (as the applications call it) wants a file, when it fails."""
    from ..keras_compat import file_utils, keras_home

    file_utils = file_utils()
    real = file_utils.get_file
    sig = inspect.signature(real)

    def get_file(*a, **kw):
        bound = sig.bind(*a, **kw)
        bound.apply_defaults()
        p = bound.arguments
        fname = p["fname"] or os.path.basename(p["origin"] or "")
        base = os.path.expanduser(p["cache_dir"] or keras_home())
        if not os.access(base, os.W_OK):            # as get_file does
            base = os.path.join("/tmp", ".keras")
        directory = os.path.join(base, p["cache_subdir"])
        target = os.path.join(directory, str(fname))
        had_file = os.path.exists(target)
        try:
            return real(*a, **kw)
        except Exception as exc:
            raise _DownloadFailed(str(fname), p["origin"], directory, had_file,
                                  p["file_hash"] or p["md5_hash"], exc) from exc

    file_utils.get_file = get_file
    try:
        yield
    finally:
        file_utils.get_file = real


def _application(node: NodeSpec, args: dict, tensor) -> keras.Model:
    name = args["application"]
    try:
        function = registry.lookup("applications", name)
    except UnknownComponent as exc:
        raise _error(node, f"Backbone '{node.name}': {exc}", key="application") from None
    params = inspect.signature(function).parameters
    if isinstance(tensor, (list, tuple)):
        raise _error(node, f"Backbone '{node.name}': an application takes one input, but the node has "
                           f"{len(tensor)}: {', '.join(node.inputs)}")
    shape = tuple(tensor.shape[1:])
    kwargs: dict[str, Any] = {"input_shape": shape, "include_top": bool(args.get("include_top", False))}
    if "pooling" in params:
        kwargs["pooling"] = None if args.get("cut_at") is not None else args.get("pooling")
    if "alpha" in args:
        if "alpha" not in params:
            takes = [n for n in registry.names("applications")
                     if "alpha" in inspect.signature(registry.lookup("applications", n)).parameters]
            raise _error(node, f"Backbone '{node.name}': {name} takes no `alpha` (the width multiplier of "
                               f"{', '.join(sorted(takes))})", key="alpha")
        kwargs["alpha"] = args["alpha"]
    weights = args.get("weights", "imagenet")
    weights_file = None
    if weights is None or weights == "imagenet":
        kwargs["weights"] = weights
    else:
        weights_file = _existing(node, "weights", str(weights), "weights file")
        kwargs["weights"] = None
    described = f"{name}{_alpha_text(kwargs)}"
    try:
        with _watch_downloads(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = function(**kwargs)
    except _DownloadFailed as exc:
        raise _download_error(node, described, exc) from None
    except Exception as exc:
        message = keras_message(exc)
        hint = ""
        if re.search(r"channel", message, re.IGNORECASE):
            hint = ("ImageNet weights need RGB images (3 channels): give the input 3 channels, or use "
                    "`weights: null`")
        elif re.search(r"input|shape|size", message, re.IGNORECASE):
            hint = (f"resize the images for {name} (a Resizing layer before the Backbone), or see "
                    f"keras.applications.{name}'s documentation for the sizes it takes")
        raise _error(node, f"Backbone '{node.name}': {described} cannot be built for input "
                           f"'{node.inputs[0] if node.inputs else '?'}' of shape {shape_text(tensor)} with "
                           f"{_kwargs_text(kwargs)}: {message}", hint=hint) from None
    for warning in caught:       # Keras's notes (e.g. which ImageNet weights it loads), at the spec's line
        _warn(node, f"Backbone '{node.name}' ({described}): {warning.message}", warning.category)
    if weights_file is not None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(str(weights_file))
        except Exception as exc:       # its warnings only repeat the error

            raise _error(node, f"Backbone '{node.name}': the weights file {weights_file} does not fit "
                               f"{described} (include_top={kwargs['include_top']}, input shape {shape}): "
                               f"{keras_message(exc)}", key="weights",
                         hint="give the file saved from the very same application and options "
                              "(model.save_weights), or `weights: imagenet` / `weights: null`") from None
        for warning in caught:
            _warn(node, f"Backbone '{node.name}' (weights {weights_file}): {warning.message}", warning.category)
    return model


def _alpha_text(kwargs: dict) -> str:
    return f" (alpha {kwargs['alpha']})" if "alpha" in kwargs else ""


def _kwargs_text(kwargs: dict) -> str:
    shown = {k: v for k, v in kwargs.items() if k in ("include_top", "weights", "pooling")}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items())


def _download_error(node: NodeSpec, described: str, exc: _DownloadFailed) -> SpecError:
    directory = exc.directory.rstrip(os.sep) + os.sep
    reason = keras_message(exc.cause)
    fetch = re.match(r"URL fetch failure on \S+: .*? -- (.*)$", reason)
    if fetch:                                      # the URL is in the hint
        reason = fetch.group(1)
    if exc.had_file and exc.file_hash:
        gone = not os.path.exists(os.path.join(exc.directory, exc.fname))
        reason = (f"the file there does not have the hash Keras expects, {exc.file_hash}"
                  f"{' (Keras removed it)' if gone else ''}, and downloading it again failed: {reason}")
    message = (f"Backbone '{node.name}': the ImageNet weights of {described} are not in the Keras cache and "
               f"could not be downloaded ({reason}). Place the file '{exc.fname}' in the directory {directory}, "
               f"or give `weights: PATH` to a local weights file")
    return _error(node, message, key="weights",
                  hint=f"the file is {exc.origin} (download it where there is network); "
                       f"`weights: null` gives random weights")


# -- from ------------------------------------------------------------------------------------------

def _existing(node: NodeSpec, key: str, value: str, what: str) -> Path:
    path = relative_to(node.loc, os.path.expanduser(value))
    if not path.exists():
        raise _error(node, f"Backbone '{node.name}': the {what} {path.resolve()} does not exist", key=key,
                     hint="paths are relative to the folder of the spec file")
    return path


def _latest_run(node: NodeSpec, path: Path) -> Path:
    """`runs/NAME/latest`: the newest run under runs/NAME that saved a model (run folders are
    named by their start time, so the last in name order is the newest)."""
    parent = path.parent.resolve()
    runs = sorted(p.parent for p in parent.glob(f"*/{RUN_MODEL}")) if parent.is_dir() else []
    if not runs:
        where = "holds no finished run (no */model.keras)" if parent.is_dir() else "does not exist"
        raise _error(node, f"Backbone '{node.name}': `{LATEST}` is the newest run in {parent}, which {where}",
                     key="from", hint="train the model this Backbone reuses first: `kspec train` writes "
                                      "runs/NAME/TIME/ under the working directory")
    return runs[-1]


def _load(node: NodeSpec, args: dict) -> keras.Model:
    value = str(args["from"])
    written = relative_to(node.loc, os.path.expanduser(value))
    if written.name == LATEST and not written.exists():
        path = _latest_run(node, written)
    else:
        path = _existing(node, "from", value, "file")
    if path.is_dir():
        model_file = path / RUN_MODEL
        if not model_file.is_file():
            runs = sorted(path.glob(f"*/{RUN_MODEL}"), reverse=True)
            hint = (f"it holds runs: {', '.join(str(r.parent) for r in runs[:3])}; "
                    f"`{os.path.join(value, LATEST)}` takes the newest" if runs
                    else "give a .keras file, or the directory of one run of `kspec train`")
            raise _error(node, f"Backbone '{node.name}': the directory {path} is not a run directory: it "
                               f"has no {RUN_MODEL}", key="from", hint=hint)
        path = model_file
    from .. import trust

    # Trust comes from the command line only (`--trust PATH`); a spec cannot turn safe mode off
    # (compiler/spec/safety.py refuses `safe_mode: false` at validate).
    safe_mode = trust.safe_mode_for(path)
    import compiler.layers  # noqa: F401  (registers kspec's own layers for loading)

    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=safe_mode)
    except Exception as exc:
        text = str(exc)
        if trust.is_safe_mode_refusal(exc):
            refusal = trust.refused(path, text, f"Backbone '{node.name}': ")
            raise _error(node, refusal.message, key="from", hint=refusal.hint) from None
        hint = ""
        if "Could not locate" in text or "Unknown layer" in text or "not found" in text.lower():
            hint = "a layer of a plugin module: load the plugin (--plugin MODULE) that defines it"
        raise _error(node, f"Backbone '{node.name}': {path} cannot be loaded as a Keras model: "
                           f"{keras_message(exc)}", key="from", hint=hint) from None
    if not isinstance(model, keras.Model):
        raise _error(node, f"Backbone '{node.name}': {path} holds a {type(model).__name__}, not a Keras model",
                     key="from")
    try:
        model.inputs, model.outputs
    except Exception:
        raise _error(node, f"Backbone '{node.name}': {path} holds a subclassed model, which cannot be used as "
                           f"a backbone (only Functional and Sequential models have a graph to reuse)",
                     key="from") from None
    if not model.inputs or not model.outputs:
        raise _error(node, f"Backbone '{node.name}': {path} holds a model that was never built (it has no "
                           f"inputs)", key="from")
    return model


# -- cut, pooling, preprocess, trainable ----------------------------------------------------------

def _producer(tensor) -> str:
    made_by = producer(tensor)
    return made_by[0].name if made_by else "?"


def _cut(node: NodeSpec, base: keras.Model, layer_name: str) -> keras.Model:
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        hits = suggest(layer_name, names, n=5)
        if hits:
            near = f"; did you mean {' or '.join(repr(h) for h in hits)}?"
        else:
            near = f"; its last layers are {', '.join(repr(n) for n in names[-5:])}"
        raise _error(node, f"Backbone '{node.name}': cut_at names no layer of {base.name} "
                           f"('{layer_name}'){near}", key="cut_at",
                     hint="model.summary() lists the layer names")
    layer = base.get_layer(layer_name)
    # The layer's output in *this* graph: `layer.output` is its first call anywhere, which for a nested
    # model (a kspec run's `backbone`) is the output of its own inner graph, not connected to base.inputs.
    nodes = [n for n in model_nodes(base) or [] if n.operation is layer]
    if len(nodes) > 1:
        raise _error(node, f"Backbone '{node.name}': cannot cut {base.name} at '{layer_name}': that layer is "
                           f"applied {len(nodes)} times in it (a shared layer)", key="cut_at")
    try:
        outputs = nodes[0].output_tensors if nodes else [layer.output]
        return keras.Model(base.inputs, outputs[0] if len(outputs) == 1 else list(outputs))
    except Exception as exc:
        raise _error(node, f"Backbone '{node.name}': cannot cut {base.name} at '{layer_name}': "
                           f"{keras_message(exc)}", key="cut_at") from None


def _pool(node: NodeSpec, base: keras.Model, pooling: str) -> keras.Model:
    output = base.outputs[0]
    rank = len(output.shape)
    if rank not in (3, 4, 5):
        raise _error(node, f"Backbone '{node.name}': `pooling: {pooling}` needs a feature map (rank 3 to 5), but "
                           f"the backbone's output has shape {shape_text(output)}", key="pooling",
                     hint="leave out `pooling`, or cut at a convolutional layer")
    cls = getattr(keras.layers, f"{POOLING[pooling]}{rank - 2}D")
    taken = {layer.name for layer in base.layers}
    name, i = f"{pooling}_pool", 1
    while name in taken:
        name, i = f"{pooling}_pool_{i}", i + 1
    return keras.Model(base.inputs, cls(name=name)(output))


def _with_preprocess(node: NodeSpec, base: keras.Model, application: str, tensor) -> keras.Model:
    from ..layers.app_preprocess import AppPreprocess, is_identity

    if is_identity(application):
        return base                      # the application preprocesses inside (EfficientNet, ConvNeXt...)
    x = keras.Input(shape=tuple(tensor.shape[1:]), dtype=tensor.dtype, name=f"{node.name}_input")
    y = AppPreprocess(application=application, name="preprocess")(x)
    return keras.Model(x, base(y))


def _rename(model: keras.Model, name: str) -> None:
    if model.name != name:
        model.name = name


def _set_trainable(node: NodeSpec, model: keras.Model, trainable: bool | str) -> None:
    """`trainable` of a Backbone node (see apply_trainable); a pattern that matches nothing is an error
    at the node, with the closest layer name."""
    try:
        matched = apply_trainable(model, trainable)
    except re.error as exc:   # validate checks the pattern first; kept for specs built without it
        raise _error(node, f"Backbone '{node.name}': `trainable` is not a valid regular expression "
                           f"({trainable!r}: {exc})", key="trainable") from None
    if not matched:
        raise _error(node, f"Backbone '{node.name}': the `trainable` pattern {trainable!r} matches no layer "
                           f"of the backbone{did_you_mean(str(trainable), leaf_names(model))}", key="trainable",
                     hint=TRAINABLE_HINT)


TRAINABLE_HINT = "a regular expression searched in layer names, e.g. 'block_16|Conv_1'; true or false for all"


def apply_trainable(model, trainable: bool | str) -> bool:
    """The one implementation of `trainable: true | false | PATTERN`, on a Backbone node and in a
    training phase. False: freeze every layer (BatchNormalization included: it then runs in inference
    mode); true: train every layer; a pattern: train only the layers whose names it matches (re.search),
    everything inside a matching nested model included, and freeze the rest.

    Returns False when a pattern matched no layer (the caller reports it where the pattern was written);
    raises re.error for an invalid pattern."""
    if isinstance(trainable, bool):
        set_all_trainable(model, trainable)
        return True
    pattern = re.compile(str(trainable))
    set_all_trainable(model, True)
    return unfreeze_matching(model, pattern)


def pattern_matches(layer, pattern) -> bool:
    """Whether `unfreeze_matching(layer, pattern)` would match a layer (changes nothing)."""
    pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
    for child in getattr(layer, "layers", None) or getattr(layer, "_layers", None) or []:
        if pattern.search(child.name):
            return True
        if getattr(child, "layers", None) and isinstance(child, keras.Model) and pattern_matches(child, pattern):
            return True
    return False


def leaf_names(model) -> list[str]:
    """The names of the layers inside `model`, nested models flattened (for a suggestion)."""
    return [layer.name for layer in _leaves(model)]


def set_all_trainable(layer, value: bool) -> None:
    """Set `trainable` on a layer and every layer inside it.

    (Keras 3's setter on a Functional model does not reach a sublayer that was frozen on its own.)
    """
    layer.trainable = value
    for child in getattr(layer, "layers", None) or getattr(layer, "_layers", None) or []:
        set_all_trainable(child, value)


def unfreeze_matching(layer, pattern) -> bool:
    """Leave trainable the sublayers of `layer` that match (and all inside them), freeze the rest."""
    matched = False
    for child in getattr(layer, "layers", None) or getattr(layer, "_layers", None) or []:
        if pattern.search(child.name):
            set_all_trainable(child, True)
            matched = True
        elif getattr(child, "layers", None) and isinstance(child, keras.Model):
            matched = unfreeze_matching(child, pattern) or matched
        else:
            child.trainable = False
    return matched


def _leaves(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        else:
            yield layer


# -- errors ----------------------------------------------------------------------------------------

def _error(node: NodeSpec, message: str, key: str = "", hint: str = "") -> SpecError:
    path = node.path
    if key and path:
        path = f"{path}.Backbone.{key}"
    return SpecError(Diagnostic(message, node.loc, path, via=node.via, hint=hint))


def _warn(node: NodeSpec, message: str, category=UserWarning) -> None:
    if node.loc is not None and node.loc.file:
        warnings.warn_explicit(message, category, node.loc.file, node.loc.line or 1, module="kspec")
    else:
        warnings.warn(message, category, stacklevel=4)


def _inputs_text(node: NodeSpec, tensor) -> str:
    tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
    parts = [f"'{n}' (shape {shape_text(t)})" for n, t in zip(node.inputs, tensors)]
    return (" " + ", ".join(parts)) if parts else ""
