"""Bounded input: every size a spec controls is bounded before memory or time is spent on it.

Each attack runs as the real `kspec validate` process under a wall-clock limit and an
address-space limit, and must end in a located error (exit 2, FILE:LINE:COL), never a
hang, a MemoryError or an "internal error". Single-file cases with one expected line
live in tests/broken/ (repeat, numbers, merge keys, quoted numbers).
"""

import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_SECONDS = 20
LIMIT_BYTES = 1_500_000_000
MODEL = "model:\n  inputs: {x: {shape: [4]}}\n  layers:\n    - Dense: {units: 2}\n"


def kspec_bounded(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "compiler", *args], capture_output=True, text=True,
                          timeout=LIMIT_SECONDS, preexec_fn=limit, cwd=cwd, env=env)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def assert_clean_error(result: subprocess.CompletedProcess, where: str, text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(where)]
    assert any(text in line for line in lines), f"expected {text!r} at {where}; got:\n{result.stderr}"


def test_hostile_specs_end_in_located_errors(tmp_path):
    """One process validates every attack (each costs a fresh TensorFlow-free start-up otherwise)."""
    long = "x" * 60_000                        # under the one-value bound; aliased 50,000 times: 3 GB
    aliased = write(tmp_path / "aliased.yaml", f"kspec: 1\ndescription: &d {long}\nnotes: [" +
                    ", ".join(["*d"] * 50_000) + "]\n" + MODEL)
    huge_value = write(tmp_path / "huge_value.yaml", "kspec: 1\ndescription: " + "y" * 100_000 + "\n" + MODEL)
    for i in range(9):                         # nine files, each naming the next ten times: 10^9 loads
        base = f"fan{i + 1}.yaml" if i < 8 else None
        text = "train: {epochs: 1}\n" + (f"extends: [{', '.join([base] * 10)}]\n" if base else "")
        write(tmp_path / f"fan{i}.yaml", text)
    fan_out = write(tmp_path / "fan_out.yaml", "kspec: 1\nextends: fan0.yaml\n" + MODEL)
    for i in range(9):
        name = f"lib{i + 1}.yaml" if i < 8 else None
        write(tmp_path / f"lib{i}.yaml", "blocks:\n" + (f"  include: [{', '.join([name] * 10)}]\n" if name else "")
              + f"  b{i}: {{layers: [{{Dense: {{units: 1}}}}]}}\n")
    include_fan = write(tmp_path / "include_fan.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n"
                        "  blocks: {include: lib0.yaml}\n  layers:\n    - b8: {}\n")
    specs = [aliased, huge_value, fan_out, include_fan]
    started = time.monotonic()
    result = kspec_bounded("validate", *map(str, specs))
    elapsed = time.monotonic() - started
    assert_clean_error(result, f"{aliased}:3:", "expands to more than 10,000,000 characters")
    assert_clean_error(result, f"{huge_value}:2:14", "a value of 100,000 characters")
    assert_clean_error(result, f"{tmp_path / 'fan7.yaml'}:2:", "loads more than 200 files")
    assert_clean_error(result, f"{tmp_path / 'lib7.yaml'}:2:", "loads more than 200 files")
    assert result.stderr.count("loads more than") == 2, result.stderr   # said once per spec, not per sibling
    assert elapsed < LIMIT_SECONDS


def test_extends_and_include_read_regular_files_only(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)                            # opening it for reading would block forever
    a = write(tmp_path / "a.yaml", "kspec: 1\nextends: pipe.yaml\n" + MODEL)
    b = write(tmp_path / "b.yaml", "kspec: 1\nextends: /dev/zero\n" + MODEL)
    c = write(tmp_path / "c.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  blocks: {include: pipe.yaml}\n"
              "  layers:\n    - Dense: {units: 2}\n")
    d = write(tmp_path / "d.yaml", "kspec: 1\nextends: folder\n" + MODEL)
    (tmp_path / "folder").mkdir()
    result = kspec_bounded("validate", str(a), str(b), str(c), str(d), str(fifo))
    assert_clean_error(result, f"{a}:2:10", "is a FIFO (named pipe); a spec is read from a regular file")
    assert_clean_error(result, f"{b}:2:10", "/dev/zero is a device; a spec is read from a regular file")
    assert_clean_error(result, f"{c}:4:21", "is a FIFO (named pipe)")
    assert_clean_error(result, f"{d}:2:10", "is a folder")
    assert f"{fifo} is a FIFO (named pipe)" in result.stderr      # named on the command line
    assert "does not exist" not in result.stderr


def test_a_file_that_is_not_a_spec_is_named_once_never_echoed(tmp_path):
    accounts = "".join(f"user{i}: $6$secret{i}$hash\n" for i in range(40))   # a mapping, but no spec section
    write(tmp_path / "shadow", accounts)
    write(tmp_path / "listing", "- root\n- daemon\n")
    a = write(tmp_path / "a.yaml", "kspec: 1\nextends: shadow\n" + MODEL)
    b = write(tmp_path / "b.yaml", "kspec: 1\nextends: listing\n" + MODEL)
    c = write(tmp_path / "c.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  blocks: {include: shadow}\n"
              "  layers:\n    - Dense: {units: 2}\n")
    result = kspec_bounded("validate", str(a), str(b), str(c))
    assert_clean_error(result, f"{a}:2:10", "shadow is not a kspec spec")
    assert_clean_error(result, f"{b}:2:10", "listing is not a kspec spec")
    assert_clean_error(result, f"{c}:4:21", "it is not a kspec blocks file")
    assert "secret" not in result.stderr and "user1" not in result.stderr and "daemon" not in result.stderr
    assert len(result.stderr.splitlines()) == 3, result.stderr


@pytest.mark.parametrize("value", ["z" * 5000, "9" * 4000 + "x"])
def test_long_values_are_cut_in_messages(tmp_path, value):
    path = write(tmp_path / "long.yaml", "kspec: 1\n" + MODEL.replace("units: 2", f"units: 2, activation: {value}"))
    result = kspec_bounded("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert max(len(line) for line in result.stderr.splitlines()) < 400, result.stderr


# -- build: weights are sized before they are allocated ---------------------------------------

def test_huge_layer_is_refused_at_build_before_allocating(tmp_path, capsys):
    import compiler.builder.graph  # noqa: F401 - TensorFlow's import is not what is timed
    from compiler.cli import main

    path = write(tmp_path / "huge.yaml", """\
        kspec: 1
        model:
          inputs: {x: {shape: [4]}}
          layers:
            - Dense: {units: 8}
            - Dense: {units: 1000000000000}
        """)
    started = time.monotonic()
    code = main(["build", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}:6:7: error: Dense 'dense_1' needs 36.0 TB of weights" in err, err
    assert "(at model.layers[1])" in err and "KSPEC_MAX_WEIGHT_BYTES" in err
    assert time.monotonic() - started < 10          # no terabyte allocation was attempted


def test_weight_limit_counts_the_whole_model_and_can_be_set(tmp_path, monkeypatch):
    from compiler.builder import build_model
    from compiler.errors import SpecError
    from compiler.spec.validate import load_spec

    path = write(tmp_path / "small.yaml", "kspec: 1\nmodel:\n  inputs: {x: {shape: [4]}}\n  layers:\n"
                 "    - Dense: {units: 8}\n    - Dense: {units: 300}\n    - Dense: {units: 3}\n")
    spec = load_spec(path)
    assert build_model(spec.model).count_params() == 4 * 8 + 8 + 8 * 300 + 300 + 300 * 3 + 3
    monkeypatch.setenv("KSPEC_MAX_WEIGHT_BYTES", "2000")
    with pytest.raises(SpecError) as refused:
        build_model(spec.model)
    (d,) = refused.value.diagnostics
    assert d.loc.line == 6 and d.path == "model.layers[1]"
    assert "'dense_1' needs 10.8 kB of weights, 11.0 kB for the model so far" in d.message
    assert "the limit is KSPEC_MAX_WEIGHT_BYTES" in d.hint
