"""The cross check of a layer's units: is each a whole hyperplane in feature space, or a deeper unit's piece?

A unit of the layer after the prefix is a hyperplane in its feature space: g has a kink everywhere on it (where
some later path is alive). A deeper unit's kink is only locally a hyperplane: its surface bends at every unit of
this layer it depends on, so on the far side of such a unit the hyperplane it predicts carries no kink. Used on the
first layer when a deeper layer follows (there with a retest before a unit is refuted), and on every strict layer
(layer.LayerConfig.strict). Float64 numpy;
every query through the Querier (window tests of layer.locate).
"""

from __future__ import annotations

import zlib

import numpy as np

from functional_equivalence.deep import network
from functional_equivalence.deep.layer import (
  LayerConfig,
  Unit,
  active_features,
  locate,
  near_anchors,
  required_center,
  surface_points,
  trusted,
)


def _class_points(prefix, c: Unit, others: list, x: np.ndarray, per_class: int) -> list:
  """Indices into x (points of c's surface) grouped by class (u, side): up to per_class points on each side of
  every other unit u's surface, among the points where u's known features cover the active ones."""
  f = network.features(prefix, x)
  act = active_features(prefix, f)
  groups = []
  for u in others:
    ok = ~np.any(act & ~u.known, axis=1)
    side = f.h @ u.w + u.b
    for sign in (1.0, -1.0):
      idx = np.flatnonzero(ok & (sign * side > 0))[:per_class]
      if len(idx):
        groups.append(idx)
  return groups


def cross_check(
  q, prefix, units: list, cfg: LayerConfig, rng, stats, retest: int = 0, own_stream: bool = False
) -> tuple[list, list]:
  """Splits units into (kept, refuted) (module docstring). Every unit is tested at points of its predicted surface on
  both sides of every other unit (up to cross_points a side, spread over cross_spread times its points' distance);
  a unit whose points on one side of another unit all miss (at least two) is refuted. A true unit misses only where
  every path after it is dead, which a whole side of another unit rarely is; with `retest`, a unit about to be
  refuted is tested that many more times on fresh points, 4 times as many a side, and kept if none of those tests
  has a side where all miss (a first-layer unit whose later paths are alive on a small part of a side:
  random 12-8-6-3 seed 7 lost a true unit to 3 points a side). With `own_stream`, a retest draws its points from a
  generator seeded by the unit's weights (crc32), not from `rng`: a false unit retested and refuted again leaves
  the search's stream where it was (strict layers: random 10-8-8-8-1 seed 15's second layer lost two true units)."""
  if len(units) < 2:
    return list(units), []
  q0 = q.queries
  kept: list[Unit] = []
  refuted: list[Unit] = []
  for i, c in enumerate(units):
    dead = _dead_side(q, prefix, units, i, cfg, rng, cfg.cross_points)
    for _ in range(retest if dead else 0):
      stats["cross_retests"] = stats.get("cross_retests", 0) + 1
      stream = np.random.default_rng(zlib.crc32(c.w.tobytes())) if own_stream else rng
      dead = _dead_side(q, prefix, units, i, cfg, stream, 4 * cfg.cross_points)
      if not dead:
        break
    (refuted if dead else kept).append(c)
  stats["cross_check_queries"] = stats.get("cross_check_queries", 0) + q.queries - q0
  stats["cross_refuted"] = stats.get("cross_refuted", 0) + len(refuted)
  return kept, refuted


def _dead_side(q, prefix, units: list, i: int, cfg: LayerConfig, rng, per_side: int) -> bool:
  """Whether unit i misses at every test point (at least two) on one side of another unit (cross_check)."""
  c = units[i]
  others = [u for u in units if u is not c]
  anc, spread = near_anchors(c, required_center(cfg), cfg.scale)
  count = 16 * len(others) * per_side // cfg.cross_points
  x, nrm, room = surface_points(prefix, c, anc, count, cfg.cross_spread * spread, rng, within=trusted(cfg))
  groups = [g for g in _class_points(prefix, c, others, x, per_side) if len(g) >= 2]
  if not groups:
    return False
  idx = np.unique(np.concatenate(groups))
  hit, _, flat = locate(q, prefix, units, [i] * len(idx), x[idx], nrm[idx], room[idx], cfg, "cross check")
  hits, told = dict(zip(idx.tolist(), hit.tolist())), dict(zip(idx.tolist(), (~flat).tolist()))
  # a point where g is flat tells nothing (layer._verify): a side is dead on two or more points that tell
  return any(sum(told[k] for k in g.tolist()) >= 2 and not any(hits[k] for k in g.tolist()) for g in groups)
