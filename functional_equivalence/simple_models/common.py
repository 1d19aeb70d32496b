"""What every direct-recovery attack shares: the attacker's input box, a query counter, errors, a line search.

Precision: float64 throughout. The box [low, high]^d is the attacker's input domain: random queries are drawn
from it and fidelity is measured on it; line searches of Lowd-Meek, Milli and the active learner may leave it
(an API takes any real vector), the tree attacks stay inside it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from functional_equivalence.errors import ExtractionError


class UnsupportedAnswersError(ExtractionError):
  """The API's answers do not fit the attack (wrong output mode, wrong number of classes, saturated values)."""


@dataclasses.dataclass(frozen=True)
class Box:
  """The input domain [low, high]^dim."""

  low: float
  high: float
  dim: int

  def __post_init__(self):
    if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low < self.high):
      raise ValueError(f"box needs finite low < high, got [{self.low}, {self.high}]")
    if self.dim < 1:
      raise ValueError(f"box dimension must be >= 1, got {self.dim}")

  @property
  def width(self) -> float:
    return self.high - self.low

  @property
  def center(self) -> np.ndarray:
    return np.full(self.dim, 0.5 * (self.low + self.high))

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """n points uniform in the box, (n, dim) float64."""
    return rng.uniform(self.low, self.high, size=(n, self.dim))


@dataclasses.dataclass
class Halfspace:
  """A recovered binary linear classifier sign(w . x + b), scaled to |w| = 1; queries: inputs asked; stats."""

  w: np.ndarray
  b: float
  queries: int
  stats: dict


class Asker:
  """Asks `oracle(x)` and counts the inputs this attack asked (the attack's query count, a result)."""

  def __init__(self, oracle):
    self.oracle, self.queries = oracle, 0

  def __call__(self, x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    out = np.asarray(self.oracle(x))
    self.queries += len(x)
    return out


def labels(answers: np.ndarray, attack: str) -> np.ndarray:
  """Binary labels (0/1) from answers with two columns (one-hot labels or probabilities)."""
  if answers.ndim != 2 or answers.shape[1] != 2:
    raise UnsupportedAnswersError(
      f"{attack} recovers binary classifiers: the API answers "
      f"{answers.shape[1] if answers.ndim == 2 else answers.shape} classes, not 2"
    )
  return (answers[:, 1] > answers[:, 0]).astype(np.int64)
