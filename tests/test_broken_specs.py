"""The corpus of broken specs: each yields exit 2 and an error at the exact file:line:col.

Each file in tests/broken/ states what it expects in comments:
`# expect: LINE:COL SUBSTRING` (or `# expect: FILE:LINE:COL SUBSTRING`, or just
`LINE` when the column is not meaningful).
"""

import re
from pathlib import Path

import pytest

from compiler.cli import main

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(BROKEN.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (?:(?P<file>[\w.]+\.yaml):)?(?P<line>\d+)(?::(?P<col>\d+))? (?P<text>.+)$")


def expectations(path: Path):
    out = []
    for line in path.read_text().splitlines():
        m = _EXPECT.match(line)
        if m:
            file = str(BROKEN / m["file"]) if m["file"] else str(path)
            where = f"{file}:{m['line']}" + (f":{m['col']}" if m["col"] else "")
            out.append((where, m["text"]))
    return out


def test_corpus_is_large_enough():
    assert len(CASES) >= 25
    assert all(expectations(p) for p in CASES), "every broken spec states what it expects"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_broken_spec_points_at_the_line(path, capsys):
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    for where, text in expectations(path):
        hits = [l for l in lines if l.startswith(where + ":") or l.startswith(where + " ")]
        assert hits, f"no diagnostic at {where}; got:\n{err}"
        assert any(text in l for l in hits), f"expected {text!r} at {where}; got:\n{err}"


def test_all_errors_reported_at_once(tmp_path, capsys):
    spec = tmp_path / "many.yaml"
    spec.write_text("kspec: 1\nmodel:\n  inputs:\n    x: {shape: [4]}\n  layers:\n"
                    "    - Dense: {unit: 2}\n    - Conv2d: {}\n    - Dropout: {rate: high}\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:6:15: error: unknown argument 'unit' for Dense; did you mean 'units'" in err
    assert f"{spec}:7:7: error: unknown layer class or block 'Conv2d'" in err
    assert f"{spec}:8:23: error: expected a number, got 'high' (at model.layers[2].Dropout.rate)" in err


def test_real_command_exit_status_and_no_traceback(kspec):
    result = kspec("validate", BROKEN / "typo_argument.yaml")
    assert result.returncode == 2
    assert "error: unknown argument 'filtrs' for Conv2D; did you mean 'filters'?" in result.stderr
    assert "Traceback" not in result.stderr
