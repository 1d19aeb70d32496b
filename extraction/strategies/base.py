"""The query-strategy interface: what a strategy sees of the attack, and how it asks.

A strategy decides which inputs one extraction (one budget, one repetition) sends to the oracle, in rounds: before
the first round there is no student; between rounds the students are trained (or fine-tuned) on everything asked so
far, and the next round's choice may look at them. A strategy is a small object with

  * `source`: where its natural inputs come from: 'pool' (the attacker's own pool of problem-domain inputs),
    'transfer' (a non-problem-domain transfer set, `extraction.transfer`) or 'none' (data-free: it synthesises
    every query);
  * `adaptive`: whether its choice depends on the student (non-adaptive strategies ask everything in one round);
  * `labels_only`: train on the top-1 label of each answer whatever the API returns (Copycat);
  * `init(rnd) -> state` and `select(state, rnd, n) -> state`: `select` asks exactly `n` inputs through
    `rnd.ask(indices=...)` (natural inputs, by index) or `rnd.ask(inputs=...)` (synthesised uint8 inputs).

`rnd.ask` is the only way a strategy reaches the victim; it calls `oracle(x)` and nothing else, records what was
asked and refuses to pass the round's share of the budget. A strategy's randomness comes from `rnd.rng`, a
generator of the query stream (`extraction.seeds`) of its extraction and round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from extraction.oracle import softmax
from extraction.predict import predict_logits


@dataclasses.dataclass(frozen=True)
class Student:
  """The current student as a strategy sees it: logits on uint8 inputs, and the model and (EMA) variables for the
  strategies that differentiate it (JBDA, DFAL, DFME)."""

  model: Any
  variables: Any

  def logits(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(predict_logits(self.model, self.variables, x), np.float64)

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    return softmax(self.logits(x))


@dataclasses.dataclass
class Asked:
  """Everything one extraction asked, in order: the inputs (uint8), their index among the natural inputs (-1 for
  a synthesised input) and the oracle's answers."""

  inputs: np.ndarray
  natural: np.ndarray
  answers: np.ndarray

  @classmethod
  def empty(cls, input_shape: tuple, num_classes: int) -> Asked:
    return cls(np.zeros((0,) + tuple(input_shape), np.uint8), np.zeros(0, np.int64), np.zeros((0, num_classes)))

  def add(self, inputs: np.ndarray, natural: np.ndarray, answers: np.ndarray) -> None:
    self.inputs = np.concatenate([self.inputs, inputs])
    self.natural = np.concatenate([self.natural, natural.astype(np.int64)])
    self.answers = np.concatenate([self.answers, np.asarray(answers, np.float64)])

  def __len__(self) -> int:
    return len(self.natural)


class RoundBudgetExceeded(RuntimeError):
  """A strategy asked more than its round's share of the budget."""


@dataclasses.dataclass
class Round:
  """What a strategy sees in one round of one extraction.

  Attributes:
    natural: uint8 (N, ...) natural inputs the attacker holds (its pool or transfer set; empty when data-free).
    kinds: int (N, depth) each natural input's path in a hierarchy of kinds (source, class), or None.
    asked: everything asked in earlier rounds (and so far in this one).
    student: the student trained on it, or None before the first training.
    rng: this round's generator of the query stream.
    index, rounds: this round's number (0-based) and how many there are.
    num_classes: classes of the victim's answers.
    output: the API's output mode (`extraction.oracle.OUTPUT_MODES`), to read the answers.
    oracle: the API, called as `oracle(x)` only, through `ask`.
    limit: how many inputs this round may ask in all.
  """

  natural: np.ndarray
  kinds: np.ndarray | None
  asked: Asked
  student: Student | None
  rng: np.random.Generator
  index: int
  rounds: int
  num_classes: int
  output: str
  oracle: Callable[[np.ndarray], np.ndarray]
  limit: int
  used: int = 0

  def ask(self, indices: np.ndarray | None = None, inputs: np.ndarray | None = None) -> np.ndarray:
    """Asks the oracle natural inputs by index or synthesised uint8 inputs; records and returns the answers."""
    if (indices is None) == (inputs is None):
      raise ValueError("ask either indices= (natural inputs) or inputs= (synthesised)")
    if indices is not None:
      indices = np.asarray(indices, np.int64)
      x = self.natural[indices]
    else:
      x = np.asarray(inputs)
      if x.dtype != np.uint8 or x.shape[1:] != self.asked.inputs.shape[1:]:
        raise ValueError(f"synthesised inputs must be uint8 {self.asked.inputs.shape[1:]}, got {x.dtype} {x.shape}")
      indices = np.full(len(x), -1, np.int64)
    if self.used + len(x) > self.limit:
      raise RoundBudgetExceeded(f"round {self.index} may ask {self.limit} inputs; {self.used} asked, {len(x)} more")
    answers = np.asarray(self.oracle(x))
    self.used += len(x)
    self.asked.add(x, indices, answers)
    return answers

  def trained_student(self) -> Student:
    """The current student; an error before the first training (adaptive strategies' seed round has none)."""
    if self.student is None:
      raise RuntimeError(f"round {self.index} has no trained student yet")
    return self.student

  def unasked(self) -> np.ndarray:
    """Indices of the natural inputs not asked yet (sorted)."""
    mask = np.ones(len(self.natural), bool)
    mask[self.asked.natural[self.asked.natural >= 0]] = False
    return np.flatnonzero(mask)

  def candidates(self, limit: int = 0) -> np.ndarray:
    """The unasked natural inputs, or a random `limit` of them (drawn from this round's stream) when limit > 0."""
    idx = self.unasked()
    if 0 < limit < len(idx):
      idx = np.sort(self.rng.choice(idx, limit, replace=False))
    return idx


def sample_unasked(rnd: Round, n: int) -> np.ndarray:
  """n natural inputs not asked yet, uniformly from the round's stream. Before anything was asked this is the first
  n of a permutation of all natural inputs (`extraction.supervised.choose_queries`: budgets nest)."""
  if not len(rnd.asked):
    order = rnd.rng.permutation(len(rnd.natural))
  else:
    order = rnd.rng.permutation(rnd.unasked())
  if n > len(order):
    raise ValueError(f"asked for {n} more natural inputs, but only {len(order)} are left")
  return order[:n]


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
  """Positions of the n largest scores, largest first (ties: lower position first)."""
  return np.argsort(-np.asarray(scores), kind="stable")[:n]


@dataclasses.dataclass(frozen=True)
class OneRound:
  """Base of the strategies that ask everything in one round, without a student (random, TypiClust; Copycat's and
  Knockoff's random choice from a transfer set). Subclasses define `select`."""

  source: str = "pool"
  labels_only: bool = False
  adaptive: bool = False

  def init(self, rnd: Round):
    return None


@dataclasses.dataclass(frozen=True)
class FromSeedSet:
  """Base of the adaptive strategies that start from a random seed set of the attacker's pool (while there is no
  student) and choose every later round with the student: JBDA and ActiveThief's. Subclasses define
  `grow(rnd, n)`, which asks n inputs."""

  source: str = "pool"
  labels_only: bool = False
  adaptive: bool = True

  def init(self, rnd: Round):
    return None

  def select(self, state, rnd: Round, n: int):
    if rnd.student is None or not len(rnd.asked):
      rnd.ask(indices=sample_unasked(rnd, n))
    else:
      self.grow(rnd, n)
    return state

  def grow(self, rnd: Round, n: int) -> None:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class RankCandidates(FromSeedSet):
  """ActiveThief's strategies: every later round asks the n best unasked pool inputs (among `candidates` random
  ones when > 0) by the subclass's `rank(rnd, indices, n) -> positions in indices`."""

  candidates: int = 0

  def grow(self, rnd: Round, n: int) -> None:
    idx = rnd.candidates(self.candidates)
    rnd.ask(indices=idx[self.rank(rnd, idx, n)])

  def rank(self, rnd: Round, indices: np.ndarray, n: int) -> np.ndarray:
    raise NotImplementedError
