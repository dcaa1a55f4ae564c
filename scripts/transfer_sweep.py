#!/usr/bin/env python
"""Transfer against training from scratch, over how many labelled images there are and over seeds.

    .venv/bin/python scripts/transfer_sweep.py                 # 5 seeds x 3 sizes (about 10 minutes on 2 cores)
    .venv/bin/python scripts/transfer_sweep.py --seeds 2 --test 0.97

Trains examples/digits_pretrain.yaml once (digits 0-4), then, for each held-out fraction of the
digits 5-9 and each seed (the seed also draws the split, so each seed labels different images),
examples/digits_scratch.yaml and examples/digits_transfer.yaml on the same images, and writes a
Markdown table of their test accuracies (mean, and the range over the seeds) into README.md
between `<!-- transfer:start -->` and `<!-- transfer:end -->`. Nothing is tuned: the specs run
as written, with only `data.split.test` and `seed` overridden.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
START, END = "<!-- transfer:start -->", "<!-- transfer:end -->"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def accuracy(spec_file: str, overrides: list[str], run_dir: Path) -> tuple[float, int]:
    """(test accuracy, number of training images) of one `kspec train` run, in this process."""
    from compiler.spec.validate import load_spec
    from compiler.train import train

    run = train(load_spec(EXAMPLES / spec_file, overrides), run_dir=run_dir, verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    sizes = json.loads((run / "data.json").read_text())["sizes"]
    return metrics["test"]["accuracy"], sizes["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--test", type=float, action="append", help="held-out fraction (repeatable); "
                        "default 0.94, 0.97, 0.985")
    args = parser.parse_args()
    fractions = args.test or [0.94, 0.97, 0.985]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        pretrained, _ = accuracy("digits_pretrain.yaml", [], runs / "pretrain")
        print(f"pretraining on the digits 0-4: test accuracy {pretrained:.3f}", file=sys.stderr)
        rows = ["| labelled images of 5-9 | from scratch | transfer (frozen trunk) |", "|---:|---|---|"]
        for fraction in fractions:
            found: dict[str, list[float]] = {"scratch": [], "transfer": []}
            for seed in range(args.seeds):
                sets = [f"data.split.test={fraction}", f"seed={seed}"]
                for which in found:
                    extra = [f"model.layers[0].Backbone.from={runs / 'pretrain'}"] if which == "transfer" else []
                    acc, n_train = accuracy(f"digits_{which}.yaml", sets + extra, runs / f"{which}-{fraction}-{seed}")
                    found[which].append(acc)
                print(f"test {fraction} seed {seed}: scratch {found['scratch'][-1]:.3f}, "
                      f"transfer {found['transfer'][-1]:.3f}", file=sys.stderr)
            cells = [f"{statistics.mean(v):.3f} ({min(v):.3f}–{max(v):.3f})" for v in found.values()]
            rows.append(f"| {n_train} | {cells[0]} | {cells[1]} |")
    text = (f"Test accuracy on the held-out digits 5-9, mean (min–max) over {args.seeds} seeds (each seed draws "
            f"other labelled images), written by `scripts/transfer_sweep.py`:\n\n" + "\n".join(rows))
    print(text)
    write_readme(text)


def write_readme(text: str) -> None:
    readme = README.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
