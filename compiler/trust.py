"""Trust is given on the command line only, by the person running the command.

Nothing read from a file (a spec, a run directory's spec.yaml, a model file) can enable code
execution:

- a model file loads with Keras safe mode on, unless its path was named with `--trust PATH`
  (`trust_files`, `safe_mode_for`); a spec's `safe_mode: false` is an error at validate
  (compiler/spec/safety.py);
- plugin modules are imported only from `--plugin MODULE`; a spec (or a run's spec.yaml) may
  *declare* `plugins: [m]`, and then `compiler.registry.require_declared_plugins` says exactly
  which flag to pass (the one check, for specs and run directories alike).

When safe mode refuses a file, `describe_unsafe` reads the archive's config.json (bounded, no
Keras) to say what the file really holds (a Lambda layer, a TFSMLayer, a lookup layer reading
a vocabulary file...), and the message suggests `--trust PATH`, never a spec line.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterable

from .errors import Diagnostic

MAX_CONFIG_BYTES = 64 << 20              # a config.json larger than this is not inspected
_TRUSTED: set[Path] = set()


def trust_files(paths: Iterable[str | os.PathLike]) -> None:
    """Trust these model files (`--trust PATH`, repeatable): only they load with safe_mode=False.
    A run directory stands for its model.keras and checkpoints."""
    for path in paths or ():
        _TRUSTED.add(_key(path))


def clear() -> None:
    _TRUSTED.clear()


def is_trusted(path: str | os.PathLike) -> bool:
    """True when `path` (resolved, symbolic links included) or a folder above it was named with --trust."""
    key = _key(path)
    return any(key == t or t in key.parents for t in _TRUSTED)


def safe_mode_for(path: str | os.PathLike) -> bool:
    """The `safe_mode` to load `path` with: True unless the command line trusted it."""
    return not is_trusted(path)


def _key(path: str | os.PathLike) -> Path:
    try:
        return Path(os.path.expanduser(str(path))).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(str(path)))


# -- what a refused file contains ------------------------------------------------------------------

LOOKUPS = ("StringLookup", "IntegerLookup", "TextVectorization")


def describe_unsafe(path: str | os.PathLike, keras_text: str = "") -> str:
    """What in the model file at `path` safe mode refuses, in words ("a Lambda layer 'f' (Python
    code)..."); from its config.json, else from Keras's message `keras_text`."""
    found = _unsafe_parts(Path(path))
    if not found:
        low = keras_text.lower()
        if "tfsmlayer" in low:
            found = ["a TFSMLayer (it loads an external SavedModel, whose graph would run)"]
        elif "vocabulary file" in low:
            found = ["a lookup layer that reads a vocabulary file outside the model archive"]
        elif "lambda" in low:
            found = ["a Python lambda (code that would run when it is loaded)"]
        else:
            found = ["an object that Keras safe mode refuses to deserialize"]
    if len(found) > 3:
        found = found[:3] + [f"{len(found) - 3} more"]
    return ", ".join(found)


def _unsafe_parts(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                return []
            config = json.loads(archive.read(info))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError):
        return []
    found: list[str] = []
    _walk(config, found, 0)
    return list(dict.fromkeys(found))


def _walk(node: Any, found: list[str], depth: int) -> None:
    if depth > 200 or len(found) > 20:
        return
    if isinstance(node, dict):
        cls = node.get("class_name")
        config = node["config"] if isinstance(node.get("config"), dict) else {}
        name = config.get("name")
        named = f" '{name}'" if isinstance(name, str) else ""
        if cls == "Lambda":
            found.append(f"a Lambda layer{named} (Python code that would run when the model is loaded or called)")
        elif cls == "__lambda__":
            found.append("a serialized Python lambda (code that would run when it is loaded)")
        elif cls == "TFSMLayer":
            where = config.get("filepath")
            found.append(f"a TFSMLayer{named} (it loads the external SavedModel "
                         f"{where!r}, whose graph would run)" if where else f"a TFSMLayer{named}")
        elif cls == "TorchModuleWrapper":
            found.append(f"a TorchModuleWrapper{named} (a pickled PyTorch module: code)")
        elif cls in LOOKUPS and isinstance(config.get("vocabulary"), str):
            found.append(f"a {cls} layer{named} that reads the file {config['vocabulary']!r} from outside "
                         "the model archive")
        for value in node.values():
            _walk(value, found, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found, depth + 1)


def refused(path: str | os.PathLike, keras_text: str = "", what: str = "") -> Diagnostic:
    """The message for a model file that safe mode refused: what it contains, and the flag to pass."""
    return Diagnostic(f"{what}{path} contains {describe_unsafe(path, keras_text)}, which Keras safe mode "
                      "refuses to load: loading it could run code or read files from this machine",
                      hint=f"only if you trust this file, pass `--trust {path}` on the command line")


def is_safe_mode_refusal(exc: BaseException) -> bool:
    text = str(exc)
    return "safe_mode" in text or "unsafe" in text.lower() or "enable_unsafe_deserialization" in text
