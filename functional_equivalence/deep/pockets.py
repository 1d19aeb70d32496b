"""Where a unit the attack never saw would turn on: points of the domain where linear functions of a layer's
features are greatest.

A hidden unit of layer l + 1 reads the features h of layer l (h >= 0): z = h . w + b. One on over a tiny part of
the domain only (a pocket no line of the search crosses) is missed, and the network returned is wrong there alone.
Its pocket holds the point where h . w is greatest, so points where c . h is greatest for many c are where such a
unit shows first, if anywhere. Two kinds of c, each maximised by remainder.descend (its least of -c . h), with the
features scaled to their largest value on a sample:
- sparse: a set S of one or two features on, every other off, as nearly as the domain allows (c = 1 on S, -lam off
  it, lam = 1 and 10). A unit on where the features it reads with positive weight are on and the others off, far
  enough out where one feature read positively is on alone. Random 9-14-7-1 seed 1 and 5-20-10-2 seed 1
  (fe_deep_fresh, fe_deep_expansive, thirty-fourth session): a second-layer unit on at 5e-6 of the sphere and at
  none of 200,000 points of the ball, missed, the network returned wrong by 0.87 and 0.92 over the ball; at these
  points of the victim's own layer the missed unit is on at 4-72 of some hundreds, where 4,096 random c found it
  at none (ad hoc).
- random: unit vectors c (the basis both ways first, remainder.unit_directions). A unit made rare by its bias alone (network.with_rare_unit,
  on at 3e-5 of the domain) is on at these points more often than at the sparse ones: of 36 random nets of 2-3
  hidden layers on a ball and a box, 22 by 256 random c (4 starts each), 14 by the sparse sets, 23 by
  `pocket_points` as built (ad hoc; 14 of the ball's 18 in tests/test_fe_pockets.py).
Offline: no query. Float64 numpy.
"""

from __future__ import annotations

import itertools

import numpy as np

from functional_equivalence.deep import network, remainder
from functional_equivalence.deep.network import DeepNet

WEIGHTS = (1.0, 10.0)  # lam: how much the features off S count against those on it


def subsets(n: int, limit: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
  """Every single feature of n, then pairs: all of them if `limit` allows, else a random choice of them."""
  singles: list[tuple[int, ...]] = [(a,) for a in range(min(n, limit))]
  pairs: list[tuple[int, ...]] = list(itertools.combinations(range(n), 2))
  room = max(limit - len(singles), 0)
  if len(pairs) > room:
    pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), room, replace=False))]
  return singles + pairs


def sparse_directions(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
  """c of `subsets(n, limit)` with every lam of WEIGHTS: (len(WEIGHTS) * sets, n)."""
  rows = []
  for lam in WEIGHTS:
    for s in subsets(n, limit, rng):
      c = np.full(n, -lam)
      c[list(s)] = 1.0
      rows.append(c)
  return np.array(rows).reshape(-1, n)


def greatest(prefix: DeepNet, c: np.ndarray, dom, rng: np.random.Generator, starts: int) -> np.ndarray:
  """For each row of c (D, n), the point of the domain where c . h (h the prefix's features) is greatest, the best
  of `starts` descents: (D, d)."""
  x = remainder.descend(prefix, -c, dom, rng, starts)
  value = np.sum(network.feature_values(prefix, x) * np.repeat(c, starts, axis=0), axis=1)
  best = np.argmax(value.reshape(len(c), starts), axis=1)
  return x.reshape(len(c), starts, -1)[np.arange(len(c)), best]


def pocket_points(net: DeepNet, dom, rng: np.random.Generator, sets: int, directions: int, starts: int = 2):
  """For each hidden layer of `net` read by another hidden layer, the points of the domain where c . h is greatest
  for up to `sets` sparse sets (2 points each) and `directions` random c (module docstring), features scaled by
  their largest value at 1,024 domain points (a feature off at all of them by the largest of the others). Returns
  (points, d)."""
  d = net.sizes[0]
  sample = dom.check_points(rng, d, 1024)
  parts = [np.zeros((0, d))]
  for layer in range(1, net.depth):
    prefix = net.prefix(layer)
    scale = np.max(network.feature_values(prefix, sample), axis=0)
    scale = np.where(scale > 0, scale, np.max(scale, initial=0.0) or 1.0)
    n = len(scale)
    c = np.concatenate([sparse_directions(n, sets, rng), remainder.unit_directions(n, directions, rng)])
    if len(c):
      parts.append(greatest(prefix, c / scale, dom, rng, starts))
  return np.concatenate(parts)
