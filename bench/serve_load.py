"""How fast does `kspec serve` answer, and what does micro-batching buy?

For each run (iris: a 4-16-16-3 MLP; digits: examples/digits_cnn.yaml's CNN), two real
`kspec serve` processes on loopback: one with the default micro-batching (--max-batch-size 32,
--max-latency-ms 5) and one with --max-batch-size 1 (one request, one model call). For
N = 1, 8, 32 concurrent clients, each client sends single-example TF Serving requests
(`{"instances": [ROW]}`) back to back for --seconds (30 per the issue); the two servers take
turns (interleaved, since the machine is shared), and each phase reports requests/s, p50 and
p99 latency and failed requests.

"in-process" is the same compiled function (`ServedModel.run_batch`) called in this process
on batches of the size the server formed (examples / model calls in that phase): the ratio
served / in-process says how much of the model's own throughput survives HTTP, JSON and
batching. The load generator is `wrk` (Debian's package: a C client, one thread, so it
takes little of the CPUs the server needs) when it is installed, else httpx's async client
on one event loop (which shares the CPUs with the server: the numbers are then a lower bound).

    .venv/bin/python bench/serve_load.py [--seconds 30] [--clients 1 8 32] [--runs iris digits] [--keep DIR]
                                         [--client wrk|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_helpers import Server, train_runs  # noqa: E402


def example(run: str) -> list:
    rng = np.random.default_rng(0)
    if run == "iris":
        return [5.8, 3.0, 3.7, 1.2]
    return rng.uniform(0, 16, (8, 8, 1)).round(1).tolist()


def load(url: str, name: str, row: list, clients: int, seconds: float, client: str) -> dict:
    if client == "wrk":
        return wrk(url, name, row, clients, seconds)
    return asyncio.run(httpx_load(url, name, row, clients, seconds))


def wrk(url: str, name: str, row: list, clients: int, seconds: float) -> dict:
    import json
    import re
    import subprocess

    body = json.dumps({"instances": [row]}).replace("'", "\\'")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
                          "wrk.headers['Content-Type'] = 'application/json'\n")
        out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s", str(script),
                              f"{url}/v1/models/{name}:predict"], capture_output=True, text=True, check=True).stdout

    def ms(percent: str) -> float:
        value, unit = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]

    done = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50"), "p99": ms("99"),
            "failed": failed, "n": done}


async def httpx_load(url: str, name: str, row: list, clients: int, seconds: float) -> dict:
    import httpx

    body = {"instances": [row]}
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        stop = time.monotonic() + seconds

        async def worker():
            nonlocal failures
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    r = await client.post(f"/v1/models/{name}:predict", json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                failures += not ok

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - began
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "failed": failures,
            "n": len(latencies)}


def stats(url: str) -> dict:
    import httpx

    return httpx.get(url + "/readyz", timeout=10).json()


def in_process(run_dir: Path, row: list, batch: int, seconds: float = 2.0) -> float:
    """Examples/s of the server's own compiled function called directly on batches of `batch` examples."""
    from compiler.cli import import_tensorflow
    from compiler.serve.model import ServedModel, read_run

    import_tensorflow()
    run = read_run(str(run_dir))
    model = _models.setdefault(str(run_dir), ServedModel(run))
    name = run.inputs[0].name
    x = {name: np.repeat(np.asarray([row], dtype=np.float32), batch, axis=0)}
    model.run_batch(x)
    calls, stop = 0, time.monotonic() + seconds
    began = time.monotonic()
    while time.monotonic() < stop:
        model.run_batch(x)
        calls += 1
    return calls * batch / (time.monotonic() - began)


_models: dict = {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help="load per phase (30)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--runs", nargs="+", default=["iris", "digits"], choices=["iris", "digits"])
    p.add_argument("--keep", metavar="DIR", help="train into DIR (and reuse runs already there)")
    p.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx",
                   help="load generator (wrk when installed)")
    args = p.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="kspec-serve-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    todo = tuple(r for r in args.runs if not (root / f"run-{r}" / "model.keras").exists())
    if todo:
        print(f"training {', '.join(todo)} in {root} ...", flush=True)
        train_runs(root, todo, epochs=5)
    print(f"load generator: {args.client}; {args.seconds:g} s per phase", flush=True)
    rows = []
    for run in args.runs:
        run_dir = root / f"run-{run}"
        name = {"iris": "iris-mlp", "digits": "digits-cnn"}[run]
        batched, single = Server(run_dir), Server(run_dir, "--max-batch-size", "1")
        try:
            urls = {"batched": batched.ready(), "single": single.ready()}
            for clients in args.clients:
                for mode in ("batched", "single"):
                    before = stats(urls[mode])
                    result = load(urls[mode], name, example(run), clients, args.seconds, args.client)
                    after = stats(urls[mode])
                    calls = max(1, after["batches"] - before["batches"])
                    result["batch"] = (after["examples"] - before["examples"]) / calls
                    result.update(run=run, mode=mode, clients=clients)
                    rows.append(result)
                    print(f"{run:6} {mode:7} clients {clients:2}: {result['rps']:7.0f} req/s  p50 "
                          f"{result['p50']:6.1f} ms  p99 {result['p99']:6.1f} ms  failed {result['failed']}  "
                          f"mean batch {result['batch']:.1f}", flush=True)
        finally:
            batched.stop()
            single.stop()
    for r in rows:
        r["inproc"] = in_process(root / f"run-{r['run']}", example(r["run"]), max(1, round(r["batch"])))
    print()
    print("| run | clients | mode | req/s | p50 ms | p99 ms | failed | mean batch | in-process ex/s | served / "
          "in-process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['clients']} | {r['mode']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
              f"{r['failed']} | {r['batch']:.1f} | {r['inproc']:.0f} | {r['rps'] / r['inproc']:.3f} |")
    print()
    for run in args.runs:
        top = max(args.clients)
        b = next(r for r in rows if r["run"] == run and r["clients"] == top and r["mode"] == "batched")
        s = next(r for r in rows if r["run"] == run and r["clients"] == top and r["mode"] == "single")
        print(f"{run}: at {top} clients micro-batching gives {b['rps'] / s['rps']:.2f}x the throughput of "
              f"one request per model call (goal >= 5x); p99 {b['p99']:.1f} ms (goal < 50 ms); "
              f"failed {b['failed'] + s['failed']} (goal 0)")


if __name__ == "__main__":
    main()
