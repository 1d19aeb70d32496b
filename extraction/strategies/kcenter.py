"""`kcenter`: Pal et al., *ActiveThief*, AAAI 2020, with the greedy k-center core set of Sener & Savarese, *Active
Learning for Convolutional Neural Networks: A Core-Set Approach*, ICLR 2018.

Round 0 asks a random seed set of the attacker's pool. Every later round represents inputs by the current
student's softmax (ActiveThief's choice) and picks, one at a time, the unasked input farthest (Euclidean) from its
nearest center, where the centers are everything asked so far and everything picked in this round.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.strategies.base import RankCandidates, Round

_BLOCK = 2048


def _min_sq_dist(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
  """Squared distance of each point to its nearest center (blocked over the centers)."""
  best = np.full(len(points), np.inf)
  pp = (points**2).sum(-1)
  for i in range(0, len(centers), _BLOCK):
    c = centers[i : i + _BLOCK]
    d = pp[:, None] - 2 * points @ c.T + (c**2).sum(-1)[None]
    best = np.minimum(best, d.min(1))
  return np.maximum(best, 0.0)


def kcenter_greedy(points: np.ndarray, centers: np.ndarray, n: int) -> np.ndarray:
  """Positions of n points chosen greedily: each the point farthest from its nearest center (the given centers
  and the points chosen before it). With no centers the first pick is point 0."""
  points = np.asarray(points, np.float64)
  n = min(n, len(points))
  dist = _min_sq_dist(points, np.asarray(centers, np.float64)) if len(centers) else np.full(len(points), np.inf)
  chosen: list[int] = []
  for _ in range(n):
    i = int(np.argmax(dist)) if np.isfinite(dist).any() else len(chosen)
    chosen.append(i)
    dist = np.minimum(dist, ((points - points[i]) ** 2).sum(-1))
    dist[i] = -1.0
  return np.asarray(chosen, np.int64)


@dataclasses.dataclass(frozen=True)
class KCenter(RankCandidates):
  def rank(self, rnd: Round, indices: np.ndarray, n: int) -> np.ndarray:
    student = rnd.trained_student()
    points = student.probabilities(rnd.natural[indices])
    return kcenter_greedy(points, student.probabilities(rnd.asked.inputs), n)


def make(candidates: int = 0, **_) -> KCenter:
  return KCenter(candidates=candidates)
