"""Safe arithmetic for `${expr}`: numbers, parameters, + - * / // % **, parentheses.

Parsed with Python's `ast` and evaluated by walking a whitelist of node types:
no names but the given parameters, no attribute access, no calls, no
subscripts, no comprehensions. Powers and results are bounded so that
`${10 ** 10 ** 10}` fails at once instead of hanging.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Mapping

MAX_EXPR_CHARS = 200
MAX_EXPONENT = 64          # 2 ** 64 is plenty for layer sizes
MAX_MAGNITUDE = 1e15

_BINARY: dict[type, Callable] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY: dict[type, Callable] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class ExprError(ValueError):
    """A bad `${...}` expression; the message says what is not allowed."""


def evaluate(text: str, params: Mapping[str, object]) -> int | float:
    """Evaluate `text` (without the `${ }`) with `params` as the only names.

    >>> evaluate("64 * 2 ** i", {"i": 2})
    256
    """
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"'{text}' is not an arithmetic expression") from None
    return _eval(tree.body, params)


def _eval(node: ast.AST, params: Mapping[str, object]):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ExprError(f"unknown name '{node.id}' in expression (parameters here: {known})")
        value = params[node.id]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExprError(f"parameter '{node.id}' is {value!r}, not a number")
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, params))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, params), _eval(node.right, params)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_MAGNITUDE):
            raise ExprError(f"power {left} ** {right} is too large (exponent limit {MAX_EXPONENT})")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ExprError("division by zero in expression") from None
        except OverflowError:
            raise ExprError("expression result is too large") from None
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)) \
                or abs(result) > MAX_MAGNITUDE:
            raise ExprError("expression result is too large or not a real number")
        return result
    what = type(node).__name__
    raise ExprError(f"'{what}' is not allowed in an expression: only numbers, parameters and "
                    "+ - * / // % ** with parentheses")
