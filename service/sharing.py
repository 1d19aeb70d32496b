"""Fair sharing between API keys: admission of requests, and round-robin use of the victim.

`Admission` bounds what requests hold before they are answered: at most `per_key` requests of one key and `total`
in all are past admission at once (a request waits up to `wait` seconds for a slot, then gets 429 -- its key's
limit -- or 503, both with Retry-After), and the bodies being read or parsed hold at most `memory` bytes together
(a request that would pass it gets 503 with Retry-After at once). It lives on the event loop (asyncio, no locks).

`FairScheduler` runs the victim in `workers` threads. Each request's batch is cut into chunks of `chunk` inputs
queued under its key; the workers take chunks key after key (round robin), and a key never has two chunks running
at once: however many large batches one key sends, another key's query waits at most for one chunk per busy key
ahead of it, and not at all while a worker is free.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from typing import Callable

import numpy as np

from service.inputs import ApiError

RETRY_AFTER = {"Retry-After": "1"}


class Admission:
  """Per-key and global limits on requests in flight, and a bound on the bytes of bodies in memory."""

  def __init__(self, per_key: int, total: int, memory: int, wait: float):
    self.per_key, self.wait, self.memory_limit = per_key, wait, memory
    self.total = asyncio.Semaphore(total)
    self.keys: dict[str, list] = {}  # owner -> [semaphore, requests holding or waiting for it]
    self.memory_used = 0

  async def _acquire(self, semaphore: asyncio.Semaphore, status: int, message: str) -> None:
    try:
      await asyncio.wait_for(semaphore.acquire(), self.wait)
    except asyncio.TimeoutError:
      raise ApiError(status, message, RETRY_AFTER) from None

  @contextlib.asynccontextmanager
  async def request(self, owner: str):
    """Holds a slot of `owner` (the key's digest) and a global slot for the block; ApiError 429 / 503."""
    entry = self.keys.setdefault(owner, [asyncio.Semaphore(self.per_key), 0])
    entry[1] += 1
    try:
      await self._acquire(entry[0], 429, f"this key already has {self.per_key} requests in flight; retry later")
      try:
        await self._acquire(self.total, 503, "the service is busy; retry later")
        try:
          yield
        finally:
          self.total.release()
      finally:
        entry[0].release()
    finally:
      entry[1] -= 1
      if entry[1] == 0:
        del self.keys[owner]

  @contextlib.contextmanager
  def memory(self, nbytes: int):
    """Counts `nbytes` of body memory for the block; ApiError 503 when that would pass the bound."""
    if self.memory_used + nbytes > self.memory_limit:
      raise ApiError(503, "too many request bodies in flight; retry later", RETRY_AFTER)
    self.memory_used += nbytes
    try:
      yield
    finally:
      self.memory_used -= nbytes


class FairScheduler:
  """Runs `backend` (inputs -> logits) in worker threads, round robin over owners in chunks (module docstring)."""

  def __init__(self, backend: Callable, workers: int = 2, chunk: int = 1024):
    self.backend, self.chunk = backend, chunk
    self._cond = threading.Condition()
    self._queues: dict[str, collections.deque] = {}
    self._ready: collections.deque = collections.deque()  # owners with queued chunks and none running
    self._running: set = set()
    self._closed = False
    self._threads = [threading.Thread(target=self._work, daemon=True, name=f"victim-{i}") for i in range(workers)]
    for t in self._threads:
      t.start()

  def submit(self, owner: str, x: np.ndarray) -> list[concurrent.futures.Future]:
    """Queues x (N, ...) under `owner` in chunks; one future of logits per chunk."""
    futures = []
    with self._cond:
      queue = self._queues.setdefault(owner, collections.deque())
      for i in range(0, len(x), self.chunk):
        futures.append(concurrent.futures.Future())
        queue.append((x[i:i + self.chunk], futures[-1]))
      if owner not in self._running and owner not in self._ready:
        self._ready.append(owner)
      self._cond.notify_all()
    return futures

  async def logits(self, owner: str, x: np.ndarray) -> np.ndarray:
    """The backend's logits for x, computed in turn with the other owners' chunks."""
    futures = self.submit(owner, x)
    try:
      return np.concatenate([np.asarray(await asyncio.wrap_future(f)) for f in futures], axis=0)
    finally:
      for f in futures:
        f.cancel()  # no-op on finished chunks; the queued ones of an abandoned request are skipped

  def _work(self) -> None:
    while True:
      with self._cond:
        while not self._ready and not self._closed:
          self._cond.wait()
        if self._closed:
          return
        owner = self._ready.popleft()
        chunk, future = self._queues[owner].popleft()
        self._running.add(owner)
      try:
        if future.set_running_or_notify_cancel():
          try:
            future.set_result(self.backend(chunk))
          except BaseException as e:  # noqa: B902 (handed to the request, which refunds and answers 500)
            future.set_exception(e)
      finally:
        with self._cond:
          self._running.discard(owner)
          if self._queues[owner]:
            self._ready.append(owner)
            self._cond.notify()
          else:
            del self._queues[owner]

  def close(self) -> None:
    """Stops the workers once their current chunk is done."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
