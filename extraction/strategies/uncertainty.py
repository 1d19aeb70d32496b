"""`uncertainty`: Pal, Gupta, Shukla, Kanade, Shevade, Ganapathy, *ActiveThief: Model Extraction Using Active
Learning and Unannotated Public Data*, AAAI 2020 (uncertainty sampling, Lewis & Gale 1994).

Round 0 asks a random seed set of the attacker's pool; every later round asks the unasked inputs on which the
current student's softmax has the highest entropy. With `candidates` > 0 the choice is among a random subset of
that many unasked inputs per round (to bound the student's predictions on a CPU).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.strategies.base import RankCandidates, Round, top_n


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy (nats) of each row of probabilities."""
  p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
  return -(p * np.log(p)).sum(-1)


def most_uncertain(probs: np.ndarray, n: int) -> np.ndarray:
  """Positions of the n rows of highest entropy."""
  return top_n(entropy(probs), n)


@dataclasses.dataclass(frozen=True)
class Uncertainty(RankCandidates):
  def rank(self, rnd: Round, indices: np.ndarray, n: int) -> np.ndarray:
    return most_uncertain(rnd.trained_student().probabilities(rnd.natural[indices]), n)


def make(candidates: int = 0, **_) -> Uncertainty:
  return Uncertainty(candidates=candidates)
