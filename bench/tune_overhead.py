"""What does `kspec tune` add per trial over `kspec train`, and what does `--parallel 2` gain?

The same work both ways: N trials of iris_base.yaml at one learning rate (a search whose only
parameter is a one-value choice), each a `kspec train` process; against N plain `kspec train
examples/iris_base.yaml --set ...` processes one after another. Rounds are interleaved (plain,
tune, tune --parallel 2, then the reverse order) because the machine is shared; medians of the
rounds are printed as ratios.

- per-trial overhead: (time from `kspec tune`'s start to its last trial line) / (N plain trains) - 1.
  Target <= 10%. The end-of-study report (plots, TensorBoard HParams, which imports TensorFlow
  in the tuner once) is printed separately: it is paid once per study, not per trial.
- parallel speed-up: the same N trials with --parallel 1 / with --parallel 2 (2 cores: <= 2).

    .venv/bin/python bench/tune_overhead.py [--trials 4] [--rounds 2] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "iris_base.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "TF_CPP_MIN_LOG_LEVEL": "3"}
SET = "train.optimizer.SGD.learning_rate"


def plain(folder: Path, trials: int, epochs: int) -> float:
    for i in range(trials):
        shutil.rmtree(folder / f"plain{i}", ignore_errors=True)
    start = time.perf_counter()
    for i in range(trials):
        subprocess.run([sys.executable, "-m", "compiler", "train", str(BASE), "--set", f"{SET}=0.1",
                        "--set", f"train.epochs={epochs}", "--run-dir", str(folder / f"plain{i}"), "--verbose", "2"],
                       check=True, env=ENV, cwd=folder, capture_output=True)
    return time.perf_counter() - start


def tune(folder: Path, trials: int, epochs: int, parallel: int) -> tuple[float, float]:
    """(seconds to the last trial line, seconds of the end-of-study report)."""
    spec = folder / "bench_search.yaml"
    spec.write_text(f"kspec: 1\nextends: {BASE}\nname: bench-search\ntrain: {{epochs: {epochs}}}\nsearch:\n"
                    f"  objective: {{metric: val_accuracy}}\n  trials: {trials}\n  parameters:\n"
                    f"    {SET}: {{choice: [0.1]}}\n")
    shutil.rmtree(folder / "runs", ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "compiler", "tune", str(spec), "--parallel", str(parallel)],
                            env=ENV, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = start
    for line in proc.stdout:
        if line.startswith("trial "):
            last = time.perf_counter()
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"kspec tune failed: {proc.stderr.read()}")
    return last - start, time.perf_counter() - last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="kspec-tune-bench-"))
    results: dict[str, list[float]] = {"plain": [], "tune": [], "report": [], "tune2": []}
    try:
        for r in range(args.rounds):
            order = ["plain", "tune", "tune2"] if r % 2 == 0 else ["tune2", "tune", "plain"]
            for what in order:
                if what == "plain":
                    results["plain"].append(plain(folder, args.trials, args.epochs))
                else:
                    trials_s, report_s = tune(folder, args.trials, args.epochs, 1 if what == "tune" else 2)
                    results[what].append(trials_s)
                    if what == "tune":
                        results["report"].append(report_s)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in results.items()), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    n = args.trials
    print(f"{n} trials of iris ({args.epochs} epochs), median of {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs:")
    print(f"  plain kspec train x{n}:    {med['plain']:.1f}s ({med['plain'] / n:.2f}s per run)")
    print(f"  kspec tune, --parallel 1: {med['tune']:.1f}s ({med['tune'] / n:.2f}s per trial)")
    overhead = [t / p - 1 for t, p in zip(results["tune"], results["plain"])]          # within each round
    speedup = [t / t2 for t, t2 in zip(results["tune"], results["tune2"])]
    print(f"  per-trial overhead of kspec tune: {statistics.median(overhead):+.1%} median of the rounds' "
          f"({', '.join(f'{o:+.0%}' for o in overhead)}; target <= +10%)")
    print(f"  end-of-study report (plots, HParams): {med['report']:.1f}s, once per study")
    print(f"  kspec tune --parallel 2: {med['tune2']:.1f}s; speed-up over --parallel 1: "
          f"{statistics.median(speedup):.2f}x median of the rounds' ({', '.join(f'{x:.2f}' for x in speedup)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
