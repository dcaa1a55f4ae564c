"""`kspec check SPEC --overfit K`: can the model memorise K training examples?

"Overfit a handful of examples first": a network that cannot drive its loss
to (almost) zero on 16 examples it sees over and over has a bug — in the
model, the loss or the learning rate — that more data will only hide.

The check builds the spec's model exactly as `kspec train` does (the data
stage's preprocessing layers, fitted on the training split; augmentation off),
takes the first K examples of the (seeded, shuffled) training split, and trains
on them as one batch of K for up to N epochs, with no validation. The model
memorises them if the loss ends below `threshold` (1e-2) x its initial value,
or every classification output gets all K examples right; training stops as
soon as the loss is that low, or (classifiers) all K are right and the loss is
below sqrt(threshold) x its initial value. Dropout and weight
regularization stay on (they are part of the model being checked) — they
make memorising harder, and the failure message says so when the model has them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Diagnostic, SpecError
from ..spec.types import Spec

THRESHOLD = 1e-2


@dataclass(frozen=True)
class OverfitResult:
    memorised: bool
    examples: int
    initial_loss: float
    final_loss: float
    epochs: int                      # epochs trained
    max_epochs: int
    accuracy: float | None           # on the K examples (classification outputs), None for regression
    learning_rate: float | None
    message: str

    def __str__(self) -> str:
        return self.message


def _g(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


def build_for_check(spec: Spec, augment: bool = False):
    """(model, splits) built as `kspec train` builds them (splits None when the spec has no data).

    Augmentation is left out unless `augment`: a check wants the same inputs every time.
    """
    import keras

    import compiler.layers  # noqa: F401  (kspec's own layers registered)

    from ..builder import build_model, compile_model
    from ..data import input_layers, load_splits

    keras.utils.set_random_seed(spec.seed)
    keras.mixed_precision.set_global_policy("float32")
    splits, layers = None, None
    if spec.data is not None:
        data = spec.data if augment else dataclasses.replace(spec.data, augment=())
        splits = load_splits(data, spec.model, spec.seed)
        layers = input_layers(data, spec.model, splits.train)
    model = build_model(spec.model, spec.name, layers)
    if splits is not None:
        from ..builder.adapt import adapt_on_split

        adapt_on_split(model, splits.train, spec.train.batch_size if spec.train else 32, lambda line: None,
                        spec.model)
    if spec.train is not None:
        compile_model(model, spec.train, spec.model)
    return model, splits


def output_units(model, outputs) -> dict[str, int]:
    units = {}
    for name, tensor in zip(outputs, model.outputs):
        shape = tensor.shape
        units[name] = int(shape[-1]) if len(shape) > 1 and shape[-1] is not None else 1
    return units


def check_overfit(spec: Spec, examples: int = 16, epochs: int = 300, threshold: float = THRESHOLD,
                  verbose: int = 0) -> OverfitResult:
    """Train the spec's model on its first `examples` training examples; report whether it memorises them."""
    if spec.data is None:
        raise SpecError(Diagnostic("the spec has no `data` section, so there are no examples to memorise",
                                   path="data"))
    if spec.train is None:
        raise SpecError(Diagnostic("the spec has no `train` section (optimizer, loss...)", path="train"))
    if examples < 1:
        raise SpecError(Diagnostic(f"--overfit takes a number of examples >= 1, got {examples}"))
    if epochs < 1:
        raise SpecError(Diagnostic(f"--epochs must be at least 1, got {epochs}"))

    import keras

    from ..data import check_labels, make_dataset

    model, splits = build_for_check(spec)
    check_labels(splits, output_units(model, spec.model.outputs))
    k = min(examples, len(splits.train))
    subset = splits.train.sample(k)          # decoded, for a streamed split
    ds = make_dataset(subset, k, shuffle=False, seed=spec.seed)
    classification = [o for o in spec.model.outputs if splits.tasks.get(o) == "classification"]

    x = subset.x[spec.model.inputs[0].name] if len(subset.x) == 1 else dict(subset.x)
    initial = float(model.evaluate(ds, verbose=0, return_dict=True)["loss"])
    target = threshold * initial if initial > 0 else threshold
    confident = math.sqrt(threshold) * initial if initial > 0 else math.sqrt(threshold)

    def accuracy() -> float | None:
        if not classification:
            return None
        out = model(x, training=False)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        by_name = dict(zip(spec.model.outputs, outs))
        return min(_accuracy(subset.y[o], keras.ops.convert_to_numpy(by_name[o])) for o in classification)

    class Stop(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.acc, self.done = 0, None, False

        def on_epoch_end(self, epoch, logs=None):
            self.epochs = epoch + 1
            loss = float((logs or {}).get("loss", math.nan))
            self.acc = accuracy()
            if math.isfinite(loss) and (loss <= target or (self.acc is not None and self.acc >= 1.0
                                                             and loss <= confident)):
                self.done = True
                self.model.stop_training = True
            elif not math.isfinite(loss):
                self.model.stop_training = True

    stop = Stop()
    model.fit(ds, epochs=epochs, callbacks=[stop], verbose=verbose, shuffle=False)
    final = float(model.evaluate(ds, verbose=0, return_dict=True)["loss"])
    acc = accuracy()
    memorised = (math.isfinite(final) and final <= target) or (acc is not None and acc >= 1.0)
    lr = _learning_rate(model)
    acc_text = f" (accuracy {100 * acc:.0f}%)" if acc is not None else ""
    few = f" (the training split has only {k})" if k < examples else ""
    if memorised:
        message = (f"can memorise {k} examples{few}: loss {_g(initial)} -> {_g(final)} in {stop.epochs} "
                   f"epoch{'s' * (stop.epochs != 1)}{acc_text}")
    else:
        message = (f"cannot memorise {k} examples{few}: loss {_g(initial)} -> {_g(final)} after {stop.epochs} "
                   f"epoch{'s' * (stop.epochs != 1)}{acc_text} — the model, the loss or the learning rate is "
                   f"wrong; {_hints(model, spec, lr, final, initial)}")
    return OverfitResult(memorised, k, initial, final, stop.epochs, epochs, acc, lr, message)


def _accuracy(y_true: Any, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_pred.ndim >= 2 and y_pred.shape[-1] > 1:
        pred = y_pred.argmax(-1)
        one_hot = y_true.ndim == y_pred.ndim and y_true.shape[-1] == y_pred.shape[-1]
        true = y_true.argmax(-1) if one_hot else y_true.reshape(pred.shape)
    else:
        p = y_pred.reshape(len(y_pred), -1)
        cut = 0.5 if p.min() >= 0 and p.max() <= 1 else 0.0        # probabilities or logits
        pred, true = (p > cut).astype(np.int64), y_true.reshape(p.shape)
    return float(np.mean(pred == true))


def _learning_rate(model) -> float | None:
    try:
        lr = model.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)
    except Exception:
        return None


def _hints(model, spec: Spec, lr: float | None, final: float, initial: float) -> str:
    hints = []
    if not math.isfinite(final):
        hints.append("the loss became NaN: lower the learning rate")
    elif final > 0.9 * initial:
        hints.append("the loss hardly moved: try a 10x larger learning rate" + (f" (it is {_g(lr)})" if lr else ""))
    else:
        hints.append("it learns, but too slowly: train longer (--epochs) or raise the learning rate"
                     + (f" (it is {_g(lr)})" if lr else ""))
    hints.append("check the output layer matches the loss (softmax + sparse_categorical_crossentropy, "
                 "sigmoid + binary_crossentropy, linear + mse)")
    dropout = [lay.name for lay in _layers(model) if "Dropout" in type(lay).__name__ or "Noise" in type(lay).__name__]
    regularized = [lay.name for lay in _layers(model)
                   if any(getattr(lay, a, None) is not None for a in
                          ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                           "recurrent_regularizer", "embeddings_regularizer"))]
    if dropout or regularized:
        parts = []
        if dropout:
            parts.append(f"dropout/noise ({', '.join(dropout[:4])})")
        if regularized:
            parts.append(f"weight regularization ({', '.join(regularized[:4])})")
        hints.append(f"{' and '.join(parts)} make memorising harder: check again without them")
    return "; ".join(hints)


def _layers(model):
    from ..keras_compat import all_layers

    return all_layers(model)
