"""Answers kept for retries: a request repeated with the same X-Request-Id is answered again, not charged again."""
from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Awaitable, Callable, Optional

from service.inputs import ApiError


@dataclasses.dataclass
class _Replay:
  fingerprint: str
  done: asyncio.Event
  response: Optional[object] = None


class ReplayCache:
  """The answers of each key's last `per_key` requests that carried an X-Request-Id, for the `keys` keys seen
  last: one key's requests never push another key's answers out."""

  def __init__(self, per_key: int = 16, keys: int = 1024):
    self.per_key, self.max_keys = per_key, keys
    self.keys: collections.OrderedDict = collections.OrderedDict()  # owner -> OrderedDict ident -> _Replay

  async def run(self, owner: str, ident, fingerprint: str, make: Callable[[], Awaitable]) -> object:
    """`await make()` once per (owner, ident) (ident None: always); later calls get its response again.

    Raises ApiError 409 when the ident was used by this owner for other inputs (another fingerprint).
    """
    if ident is None:
      return await make()
    items = self.keys.setdefault(owner, collections.OrderedDict())
    self.keys.move_to_end(owner)
    entry = items.get(ident)
    if entry is not None:
      if entry.fingerprint != fingerprint:
        raise ApiError(409, "X-Request-Id already used for other inputs; use a fresh id per request")
      await entry.done.wait()
      if entry.response is not None:
        return entry.response
    entry = items[ident] = _Replay(fingerprint, asyncio.Event())
    while len(items) > self.per_key:
      items.popitem(last=False)
    while len(self.keys) > self.max_keys:
      self.keys.popitem(last=False)
    try:
      entry.response = await make()
      return entry.response
    except BaseException:
      if items.get(ident) is entry:
        del items[ident]
      raise
    finally:
      entry.done.set()
