"""Extraction in rounds: a query strategy (`extraction.strategies`) asks each extraction's budget in rounds, and
the students are trained on what was asked between rounds.

An extraction is one attacker: a budget, a query seed and its own oracle (whose hard budget holds across rounds).
Round r of an extraction asks its share `round_sizes(budget, rounds)[r]`, with the generator of its query stream
`round_rng(seed, r)` (round 0's is the one `extraction.supervised.choose_queries` draws from, so the random
strategy is today's choice bit for bit). Non-adaptive strategies ask everything in one round.

`training_data` turns what each extraction asked into the students' data: one array holding the strategy's
natural inputs (the attacker's pool or transfer set) and every synthesised input, and per extraction the indices of
its asked inputs in it, their training targets, and, for semi-supervised methods, the natural inputs it never asked
(synthesised inputs are never unlabeled data).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from extraction import seeds
from extraction.strategies.base import Asked, Round, Student
from extraction.supervised import oracle_targets


def round_sizes(budget: int, rounds: int) -> list[int]:
  """The budget split over the rounds as evenly as possible, the larger shares first."""
  base, extra = divmod(budget, rounds)
  return [base + (i < extra) for i in range(rounds)]


def round_rng(seed: int, r: int) -> np.random.Generator:
  """The query stream of `seed` for round r (round 0: the stream itself)."""
  return seeds.rng(seed, "query") if r == 0 else seeds.rng(seed, "query", r)


@dataclasses.dataclass
class Extraction:
  """One attacker: its budget, query seed, oracle, what it asked and its strategy's state."""

  oracle: Callable[[np.ndarray], np.ndarray]
  budget: int
  seed: int
  asked: Asked
  state: Any = None
  used: int = 0  # inputs its oracle answered (read from the oracle once the asking is done)


def num_rounds(strategy, rounds: int) -> int:
  return rounds if strategy.adaptive else 1


def ask_round(
  strategy,
  extraction: Extraction,
  r: int,
  rounds: int,
  natural: np.ndarray,
  kinds: np.ndarray | None,
  student: Student | None,
  num_classes: int,
  output: str,
) -> int:
  """Round r of one extraction: the strategy asks its share; returns how many it asked."""
  rounds = num_rounds(strategy, rounds)
  n = round_sizes(extraction.budget, rounds)[r]
  rnd = Round(
    natural,
    kinds,
    extraction.asked,
    student,
    round_rng(extraction.seed, r),
    r,
    rounds,
    num_classes,
    output,
    extraction.oracle,
    n,
  )
  if r == 0:
    extraction.state = strategy.init(rnd)
  if n:
    extraction.state = strategy.select(extraction.state, rnd, n)
  if rnd.used != n:
    raise RuntimeError(f"{type(strategy).__name__} asked {rnd.used} inputs in round {r}, its share is {n}")
  return n


def targets(asked: Asked, output: str, labels_only: bool) -> np.ndarray:
  """Training targets of the asked inputs (`oracle_targets`); one-hot of the top class when labels_only."""
  t = oracle_targets(asked.answers, output)
  if labels_only:
    t = np.eye(t.shape[-1], dtype=np.float32)[np.argmax(t, -1)]
  return t


def training_data(
  natural: np.ndarray, asked: list[Asked], output: str, labels_only: bool, unlabeled: bool
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
  """(data, [(labeled indices, targets, unlabeled indices) per extraction]): see the module docstring. Without
  synthesised inputs `data` is `natural` itself (no copy)."""
  synth = [a.inputs[a.natural < 0] for a in asked]
  data = np.concatenate([natural] + synth) if any(len(s) for s in synth) else natural
  every, offset, out = np.arange(len(natural)), len(natural), []
  for a, s in zip(asked, synth):
    labeled = a.natural.copy()
    labeled[a.natural < 0] = offset + np.arange(len(s))
    offset += len(s)
    free = np.setdiff1d(every, a.natural[a.natural >= 0]) if unlabeled else every[:0]
    out.append((labeled, targets(a, output, labels_only), free))
  return data, out


def save_asked(path: pathlib.Path, extractions: list[Extraction]) -> None:
  """What every extraction asked (and its oracle's count), so that a finished group is reused without asking."""
  arrays: dict[str, Any] = {}
  for i, e in enumerate(extractions):
    arrays.update(
      {
        f"inputs_{i}": e.asked.inputs,
        f"natural_{i}": e.asked.natural,
        f"answers_{i}": e.asked.answers,
        f"used_{i}": np.asarray(getattr(e.oracle, "used", len(e.asked))),
      }
    )
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)


def load_asked(path: pathlib.Path, n: int) -> list[tuple[Asked, int]] | None:
  """[(asked, oracle count)] of n extractions saved by `save_asked`, or None when there is no such file."""
  if not path.exists():
    return None
  with np.load(path) as f:
    if f"natural_{n - 1}" not in f.files or f"natural_{n}" in f.files:
      return None
    return [(Asked(f[f"inputs_{i}"], f[f"natural_{i}"], f[f"answers_{i}"]), int(f[f"used_{i}"])) for i in range(n)]
