"""Independent random streams: the victim, each student, the query choice, the pool split and the evaluation each
draw from their own stream, so that no party starts from another's randomness even when they share a seed.

A stream is named; `key(seed, stream)` (jax) and `rng(seed, stream, *more)` (numpy) derive it from a seed. The
victim trained with `--victim_seed=0` and a student trained with `--student_seed=0` get different initial weights
and data orders (tested), which a shared `jax.random.key(seed)` would not give.
"""

from __future__ import annotations

import jax
import numpy as np

STREAMS = {
  "victim": 0x5EC7_0001,
  "student": 0x5EC7_0002,
  "query": 0x5EC7_0003,
  "split": 0x5EC7_0004,
  "eval": 0x5EC7_0005,
}


def _stream_id(stream: str) -> int:
  if stream not in STREAMS:
    raise ValueError(f"unknown random stream {stream!r}; choose one of {', '.join(STREAMS)}")
  return STREAMS[stream]


def key(seed: int, stream: str) -> jax.Array:
  """The jax key of `stream` for `seed`."""
  return jax.random.fold_in(jax.random.key(seed), _stream_id(stream))


def rng(seed: int, stream: str, *more: int) -> np.random.Generator:
  """A numpy generator of `stream` for `seed` (and any further integers, e.g. a step index)."""
  return np.random.default_rng([int(seed), _stream_id(stream), *(int(m) for m in more)])


def salt(stream: str) -> int:
  """The integer that separates `stream` from the others, for helpers keyed by plain integers."""
  return _stream_id(stream)
