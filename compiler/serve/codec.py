"""Request bodies -> one array per model input, and every mistake as a 400 that names the field.

Three request forms, all JSON:
- TF Serving's row form `{"instances": [EXAMPLE, ...]}`: an example is the input's value
  (one input), or `{INPUT: VALUE, ...}` (any number of inputs);
- TF Serving's column form `{"inputs": VALUE}` (one input) or `{"inputs": {INPUT: [VALUE, ...]}}`;
- kspec's `/predict`: `{"records": [{FIELD: VALUE, ...}, ...]}` (or the bare list), where the
  fields of an input trained from CSV columns are those columns (a categorical column takes
  its category as a string and is one-hot encoded exactly as in training), and any other
  input is a field named after the input.

A VALUE is nested lists of numbers in the input's shape (a flat list of the right length is
reshaped, as `kspec predict` does for CSV rows), or `{"b64": BASE64}` image bytes for an
image input. JSON is parsed with NaN/Infinity refused; the body size is bounded by the
server (413) before this module sees it, the number of examples and values here.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..suggest import did_you_mean
from .defaults import MAX_EXAMPLES, MAX_IMAGE_PIXELS, MAX_VALUES
from .images import ImageError, decode_image
from .model import InputInfo


class RequestError(ValueError):
    """A bad request: `status` (400, 413, 503...) and a message naming what was wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class Limits:
    max_examples: int = MAX_EXAMPLES
    max_values: int = MAX_VALUES
    max_image_pixels: int = MAX_IMAGE_PIXELS


def parse_json(body: bytes) -> Any:
    def refuse(constant: str):
        raise RequestError(f"the body holds {constant}, which is not a number JSON allows")

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the body is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise RequestError("the body is empty; send a JSON object")
    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:
        raise RequestError("the JSON body is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({value[:20]!r}{'...' if len(value) > 20 else ''})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join("any" if d is None else str(d) for d in shape) + "]"


class Decoder:
    """Turns parsed JSON into `{input name: array}` for one served model."""

    def __init__(self, inputs: list[InputInfo], limits: Limits | None = None):
        self.inputs = inputs
        self.by_name = {i.name: i for i in inputs}
        self.limits = limits or Limits()

    # -- TF Serving's two forms ---------------------------------------------------------------

    def tf_serving(self, body: Any) -> tuple[dict[str, np.ndarray], str]:
        """The arrays, and "instances" or "inputs" (the form the answer takes)."""
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object with \"instances\" or \"inputs\", not {_kind(body)}")
        forms = [k for k in ("instances", "inputs") if k in body]
        unknown = [k for k in body if k not in ("instances", "inputs", "signature_name")]
        if unknown:
            close = did_you_mean(unknown[0], ["instances", "inputs"])
            raise RequestError(f"unknown field {unknown[0]!r} in the request{close}"
                               " (fields: instances or inputs, signature_name)")
        if len(forms) != 1:
            raise RequestError("the request needs exactly one of \"instances\" (rows) and \"inputs\" (columns)")
        signature = body.get("signature_name", "serving_default")
        if signature not in ("serving_default", "", None):
            raise RequestError(f"unknown signature_name {signature!r}; this model has 'serving_default'")
        if forms[0] == "instances":
            return self.instances(body["instances"]), "instances"
        return self.columns(body["inputs"]), "inputs"

    def instances(self, rows: Any) -> dict[str, np.ndarray]:
        rows = self._examples(rows, "instances")
        single = self.inputs[0] if len(self.inputs) == 1 else None
        columns: dict[str, list] = {i.name: [] for i in self.inputs}
        for k, row in enumerate(rows):
            where = f"instances[{k}]"
            if single is not None and not self._named(row):
                columns[single.name].append(self.example(single, row, where))
                continue
            if not isinstance(row, dict):
                raise RequestError(f"{where} must be an object of the model's inputs ({self._names()}), "
                                   f"not {_kind(row)}")
            self._check_keys(row, list(self.by_name), where, "input")
            for i in self.inputs:
                columns[i.name].append(self.example(i, row[i.name], f"{where}.{i.name}"))
        return self._stack(columns)

    def columns(self, value: Any) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1 and not self._named(value):
            value = {self.inputs[0].name: value}
        if not isinstance(value, dict):
            raise RequestError(f"\"inputs\" must be an object of the model's inputs ({self._names()}), "
                               f"not {_kind(value)}")
        self._check_keys(value, list(self.by_name), "inputs", "input")
        columns, counts = {}, {}
        for i in self.inputs:
            examples = self._examples(value[i.name], f"inputs.{i.name}")
            columns[i.name] = [self.example(i, v, f"inputs.{i.name}[{k}]") for k, v in enumerate(examples)]
            counts[i.name] = len(examples)
        if len(set(counts.values())) > 1:
            raise RequestError("the inputs hold different numbers of examples: "
                               + ", ".join(f"{n}: {c}" for n, c in counts.items()))
        return self._stack(columns)

    def _named(self, value: Any) -> bool:
        """An object keyed by input names (not a {"b64": ...} value)."""
        return isinstance(value, dict) and not (set(value) == {"b64"})

    # -- kspec's records ------------------------------------------------------------------------

    def fields(self) -> list[dict]:
        """The record fields `/predict` takes, for the page and the metadata."""
        out = []
        for i in self.inputs:
            if i.features:
                for name, categories in _feature_fields(i.features):
                    field: dict = {"name": name, "input": i.name, "kind": "category" if categories else "number"}
                    if categories:
                        field["categories"] = categories
                    out.append(field)
            else:
                out.append({"name": i.name, "input": i.name, "kind": "image" if i.image else "tensor",
                            "shape": [d for d in i.shape]})
        return out

    def records(self, body: Any) -> dict[str, np.ndarray]:
        if isinstance(body, dict):
            if set(body) != {"records"}:
                extra = next((k for k in body if k != "records"), None)
                raise RequestError(f"unknown field {extra!r} in the request; send {{\"records\": [...]}}"
                                   if extra else "the request needs \"records\": a list of records")
            body = body["records"]
        rows = self._examples(body, "records")
        fields = {f["name"]: f for f in self.fields()}
        columns: dict[str, list] = {i.name: [] for i in self.inputs}
        for k, record in enumerate(rows):
            where = f"records[{k}]"
            if not isinstance(record, dict):
                raise RequestError(f"{where} must be an object of fields ({', '.join(fields)}), not {_kind(record)}")
            self._check_keys(record, list(fields), where, "field")
            for i in self.inputs:
                if i.features:
                    columns[i.name].append(self._features(i, record, where))
                else:
                    columns[i.name].append(self.example(i, record[i.name], f"{where}.{i.name}"))
        return self._stack(columns)

    def _features(self, i: InputInfo, record: dict, where: str) -> np.ndarray:
        """One record's CSV-column fields encoded as training encoded them (`features_like`)."""
        row = np.zeros(len(i.features), dtype=np.float32)
        for k, name in enumerate(i.features):
            column, category = _split(name, i.features)
            value = record[column]
            if category is None:
                row[k] = self._number(value, f"{where}.{column}")
            else:
                if not isinstance(value, str):
                    raise RequestError(f"{where}.{column} must be one of the categories "
                                       f"{', '.join(_categories(column, i.features))} (a string), not {_kind(value)}")
                if value not in _categories(column, i.features):
                    raise RequestError(f"{where}.{column} is {value!r}, a category the model was not trained on "
                                       f"(known: {', '.join(_categories(column, i.features))})")
                row[k] = float(value == category)
        return self._fit(i, row, where)

    # -- one example of one input ----------------------------------------------------------------

    def example(self, i: InputInfo, value: Any, where: str) -> np.ndarray:
        if isinstance(value, dict):
            if set(value) != {"b64"}:
                raise RequestError(f"{where} is an object; a value is a list of numbers"
                                   + (" or {\"b64\": IMAGE_BYTES}" if i.image else "")
                                   + f" (input {i.name!r}, shape {_shape(i.shape)})")
            return self._b64(i, value["b64"], where)
        if i.dtype == "string":
            return np.asarray(value, dtype=object)
        array = self._numbers(value, where)
        return self._fit(i, array, where)

    def _b64(self, i: InputInfo, text: Any, where: str) -> np.ndarray:
        if not isinstance(text, str):
            raise RequestError(f"{where}.b64 must be a base64 string, not {_kind(text)}")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{where}.b64 is not valid base64") from None
        if i.dtype == "string":
            return np.asarray(data, dtype=object)
        if i.image is None:
            raise RequestError(f"{where}: input {i.name!r} (shape {_shape(i.shape)}) is not an image; "
                               "give a list of numbers")
        size, mode = i.image
        try:
            pixels = decode_image(data, size, mode, self.limits.max_image_pixels)
        except ImageError as exc:
            raise RequestError(f"{where}: the image {exc}") from None
        return self._fit(i, pixels, where)

    def _numbers(self, value: Any, where: str) -> np.ndarray:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return np.asarray(value, dtype=np.float64)
        if not isinstance(value, list):
            raise RequestError(f"{where} must be a number or a list of numbers, not {_kind(value)}")
        try:
            array = np.asarray(value)
        except ValueError:
            array = None
        if array is None or array.dtype.kind not in "iuf":
            self._find_bad(value, where)
            raise RequestError(f"{where} is not a rectangular list of numbers (rows of different lengths)")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RequestError(f"{where} holds a number too large for float")
        return array

    def _find_bad(self, value: Any, where: str) -> None:
        """Raise for the first entry that is not a number or a list, naming its position."""
        stack = [(value, where)]
        while stack:
            v, w = stack.pop()
            if isinstance(v, list):
                stack.extend((x, f"{w}[{k}]") for k, x in reversed(list(enumerate(v))))
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise RequestError(f"{w} is {_kind(v)}; a number belongs there")

    def _number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"{where} must be a number, not {_kind(value)}")
        if not math.isfinite(value):
            raise RequestError(f"{where} is not a finite number")
        return float(value)

    def _fit(self, i: InputInfo, array: np.ndarray, where: str) -> np.ndarray:
        """Check (and, for a flat list of the right length, reshape to) the input's shape and dtype."""
        want = tuple(i.shape)
        have = array.shape
        if array.ndim == 0 and len(want) == 1 and want[0] in (1, None):
            array = array.reshape(1)
        elif (have != want and None not in want and array.size == math.prod(want)
              and (array.ndim == 1 or len(have) != len(want))):
            array = array.reshape(want)
        have = array.shape
        if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want, have)):
            raise RequestError(f"{where} has shape {_shape(have)} but input {i.name!r} takes shape {_shape(want)} "
                               f"per example{' (' + str(math.prod(want)) + ' values)' if None not in want else ''}")
        if i.dtype.startswith(("int", "uint")):
            if array.dtype.kind == "f" and np.any(np.mod(array, 1) != 0):
                raise RequestError(f"{where}: input {i.name!r} is {i.dtype} and takes whole numbers")
            return array.astype(i.dtype)
        if i.dtype in ("float64", "float16"):
            return array.astype(i.dtype)
        return array.astype(np.float32)

    # -- shared checks -------------------------------------------------------------------------

    def _examples(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            raise RequestError(f"{where} must be a list of examples, not {_kind(value)}")
        if not value:
            raise RequestError(f"{where} is empty; send at least one example")
        if len(value) > self.limits.max_examples:
            raise RequestError(f"{where} holds {len(value):,} examples, more than the limit of "
                               f"{self.limits.max_examples:,} per request; split it", status=413)
        return value

    def _check_keys(self, value: dict, expected: list[str], where: str, what: str) -> None:
        unknown = [k for k in value if k not in expected]
        if unknown:
            raise RequestError(f"{where} has unknown {what} {unknown[0]!r}{did_you_mean(unknown[0], expected)} "
                               f"({what}s: {', '.join(expected)})")
        missing = [k for k in expected if k not in value]
        if missing:
            raise RequestError(f"{where} lacks {what} {missing[0]!r} ({what}s: {', '.join(expected)})")

    def _names(self) -> str:
        return ", ".join(self.by_name)

    def _stack(self, columns: dict[str, list]) -> dict[str, np.ndarray]:
        total = sum(sum(a.size for a in examples) for examples in columns.values())
        if total > self.limits.max_values:
            raise RequestError(f"the request holds {total:,} values, more than the limit of "
                               f"{self.limits.max_values:,}; split it", status=413)
        out = {}
        for name, examples in columns.items():
            i = self.by_name[name]
            if None in i.shape and len({a.shape for a in examples}) > 1:
                raise RequestError(f"the examples of input {name!r} have different shapes "
                                   f"({', '.join(sorted({_shape(a.shape) for a in examples}))}); one request is "
                                   "one batch, so they must agree")
            out[name] = np.stack(examples)
        return out


def _split(name: str, features: tuple[str, ...]) -> tuple[str, str | None]:
    """A recorded feature name -> (record field, category or None): `color=red` is a one-hot slot."""
    if "=" in name:
        column, category = name.split("=", 1)
        if column not in features:
            return column, category
    return name, None


def _categories(column: str, features: tuple[str, ...]) -> list[str]:
    return [c for f in features for col, c in [_split(f, features)] if col == column and c is not None]


def _feature_fields(features: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(record field, its categories) in the order the columns first appear."""
    seen: dict[str, list[str]] = {}
    for f in features:
        column, category = _split(f, features)
        seen.setdefault(column, [])
        if category is not None:
            seen[column].append(category)
    return list(seen.items())
