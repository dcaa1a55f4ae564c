"""Hostile specs: nothing runs that should not, nothing hangs, nothing eats memory.

Each attack must end in the project's SpecError (exit 2) quickly. "Quickly" is
checked by running the real command under a hard timeout and a memory limit,
not by timing assertions.
"""

import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_SECONDS = 20
LIMIT_BYTES = 1_500_000_000   # 1.5 GB of address space: an alias bomb expanded would need far more


def validate_bounded(path: Path) -> subprocess.CompletedProcess:
    """`kspec validate PATH` with a wall-clock and an address-space bound."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    return subprocess.run([sys.executable, "-m", "compiler", "validate", str(path)], capture_output=True,
                          text=True, timeout=LIMIT_SECONDS, preexec_fn=limit, cwd=ROOT)


def spec(tmp_path, text, name="attack.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MODEL = "model:\n  inputs: {x: {shape: [4]}}\n  layers:\n    - Dense: {units: 2}\n"


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['touch {canary}']",
    "!!python/object/new:os.system ['touch {canary}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!binary dG91Y2g=",
    "!custom {a: 1}",
])
def test_yaml_tags_never_build_objects(tmp_path, payload):
    canary = tmp_path / "canary"
    path = spec(tmp_path, "kspec: 1\nname: " + payload.replace("{canary}", str(canary)) + "\n" + MODEL)
    result = validate_bounded(path)
    assert result.returncode == 2
    assert "is not allowed: a spec is plain data" in result.stderr
    assert not canary.exists()


def test_alias_bomb_is_bounded(tmp_path):
    lines = ["kspec: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    result = validate_bounded(spec(tmp_path, "\n".join(lines) + "\n" + MODEL))
    assert result.returncode == 2
    assert "alias bomb" in result.stderr


def test_huge_document_is_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("kspec: 1\n" + "# padding\n" * 300_000 + MODEL)
    result = validate_bounded(path)
    assert result.returncode == 2 and "a spec may be at most" in result.stderr


def test_deep_nesting_does_not_overflow(tmp_path):
    # kspec's promise, not the wording: PyYAML >= 6.0.4 stops flow nesting itself, before kspec's bound.
    path = spec(tmp_path, "kspec: 1\nx: " + "[" * 50_000 + "]" * 50_000 + "\n")
    result = validate_bounded(path)
    assert result.returncode == 2
    assert re.match(rf"{re.escape(str(path))}:2:\d+: error: ", result.stderr), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_deep_block_nesting_hits_kspecs_own_bound(tmp_path):
    text = "kspec: 1\nx:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 300))
    result = validate_bounded(spec(tmp_path, text))
    assert result.returncode == 2 and "nesting deeper than" in result.stderr


@pytest.mark.parametrize("expr, message", [
    ("${__import__('os').system('id')}", "'Call' is not allowed"),
    ("${().__class__.__bases__}", "is not allowed"),
    ("${[x for x in (1, 2)]}", "'ListComp' is not allowed"),
    ("${(lambda: 1)()}", "is not allowed"),
    ("${10 ** 10 ** 10}", "too large"),
    ("${9 ** 9 ** 9 ** 9}", "too large"),
    ("${units}", "unknown name 'units'"),
    ("${open}", "unknown name 'open'"),
    ("${'a' * 10**9}", "is not allowed"),
])
def test_expressions_are_arithmetic_only(tmp_path, expr, message):
    path = spec(tmp_path, f"kspec: 1\nmodel:\n  inputs: {{x: {{shape: [4]}}}}\n  layers:\n"
                          f"    - Dense: {{units: \"{expr}\"}}\n")
    result = validate_bounded(path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and ":5:" in result.stderr


def test_lambda_layers_are_not_available(tmp_path):
    path = spec(tmp_path, "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  layers:\n"
                          "    - Lambda: {function: \"lambda x: x\"}\n    - TFSMLayer: {filepath: x}\n")
    result = validate_bounded(path)
    assert result.returncode == 2
    assert "unknown layer class or block 'Lambda'" in result.stderr
    assert "unknown layer class or block 'TFSMLayer'" in result.stderr


def test_extends_and_include_cycles(tmp_path):
    spec(tmp_path, "kspec: 1\nextends: b.yaml\n", "a.yaml")
    spec(tmp_path, "kspec: 1\nextends: a.yaml\n", "b.yaml")
    result = validate_bounded(tmp_path / "a.yaml")
    assert result.returncode == 2 and "'extends' cycle: a.yaml -> b.yaml -> a.yaml" in result.stderr
    spec(tmp_path, "blocks:\n  include: lib2.yaml\n  one:\n    layers: [{Dense: {units: 1}}]\n", "lib1.yaml")
    spec(tmp_path, "blocks:\n  include: lib1.yaml\n", "lib2.yaml")
    path = spec(tmp_path, "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  blocks: {include: lib1.yaml}\n"
                          "  layers:\n    - one: {}\n", "c.yaml")
    result = validate_bounded(path)
    assert result.returncode == 2 and "'include' cycle" in result.stderr


def test_blocks_that_expand_without_bound(tmp_path):
    levels = "\n".join(f"    b{i}:\n      layers:\n" + "".join(f"        - b{i + 1}: {{}}\n" for _ in range(10))
                       for i in range(6))
    path = spec(tmp_path, "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  blocks:\n" + levels +
                "    b6:\n      layers: [{Dense: {units: 1}}]\n  layers:\n    - b0: {}\n")
    result = validate_bounded(path)
    assert result.returncode == 2 and "expands to more than" in result.stderr


def test_repeat_count_is_bounded(tmp_path):
    path = spec(tmp_path, "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  layers:\n"
                          "    - repeat: 100000000\n      layers: [{Dense: {units: 1}}]\n")
    result = validate_bounded(path)
    assert result.returncode == 2 and "expands to more than" in result.stderr
