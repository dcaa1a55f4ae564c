"""The pipeline's direction, enforced: load -> resolve -> validate -> build -> data -> train -> report.

- The front half (compiler/spec/, errors.py, suggest.py, schema files) never imports Keras or
  TensorFlow, not even inside a function: `kspec validate` must stay instant.
- Later stages use the front half only through its published surface: the typed spec
  (spec.types), the entry points (spec.validate) and plain trees (spec.tree); never the
  loader's or resolver's internals.
- Private Keras API (`keras.src`) is imported in compiler/keras_compat/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compiler"
FRONT_HALF = ["spec", "errors.py", "suggest.py", "templates.py", "tensor_expr.py"]
# Modules of the front half's own side that may use its internals: the command line (`kspec schema`
# prints spec.schemas), the template library (it loads template files with spec.load) and the
# registry (it tells the validator the layer names of `--plugin` modules).
FRONT_HALF_USERS = ("cli.py", "templates.py", "registry.py")
SPEC_SURFACE = {"compiler.spec.types", "compiler.spec.validate", "compiler.spec.tree", "compiler.spec"}
HEAVY = ("tensorflow", "keras", "numpy", "sklearn", "optuna")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module `path` imports, anywhere in it (lazy imports included), as absolute names."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return out


def _files(*names: str) -> list[Path]:
    files = []
    for name in names:
        target = PACKAGE / name
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return files


@pytest.mark.parametrize("path", _files(*FRONT_HALF), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_front_half_imports_nothing_heavy(path):
    heavy = [(line, name) for line, name in _imports(path) if name.split(".")[0] in HEAVY]
    assert not heavy, f"{path.relative_to(PACKAGE)} imports {heavy}: the front half must not"


def test_later_stages_use_only_the_published_front_half():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "spec") or path.name in FRONT_HALF_USERS and path.parent == PACKAGE:
            continue
        for line, name in _imports(path):
            if name.startswith("compiler.spec.") and not any(
                    name == allowed or name.startswith(allowed + ".") for allowed in SPEC_SURFACE - {"compiler.spec"}):
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {name}")
    assert not offenders, "\n".join(offenders)


def test_private_keras_api_only_in_the_compat_module():
    offenders = [f"{path.relative_to(PACKAGE)}:{line}: {name}"
                 for path in PACKAGE.rglob("*.py") if not path.is_relative_to(PACKAGE / "keras_compat")
                 for line, name in _imports(path) if name.startswith("keras.src")]
    assert not offenders, "\n".join(offenders)
