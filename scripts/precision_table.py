#!/usr/bin/env python
"""float32 against mixed_bfloat16 on the shipped examples: the evidence behind `mixed_precision: auto`.

    PYTHONPATH=$PWD .venv/bin/python scripts/precision_table.py [--seeds 0 1] [--max-epochs 8] [--only NAME]

Each example of EXAMPLES is trained in this one process (TensorFlow is imported once) with
`--set train.mixed_precision=none` and `--set train.mixed_precision=mixed_bfloat16`, alternately
(the machine is shared: interleaving keeps load drift out of the ratio), for every seed
(`--set seed=S`), with `train.epochs` capped at --max-epochs to keep the table affordable. Each
row reports the median final test metrics (test split; validation where there is none) of both
precisions, their spread over the seeds, and the training-time ratio (sum of epoch seconds,
bfloat16 / float32). The table is written into README.md between the markers below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- precision:start -->", "<!-- precision:end -->"
sys.path.insert(0, str(ROOT))

# The small shipped examples (ensemble, transfer and pretrain need other runs first; the three iris
# learning rates are one model).
EXAMPLES = ["iris_mlp", "line", "parity", "overfit_dropout", "sort", "lstm_forget_bias", "autoencoder",
            "multitask", "deep_plain", "deep_batchnorm", "deep_residual", "digits_cnn"]
PRECISIONS = ("none", "mixed_bfloat16")


def train_once(example: str, precision: str, seed: int, max_epochs: int, work: Path) -> dict:
    import keras

    from compiler.spec.validate import load_spec
    from compiler.train import train

    path = ROOT / "examples" / f"{example}.yaml"
    spec = load_spec(path, [f"train.mixed_precision={precision}", f"seed={seed}"])
    epochs = min(spec.train.epochs, max_epochs)
    spec = load_spec(path, [f"train.mixed_precision={precision}", f"seed={seed}", f"train.epochs={epochs}"])
    keras.backend.clear_session()
    run = work / f"{example}-{precision}-{seed}"
    cwd = os.getcwd()
    os.chdir(ROOT / "examples")          # data paths in the examples are relative to them
    try:
        started = time.perf_counter()
        train(spec, run_dir=run, verbose=0)
        wall = time.perf_counter() - started
    finally:
        os.chdir(cwd)
    metrics = json.loads((run / "metrics.json").read_text())
    split = "test" if "test" in metrics else "validation" if "validation" in metrics else "train"
    return {"split": split, "metrics": metrics[split], "seconds": metrics["seconds"], "wall": wall,
            "epochs": epochs}


def headline(metrics: dict) -> str:
    """The metric a row reports: accuracy-like first, else the loss."""
    for key in metrics:
        if "acc" in key:
            return key
    for key in metrics:
        if key != "loss" and not key.endswith("loss"):
            return key
    return "loss"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-epochs", type=int, default=8)
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--rows", action="append", default=[], metavar="LOG",
                   help="reuse the rows an earlier run printed (its stdout); measure only the others")
    p.add_argument("--no-write", action="store_true", help="print the table, leave README.md alone")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from compiler.cli import import_tensorflow

    import_tensorflow()
    from compiler.distribute.strategy import cpu_bf16_support
    from compiler.errors import KspecError

    work = Path(tempfile.mkdtemp(prefix="kspec-precision-"))
    rows = []
    for log in args.rows:                  # rows measured by earlier runs of this script (its stdout)
        rows.extend(json.loads(line) for line in Path(log).read_text().splitlines() if line.startswith("{"))
    done = {r["example"] for r in rows}
    for example in [e for e in (args.only or EXAMPLES) if e not in done]:
        print(f"{example}: {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)
        results: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
        failed = None
        for seed in args.seeds:
            for precision in PRECISIONS:
                try:
                    results[precision].append(train_once(example, precision, seed, args.max_epochs, work))
                except KspecError as exc:          # evidence too: this model cannot train in that precision
                    failed = f"{precision} fails: {str(exc).splitlines()[0][:120]}"
                    break
            if failed:
                break
        if failed:
            rows.append({"example": example, "failed": failed})
            print(json.dumps(rows[-1]), flush=True)
            continue
        key = headline(results["none"][0]["metrics"])
        values = {p: [r["metrics"][key] for r in rs] for p, rs in results.items()}
        losses = {p: [r["metrics"]["loss"] for r in rs] for p, rs in results.items()}
        ratio = statistics.median(b["seconds"] / f["seconds"] for f, b in zip(results["none"],
                                                                              results["mixed_bfloat16"]))
        rows.append({"example": example, "metric": f"{results['none'][0]['split']} {key}",
                     "epochs": results["none"][0]["epochs"], "values": values, "losses": losses,
                     "ratio": ratio})
        print(json.dumps(rows[-1]), flush=True)

    lines = [f"CPU bfloat16 support: {cpu_bf16_support().why}; seeds {', '.join(map(str, args.seeds))}; "
             f"epochs capped at {args.max_epochs} (`--set train.epochs=...`); medians over seeds "
             f"(min..max); time = training seconds bfloat16 / float32, measured interleaved on a loaded "
             f"2-core machine.", "",
             "| example | metric | epochs | float32 | mixed_bfloat16 | loss float32 | loss bf16 | time bf16/f32 |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(vs: list[float]) -> str:
        return f"{statistics.median(vs):.4f} ({min(vs):.3f}..{max(vs):.3f})" if len(vs) > 1 else f"{vs[0]:.4f}"

    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['example']} | | | | {r['failed']} | | | |")
            continue
        lines.append(f"| {r['example']} | {r['metric']} | {r['epochs']} | {cell(r['values']['none'])} | "
                     f"{cell(r['values']['mixed_bfloat16'])} | {cell(r['losses']['none'])} | "
                     f"{cell(r['losses']['mixed_bfloat16'])} | {r['ratio']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = README.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            README.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
            print(f"wrote the table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
