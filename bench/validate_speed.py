"""How long `kspec validate` takes on a 300-layer spec, as a user runs it (a fresh process).

Prints the median wall time of several runs of `python -m compiler validate`,
and of `kspec --help`, and checks that no TensorFlow or Keras module was imported.
Target: < 0.5 s for the 300-layer spec on a 2-core machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 7


def big_spec(layers: int = 300) -> str:
    lines = ["kspec: 1", "name: big", "model:", "  inputs:", "    x: {shape: [32]}", "  blocks:",
             "    dense_bn:", "      params: {units: 32}", "      layers:",
             "        - Dense: {units: $units, use_bias: false, kernel_initializer: he_normal}",
             "        - BatchNormalization: {}", "        - Activation: {activation: relu}", "  layers:"]
    for i in range(layers // 3):
        lines.append(f"    - dense_bn: {{units: {32 + i % 4 * 8}}}")
    lines += ["    - Dense: {units: 10, activation: softmax}", "train:", "  optimizer: {Adam: {learning_rate: 0.001}}",
              "  loss: sparse_categorical_crossentropy", "  metrics: [accuracy]"]
    return "\n".join(lines) + "\n"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "big.yaml"
        spec.write_text(big_spec())
        validate = [sys.executable, "-m", "compiler", "validate", str(spec)]
        helptext = [sys.executable, "-m", "compiler", "--help"]
        timed(validate)  # warm the file cache
        v = statistics.median(timed(validate) for _ in range(RUNS))
        h = statistics.median(timed(helptext) for _ in range(RUNS))
        probe = ("import sys, runpy; sys.argv = ['kspec', 'validate', %r]\n"
                 "try: runpy.run_module('compiler', run_name='__main__')\n"
                 "except SystemExit: pass\n"
                 "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
                 "print(len(bad))" % str(spec))
        heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split()[-1]
        n_nodes = 300 // 3 * 3 + 1
    print(f"kspec validate, {n_nodes}-layer spec: median {v:.3f} s over {RUNS} runs (target < 0.5 s)")
    print(f"kspec --help:                     median {h:.3f} s")
    print(f"TensorFlow/Keras modules imported by validate: {heavy}")


if __name__ == "__main__":
    main()
