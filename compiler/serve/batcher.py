"""Micro-batching: concurrent requests gathered into one batch, run in a worker thread, split back.

A request waits at most `max_latency` seconds (counted from its arrival) for others to join
it; a batch closes early when it holds `max_batch` examples. Requests that arrived while the
previous batch ran are already past their wait, so under load batches close at once and
fill up: throughput grows with the number of clients instead of staying at one call per
request. A batch also closes as soon as as many requests wait as the previous batch held: with
clients that send their next request when answered, those clients are back, and waiting longer
would only add latency (a client alone waits once, for its first request). One worker thread runs the
model (TensorFlow itself uses every core), so the event loop keeps accepting and decoding
requests meanwhile. The queue is bounded (`max_queue` requests): beyond it `submit` raises
`Busy` (503), instead of letting latency grow without end.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Arrays = dict[str, np.ndarray]


class Busy(Exception):
    """The queue is full."""


@dataclass
class _Item:
    arrays: Arrays
    n: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    batches: int = 0
    examples: int = 0
    largest: int = 0


class Batcher:
    def __init__(self, run: Callable[[Arrays], Arrays], max_batch: int, max_latency: float, max_queue: int):
        self.run, self.max_batch, self.max_latency, self.max_queue = run, max_batch, max_latency, max_queue
        self.pending: collections.deque[_Item] = collections.deque()
        self.stats = Stats()
        self._expected = max_batch       # requests in the previous batch: who is likely to come back
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kspec-infer")

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        while self.pending:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, arrays: Arrays) -> Arrays:
        if len(self.pending) >= self.max_queue:
            raise Busy()
        n = len(next(iter(arrays.values())))
        item = _Item(arrays, n, asyncio.get_running_loop().create_future())
        self.pending.append(item)
        assert self._wakeup is not None
        self._wakeup.set()
        return await item.future

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queued = sum(item.n for item in self.pending)
            wait = self.pending[0].arrived + self.max_latency - time.monotonic()
            if queued < self.max_batch and len(self.pending) < self._expected and wait > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [self.pending.popleft()]
            total = batch[0].n
            while self.pending and total + self.pending[0].n <= self.max_batch and _joins(batch[0], self.pending[0]):
                item = self.pending.popleft()
                batch.append(item)
                total += item.n
            self._expected = len(batch)
            batch = [item for item in batch if not item.future.cancelled()]   # the client went away
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as exc:          # handed to each request; the loop keeps serving
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in batch:
                if not item.future.done():
                    item.future.set_result({k: v[start:start + item.n] for k, v in outputs.items()})
                start += item.n
            self.stats.batches += 1
            self.stats.examples += total
            self.stats.largest = max(self.stats.largest, total)

    def _run(self, batch: list[_Item]) -> Arrays:
        if len(batch) == 1:
            return self.run(batch[0].arrays)
        names = batch[0].arrays.keys()
        return self.run({k: np.concatenate([item.arrays[k] for item in batch]) for k in names})


def _joins(a: _Item, b: _Item) -> bool:
    """Examples of two requests can share a batch (inputs with an open size may differ per request)."""
    return all(a.arrays[k].shape[1:] == b.arrays[k].shape[1:] for k in a.arrays)
