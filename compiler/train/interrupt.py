"""SIGTERM and SIGINT during training: stop, save the last finished epoch, exit.

    with interruptible(): model.fit(...)     SIGTERM raises Interrupted (SIGINT raises KeyboardInterrupt)
    with shielded(): recorder.flush()        the final save is not cut short by a second signal

Python turns SIGINT into KeyboardInterrupt; SIGTERM (what `kill`, systemd, Kubernetes and batch
schedulers send before SIGKILL) would end the process on the spot. Turned into an exception, both
unwind `fit` to the trainer, which writes the epochs not yet checkpointed (the checkpoint policy may
have deferred them, see callbacks.RunRecorder) and exits with 128 + the signal's number.
Handlers can only be installed in the main thread; elsewhere these do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """A signal stopped training (exit status 128 + signal number, as a shell reports it)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def shielded() -> Iterator[list[int]]:
    """SIGINT/SIGTERM arriving inside are recorded (the list yielded), not raised."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
