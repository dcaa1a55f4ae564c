"""The cluster a worker belongs to: TF_CONFIG, read and written; free local ports.

TensorFlow's MultiWorkerMirroredStrategy finds its peers in the TF_CONFIG
environment variable (JSON):

    {"cluster": {"worker": ["host1:2222", "host2:2222"]},
     "task": {"type": "worker", "index": 0}}

`kspec train SPEC --cluster host1:2222,host2:2222 --worker-index 0` writes exactly
that before TensorFlow starts. Worker 0 is the chief (the one that writes the run
directory) unless the cluster names a separate `chief` task, as TensorFlow has it.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

from ..errors import Diagnostic, KspecError

TF_CONFIG = "TF_CONFIG"


class ClusterError(KspecError):
    """A bad --cluster / --worker-index / TF_CONFIG: a usage error, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Cluster:
    """Where this process stands in a multi-worker cluster."""

    workers: int            # the number of worker processes (a `chief` task counts as one)
    task_type: str          # "worker" or "chief"
    index: int              # this task's index among the tasks of its type
    has_chief: bool = False  # the cluster names a separate `chief` task

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                             and not self.has_chief)

    @property
    def rank(self) -> int:
        """0 for the chief, then the workers in order."""
        return self.index + (1 if self.has_chief and self.task_type == "worker" else 0)


def parse_cluster(text: str) -> list[str]:
    """`host1:2222,host2:2222` -> ["host1:2222", "host2:2222"], every address checked."""
    addresses = [a.strip() for a in str(text).split(",") if a.strip()]
    if not addresses:
        raise ClusterError(Diagnostic("--cluster names no worker",
                                      hint="give the workers as HOST:PORT,HOST:PORT (worker 0 first)"))
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ClusterError(Diagnostic(f"--cluster: '{address}' is not HOST:PORT",
                                          hint="e.g. --cluster 10.0.0.1:2222,10.0.0.2:2222"))
    if len(set(addresses)) != len(addresses):
        raise ClusterError(Diagnostic(f"--cluster names an address twice: {','.join(addresses)}"))
    return addresses


def tf_config(workers: list[str], index: int) -> dict:
    """The TF_CONFIG of worker `index` of the cluster `workers` (worker 0 is the chief)."""
    if not isinstance(index, int) or not 0 <= index < len(workers):
        raise ClusterError(Diagnostic(
            f"--worker-index {index} is out of range: the cluster has {len(workers)} worker"
            f"{'s' * (len(workers) != 1)} (indices 0..{len(workers) - 1})"))
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def use_cluster(cluster: str | None, index: int | None, environ=None) -> Cluster:
    """Check `--cluster` / `--worker-index` and put the TF_CONFIG they describe into the environment."""
    environ = os.environ if environ is None else environ
    if cluster is None or index is None:
        missing = "--worker-index" if cluster is not None else "--cluster"
        raise ClusterError(Diagnostic(f"{missing} is needed too: --cluster and --worker-index go together",
                                      hint="e.g. --cluster host1:2222,host2:2222 --worker-index 0"))
    config = tf_config(parse_cluster(cluster), index)
    environ[TF_CONFIG] = json.dumps(config)
    described = read_tf_config(environ)
    assert described is not None, "a TF_CONFIG just written with a non-empty cluster describes one"
    return described


def read_tf_config(environ=None) -> Cluster | None:
    """The cluster described by TF_CONFIG, or None when it is unset or names no cluster."""
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ClusterError(Diagnostic(f"TF_CONFIG is not valid JSON: {exc}")) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not cluster:
        return None
    if not isinstance(cluster, dict):
        raise ClusterError(Diagnostic("TF_CONFIG: `cluster` must map task types to address lists"))
    task = config.get("task") or {}
    task_type, index = str(task.get("type", "worker")), task.get("index", 0)
    workers = len(cluster.get("worker") or []) + len(cluster.get("chief") or [])
    if task_type not in ("worker", "chief") or not isinstance(index, int) \
            or not 0 <= index < len(cluster.get(task_type) or []):
        raise ClusterError(Diagnostic(
            f"TF_CONFIG: task {task_type!r} {index!r} is not in the cluster "
            f"({', '.join(f'{k}: {len(v or [])}' for k, v in cluster.items())})"))
    return Cluster(workers=workers, task_type=task_type, index=index, has_chief=bool(cluster.get("chief")))


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` now (bound to port 0 together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
