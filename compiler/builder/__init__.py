"""The build stage: a typed `ModelSpec` -> the Keras Functional model a careful engineer would write.

    build_model(model_spec, name)           -> keras.Model        (graph.py)
    compile_model(model, train_spec, spec)  -> None, model.compile (compile.py)
    describe(model, out_dir)                -> summary text        (summary.py)

Keras errors raised while building become `SpecError`s that point at the node
in the spec (errors.py). Importing this package is cheap: Keras (and so
TensorFlow) is only imported when one of the functions above is first used.
"""

from __future__ import annotations

__all__ = ["build_model", "compile_model", "describe"]


def __getattr__(name: str):
    if name == "build_model":
        from .graph import build_model
        return build_model
    if name == "compile_model":
        from .compile import compile_model
        return compile_model
    if name == "describe":
        from .summary import describe
        return describe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
