"""What `kspec build` prints: Keras's summary, the parameter counts, and a diagram of the graph.

The diagram is `model.png` from `keras.utils.plot_model` when pydot and Graphviz
are installed; otherwise `model.txt`, a plain-text rendering of the graph with
one line per layer call: name, class, the layers it takes its inputs from, and
its output shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from ..keras_compat import check_graphviz, inbound_nodes, model_nodes, producer

SUMMARY_WIDTH = 110


def describe(model: keras.Model, out_dir: Path | None, stem: str = "model") -> str:
    """The summary text of `model`; with `out_dir`, also writes the diagram there (`STEM.png` or `STEM.txt`:
    `build -o DIR/X.keras` writes DIR/X.txt, so builds into one folder keep their own diagrams)."""
    lines: list[str] = []
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(SUMMARY_WIDTH)    # rich, which Keras prints with, crops at the terminal width
    try:
        model.summary(print_fn=lambda text, *args, **kwargs: lines.append(text.rstrip("\n")),
                      line_length=SUMMARY_WIDTH)
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    total, trainable, non_trainable = parameter_counts(model)
    lines.append(f"Parameters: {total:,} total, {trainable:,} trainable, {non_trainable:,} non-trainable")
    if out_dir is not None:
        path = write_diagram(model, Path(out_dir), stem)
        lines.append(f"Diagram: {path}")
    return "\n".join(lines)


def parameter_counts(model: keras.Model) -> tuple[int, int, int]:
    """(total, trainable, non-trainable) parameter counts."""
    trainable = sum(_size(w) for w in model.trainable_weights)
    non_trainable = sum(_size(w) for w in model.non_trainable_weights)
    return trainable + non_trainable, trainable, non_trainable


def _size(weight) -> int:
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def write_diagram(model: keras.Model, out_dir: Path, stem: str = "model") -> Path:
    """`STEM.png` via plot_model if pydot and Graphviz work, else the text rendering in `STEM.txt`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if _graphviz_available():
        path = out_dir / f"{stem}.png"
        try:
            keras.utils.plot_model(model, to_file=str(path), show_shapes=True, show_layer_names=True,
                                   show_dtype=False, expand_nested=False, dpi=96)
            return path
        except Exception:
            pass                         # a broken Graphviz install: fall back to text
    path = out_dir / f"{stem}.txt"
    path.write_text(text_diagram(model) + "\n", encoding="utf-8")
    return path


def _graphviz_available() -> bool:
    return check_graphviz()


def text_diagram(model: keras.Model) -> str:
    """One line per layer call, in topological order: `name (Class) <- inputs -> shape`.
    A layer called more than once (shared weights) shows each call as `name[i]`."""
    relevant = _model_nodes(model)

    def calls_of(layer):
        nodes = inbound_nodes(layer)
        return [i for i, n in enumerate(nodes) if relevant is None or id(n) in relevant]

    def label(layer, index: int | None) -> str:
        return f"{layer.name}[{index}]" if index is not None and len(calls_of(layer)) > 1 else layer.name

    rows: list[tuple[str, str, str, str]] = []
    for layer in model.layers:
        for index in calls_of(layer) or [None]:
            node = inbound_nodes(layer)[index] if index is not None else None
            sources = []
            if node is not None:
                for tensor in node.input_tensors:
                    made_by = producer(tensor)
                    if made_by is not None:
                        sources.append(label(*made_by))
            rows.append((label(layer, index), type(layer).__name__, ", ".join(sources), _output_shape(layer, node)))
    width_name = max((len(r[0]) for r in rows), default=4)
    width_cls = max((len(r[1]) + 2 for r in rows), default=4)
    out = [f"{model.name}: {len(model.inputs)} input(s), {len(model.outputs)} output(s)"]
    for name, cls, inputs, shape in rows:
        source_text = f"<- {inputs}" if inputs else "(input)"
        out.append(f"{name:<{width_name}}  {'(' + cls + ')':<{width_cls}}  {source_text}  -> {shape}")
    out.append("outputs: " + ", ".join(getattr(model, "output_names", []) or []))
    return "\n".join(out)


def _model_nodes(model) -> set[int] | None:
    nodes = model_nodes(model)
    return None if nodes is None else {id(n) for n in nodes}


def _output_shape(layer, node) -> str:
    tensors = node.output_tensors if node is not None else []
    shapes = [tuple(t.shape) for t in tensors]
    if not shapes:
        try:
            shapes = [tuple(layer.output.shape)]
        except Exception:
            return "?"
    return ", ".join(str(s) for s in shapes)
