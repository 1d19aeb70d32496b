"""Where a unit's weights from features it never saw on would be wrong: check points near its predicted surface.

A unit's kinks give its weight from input feature k only where k is on at its surface. Where the search met no such
point (the weight stays 0, or `layer.complete` read it by walking), a wrong weight moves the unit's surface inside
k's region only, by about d_k h_k / |grad p|: the recovered network is off in the wedge between the predicted
surface and the true one, a small part of the domain (random 10-8-8-8-1 seed 8 under another random stream: a
network off by 0.15 (relative) at about 1e-4 of the ball's points passed the final check's 8,192 points, its walked
points (`layer.reach_points`) and the polish step's re-check; its third-layer unit had 2 such features, one on
nowhere on the unit's surface within the ball). `wedge_points` draws many points over the domain offline (no query)
and keeps, for each such unit, those nearest its predicted surface, relative to its scale, among the points where
such a feature is on: 10 of 64 of them fail on that network (1 of 64 from 20,000 draws, 20 of 64 from 10^6).
Float64 numpy.
"""

from __future__ import annotations

import zlib

import numpy as np

from functional_equivalence.deep import network


def wedge_points(
  surfaces: list, dom, d: int, count: int = 64, draws: int = 1 << 18, chunk: int = 1 << 14
) -> np.ndarray:
  """For every unit of `surfaces` ((prefix, layer.Unit) pairs) after the first layer with features it never saw on
  (`Unit.known` False), the `count` of `draws` points of the domain (dom.check_points) with the smallest
  |p_hat(x)| / (|h(x)| |w| + |b|) among those where such a feature is on (module docstring); drawn in chunks from a
  generator seeded by the units' weights (crc32), so that the attack's random stream stays as it was. Returns
  (k, d) points, k <= count times the number of such units."""
  units = [(prefix, u) for prefix, u in surfaces if prefix.weights and not np.all(u.known)]
  if not units:
    return np.zeros((0, d))
  rng = np.random.default_rng(zlib.crc32(b"".join(u.w.tobytes() for _, u in units)))
  best = [(np.full(0, np.inf), np.zeros((0, d))) for _ in units]
  for _ in range(max(1, draws // chunk)):
    x = dom.check_points(rng, d, chunk)
    values: dict[int, np.ndarray] = {}  # per prefix, its features at x (the units of a layer share one)
    for i, (prefix, u) in enumerate(units):
      h = values.setdefault(id(prefix), network.feature_values(prefix, x))
      score = np.abs(h @ u.w + u.b) / (np.linalg.norm(h, axis=1) * np.linalg.norm(u.w) + abs(u.b) + 1e-300)
      score[~np.any(h[:, ~u.known] > 0, axis=1)] = np.inf
      scores, points = np.concatenate([best[i][0], score]), np.concatenate([best[i][1], x])
      keep = np.argsort(scores)[:count]
      keep = keep[np.isfinite(scores[keep])]
      best[i] = (scores[keep], points[keep])
  return np.concatenate([points for _, points in best])
