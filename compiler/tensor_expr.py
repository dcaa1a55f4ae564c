"""Tensor expressions for the `Expression` layer: safe arithmetic plus calls to an allow-list of `keras.ops`.

`sqrt(maximum(sum(square(a - b), axis=-1, keepdims=True), 1e-7))` with inputs `a`, `b`.

What `Lambda` is used for in practice, without running code: the text is parsed
with Python's `ast` and only this grammar is accepted —
- numbers, True/False/None, strings (a dtype, einsum subscripts), tuples and lists of them;
- names: the layer's inputs only (parameters are substituted before, by expansion);
- + - * / // % ** @ and unary -, parentheses;
- calls `f(...)` of a function in FUNCTIONS (a plain name: no attributes, no subscripts),
  with positional arguments (expressions or literals) and keyword arguments (literals only).

This module is plain data and `ast`: `kspec validate` checks expressions with it
without importing Keras; the layer (compiler/layers/expression.py) evaluates
the same tree over `keras.ops`. A test checks every FUNCTIONS entry against
the installed `keras.ops` signatures.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .suggest import did_you_mean

MAX_CHARS = 2000
MAX_NODES = 500          # ast nodes: bounds the work of checking and of tracing the graph

# keras.ops function -> its parameters in order; `name=` is optional, `*name` takes any number.
FUNCTIONS: dict[str, str] = {
    "abs": "x", "absolute": "x", "negative": "x", "square": "x", "sqrt": "x", "rsqrt": "x",
    "exp": "x", "log": "x", "log1p": "x", "expm1": "x", "log2": "x", "log10": "x",
    "sin": "x", "cos": "x", "tan": "x", "tanh": "x", "sinh": "x", "cosh": "x",
    "arcsin": "x", "arccos": "x", "arctan": "x", "sign": "x", "floor": "x", "ceil": "x", "erf": "x",
    "sigmoid": "x", "relu": "x", "relu6": "x", "softplus": "x", "softsign": "x", "silu": "x", "selu": "x",
    "hard_sigmoid": "x", "logical_not": "x",
    "gelu": "x, approximate=", "softmax": "x, axis=", "log_softmax": "x, axis=", "elu": "x, alpha=",
    "leaky_relu": "x, negative_slope=", "round": "x, decimals=",
    "add": "x1, x2", "subtract": "x1, x2", "multiply": "x1, x2", "divide": "x1, x2",
    "true_divide": "x1, x2", "floor_divide": "x1, x2", "mod": "x1, x2", "power": "x1, x2",
    "arctan2": "x1, x2", "maximum": "x1, x2", "minimum": "x1, x2", "matmul": "x1, x2", "dot": "x1, x2",
    "outer": "x1, x2", "greater": "x1, x2", "greater_equal": "x1, x2", "less": "x1, x2",
    "less_equal": "x1, x2", "equal": "x1, x2", "not_equal": "x1, x2", "logical_and": "x1, x2",
    "logical_or": "x1, x2",
    "clip": "x, x_min, x_max", "tensordot": "x1, x2, axes=", "einsum": "subscripts, *operands",
    "sum": "x, axis=, keepdims=", "mean": "x, axis=, keepdims=", "std": "x, axis=, keepdims=",
    "var": "x, axis=, keepdims=", "max": "x, axis=, keepdims=, initial=", "min": "x, axis=, keepdims=, initial=",
    "prod": "x, axis=, keepdims=, dtype=", "argmax": "x, axis=, keepdims=", "argmin": "x, axis=, keepdims=",
    "any": "x, axis=, keepdims=", "all": "x, axis=, keepdims=", "logsumexp": "x, axis=, keepdims=",
    "norm": "x, ord=, axis=, keepdims=", "normalize": "x, axis=, order=, epsilon=",
    "average": "x, axis=, weights=", "cumsum": "x, axis=, dtype=", "cumprod": "x, axis=, dtype=",
    "transpose": "x, axes=", "reshape": "x, newshape", "expand_dims": "x, axis", "squeeze": "x, axis=",
    "concatenate": "xs, axis=", "stack": "x, axis=", "tile": "x, repeats", "repeat": "x, repeats, axis=",
    "flip": "x, axis=", "roll": "x, shift, axis=", "sort": "x, axis=", "where": "condition, x1=, x2=",
    "cast": "x, dtype", "moveaxis": "x, source, destination", "swapaxes": "x, axis1, axis2",
    "broadcast_to": "x, shape", "zeros_like": "x, dtype=", "ones_like": "x, dtype=",
    "slice": "inputs, start_indices, shape", "take": "x, indices, axis=", "take_along_axis": "x, indices, axis=",
    "one_hot": "x, num_classes, axis=, dtype=", "diagonal": "x, offset=, axis1=, axis2=",
    "triu": "x, k=", "tril": "x, k=",
}

_BINARY: dict[type, Callable] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                 ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
                                 ast.Pow: operator.pow, ast.MatMult: operator.matmul}
_UNARY: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]       # every parameter name, in order
    required: int                 # how many positional arguments are required
    variadic: bool                # the last parameter takes any number (`*operands`)


def signature(function: str) -> Signature:
    parts = [p.strip() for p in FUNCTIONS[function].split(",")]
    return Signature(tuple(p.strip("*=") for p in parts), sum(1 for p in parts if not p.endswith("=")
                                                              and not p.startswith("*")),
                     any(p.startswith("*") for p in parts))


class TensorExprError(ValueError):
    """A bad expression; `offset` is the character in the text where the problem is (0-based)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


def parse(text: str, names: Sequence[str]) -> ast.Expression:
    """Parse and check `text` against the grammar, with `names` as the only names. Raises TensorExprError."""
    if not isinstance(text, str) or not text.strip():
        raise TensorExprError("the expression is empty")
    if len(text) > MAX_CHARS:
        raise TensorExprError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise TensorExprError(f"not a valid expression: {exc.msg}", max((exc.offset or 1) - 1, 0)) from None
    except (RecursionError, MemoryError, ValueError):
        raise TensorExprError("the expression is nested too deeply") from None
    count = sum(1 for _ in ast.walk(tree))
    if count > MAX_NODES:
        raise TensorExprError(f"the expression has {count} parts, more than {MAX_NODES}")
    _check(tree.body, tuple(dict.fromkeys(names)), tensor=True)
    return tree


def _check(node: ast.AST, names: tuple[str, ...], tensor: bool) -> None:
    """`tensor`: an expression position (a name or a call may stand here); else a literal position."""
    where = getattr(node, "col_offset", 0)
    if isinstance(node, ast.Constant):
        if node.value is None or type(node.value) in (bool, int, float, str):
            return
        raise TensorExprError(f"the constant {node.value!r} is not allowed", where)
    if isinstance(node, (ast.Tuple, ast.List)):
        for item in node.elts:
            _check(item, names, tensor)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, names, tensor)
        return
    if not tensor:
        raise TensorExprError("keyword arguments take literal values only (numbers, strings, True/False/None, "
                              "tuples of them)", where)
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(names) or "none"
            raise TensorExprError(f"unknown name '{node.id}' (the inputs here: {known})"
                                  + did_you_mean(node.id, names), where)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names, tensor)
        _check(node.right, names, tensor)
        return
    if isinstance(node, ast.Call):
        _check_call(node, names)
        return
    if isinstance(node, ast.Attribute):
        raise TensorExprError("attributes ('.') are not allowed: call the keras.ops function by its name "
                              "(e.g. `sqrt(x)`)", where)
    raise TensorExprError(f"'{type(node).__name__}' is not allowed in an expression: only inputs, numbers, "
                          "+ - * / // % ** @ and calls of keras.ops functions", where)


def _check_call(node: ast.Call, names: tuple[str, ...]) -> None:
    where = node.col_offset
    if not isinstance(node.func, ast.Name):
        raise TensorExprError("only keras.ops functions called by name may be called (no attributes)", where)
    function = node.func.id
    if function not in FUNCTIONS:
        raise TensorExprError(f"unknown function '{function}'" + did_you_mean(function, FUNCTIONS)
                              + " (the allowed keras.ops functions are listed in docs/expressions.md)", where)
    sig = signature(function)
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise TensorExprError("* and ** arguments are not allowed", where)
    given = len(node.args)
    by_name = [str(k.arg) for k in node.keywords]
    positional = sig.params if not sig.variadic else sig.params[:-1]
    if not sig.variadic and given > len(sig.params):
        raise TensorExprError(f"{function}() takes at most {len(sig.params)} arguments ({', '.join(sig.params)}), "
                              f"{given} given", where)
    for name in by_name:
        if name not in positional or (sig.variadic and name == sig.params[-1]):
            raise TensorExprError(f"{function}() has no argument '{name}' (arguments: {', '.join(sig.params)})"
                                  + did_you_mean(name, positional), where)
        if positional.index(name) < given:
            raise TensorExprError(f"{function}() got '{name}' twice", where)
    missing = [p for p in positional[:sig.required] if positional.index(p) >= given and p not in by_name]
    if missing:
        raise TensorExprError(f"{function}() needs {', '.join(missing)} ({function}({FUNCTIONS[function]}))", where)
    for arg in node.args:
        _check(arg, names, tensor=True)
    for keyword in node.keywords:
        _check(keyword.value, names, tensor=False)


def evaluate(tree: ast.Expression, values: Mapping[str, Any], ops: Any) -> Any:
    """Evaluate a checked tree with `values` for the names, calling the functions of `ops` (keras.ops)."""
    return _eval(tree.body, values, ops)


def _eval(node: ast.AST, values: Mapping[str, Any], ops: Any) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, values, ops) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, values, ops) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, values, ops))
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, values, ops), _eval(node.right, values, ops))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = getattr(ops, node.func.id)
        return function(*(_eval(a, values, ops) for a in node.args),
                        **{str(k.arg): _eval(k.value, values, ops) for k in node.keywords})
    raise TensorExprError(f"'{type(node).__name__}' is not allowed")   # parse() lets nothing else through


def input_names(written: Sequence[Any]) -> list[str]:
    """The names an Expression's inputs go by: the input references as written (`[a, b]`), where each is a
    plain identifier; `x0`, `x1`... for the others (a `block.node` reference, `$input`)."""
    out = []
    for i, ref in enumerate(written):
        ref = str(ref)
        out.append(ref if ref.isidentifier() and ref not in FUNCTIONS else f"x{i}")
    return out
