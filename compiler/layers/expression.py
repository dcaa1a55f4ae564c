"""`Expression`: a whitelisted tensor expression over `keras.ops`, as a layer (what `Lambda` is used for).

    - Expression: {expr: "sqrt(maximum(sum(square(a - b), axis=-1, keepdims=True), 1e-7))"}
      inputs: [a, b]

The expression is data, never code: its text is parsed with the grammar of
compiler/tensor_expr.py (the same check `kspec validate` runs) and
evaluated by walking that tree over `keras.ops`. So the layer saves in
`.keras` as its text and loads with `safe_mode` on, and the graph it traces is
made of ordinary ops (SavedModel, TFLite and ONNX export it like any layer).

`names` are what the inputs are called in the expression, in input order. kspec
fills them from the node's `inputs:` as written (`x` for a single chained input);
give them yourself where an input's name is not an identifier.
"""

from __future__ import annotations

from typing import Sequence

import keras

from .. import tensor_expr


@keras.saving.register_keras_serializable(package="kspec")
class Expression(keras.layers.Layer):
    """y = expr(inputs), `expr` over the keras.ops functions of tensor_expr.FUNCTIONS."""

    def __init__(self, expr: str, names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.expr = str(expr)
        self.names = [str(n) for n in names] if names else ["x"]
        self._tree = tensor_expr.parse(self.expr, self.names)

    def call(self, inputs):
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(tensors) != len(self.names):
            raise ValueError(f"the expression names {len(self.names)} input(s) ({', '.join(self.names)}) "
                             f"but the layer is called on {len(tensors)}")
        return tensor_expr.evaluate(self._tree, dict(zip(self.names, tensors)), keras.ops)

    def get_config(self):
        return {**super().get_config(), "expr": self.expr, "names": list(self.names)}
