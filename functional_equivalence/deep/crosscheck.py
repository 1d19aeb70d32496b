"""The cross check of a layer's units: is each a whole hyperplane in feature space, or a deeper unit's piece?

A unit of the layer after the prefix is a hyperplane in its feature space: g has a kink everywhere on it (where
some later path is alive). A deeper unit's kink is only locally a hyperplane: its surface bends at every unit of
this layer it depends on, so on the far side of such a unit the hyperplane it predicts carries no kink. Used on the
first layer when a deeper layer follows (there with a retest before a unit is refuted), and on every strict layer
(layer.LayerConfig.strict). The same fact, read from points already paid for, takes back units of a layer's lenient
search that its strict one refused (`straddling`, no query). Float64 numpy; every query through the Querier
(window tests of layer.locate).
"""

from __future__ import annotations

import zlib

import numpy as np

from functional_equivalence.deep import network
from functional_equivalence.deep.layer import (
  LayerConfig,
  Unit,
  _close_units,
  _on_surface,
  active_features,
  locate,
  near_anchors,
  required_center,
  surface_misfits,
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


SPARE_POINTS = 4  # straddling: points beyond those that fix a unit's hyperplane (its refit gets refit_points = 8)


def straddling(prefix, strict: list, lenient: list, share: float = 0.5) -> list:
  """Units of the lenient search of a layer that its strict search (LayerConfig.strict) did not keep, taken back
  when their own precise surface points prove them whole hyperplanes: a deeper unit's piece is a hyperplane only
  where every unit of this layer it depends on keeps its state, so its points never lie on both sides of such a
  unit, while a true unit's points do wherever they were found. A unit is taken back when it knows all its
  features, is no duplicate of a kept one (layer.dedup's row and surface tests), has SPARE_POINTS more points on its hyperplane
  (within 1e-9) than fix it, those points spanning it (`_fix_hyperplane`; fewer lie on some hyperplane whatever they
  are: CME-trained 40-20-10-10-1 has a deeper unit's piece fitted through 13 points on 20 features, on both sides
  of 5 of the 10 kept units), and those
  points straddle at least `share` of the kept units (the strict ones and those taken back before it; at least
  one); most points first. Strict acceptance refuses a true unit whose kink is absent at some test points (its
  later paths dead there, or its surface far out): a breast-cancer victim 30-32-16-8-2 (standardised features)
  lost two second-layer units active on 1.1% and 0.6% of N(0, I), found by the lenient search with 41 points each
  on both sides of 13 and 14 of the 14 kept units, and the search of a third layer then never settled. No query;
  float64."""
  kept = list(strict)
  back: list[Unit] = []
  for u in sorted(lenient, key=lambda v: -len(v.points)):
    if not u.known.all() or not u.points or any(u is k for k in kept):
      continue
    if duplicate(prefix, kept, u):
      continue
    pts = _on_own_surface(prefix, u)
    if len(pts) < u.known.sum() + 1 + SPARE_POINTS or not _fix_hyperplane(prefix, u, pts):
      continue  # its points do not overdetermine its hyperplane: they would fit other ones too
    if _straddled(prefix, kept, pts) >= max(1, int(np.ceil(share * len(kept)))):
      kept.append(u)
      back.append(u)
  return back


def duplicate(prefix, kept: list, u: Unit) -> bool:
  """Whether `u` is a copy of a unit of `kept` (layer.dedup's row and surface tests, either way round)."""
  return any(_close_units(k, u, 1e-4) or _on_surface(prefix, k, u) or _on_surface(prefix, u, k) for k in kept)


def _on_own_surface(prefix, u: Unit, rtol: float = 1e-9) -> np.ndarray:
  """The unit's precise points (k, d) that lie on its own hyperplane within rtol (relative to |h| + |b|)."""
  pts = np.asarray(u.points)
  return pts[surface_misfits(prefix, u, pts) <= rtol]


def _fix_hyperplane(prefix, u: Unit, points: np.ndarray, rtol: float = 1e-7) -> bool:
  """Whether the points' [h (known features), 1] have rank = the unit's known features: one hyperplane (the unit's)
  holds them all. With fewer dimensions other hyperplanes pass through them too, and points of different surfaces
  can share one (random 16-12-10-4 seed 0: a lenient copy of a second-layer unit, off the victim's surface by 0.7%,
  19 points of rank 10 on 12 features, taken back without this test and the attack then stopped)."""
  a = np.column_stack([network.features(prefix, points).h[:, u.known], np.ones(len(points))])
  sv = np.linalg.svd(a, compute_uv=False)
  return int(np.sum(sv > rtol * sv[0])) >= int(u.known.sum())


def _straddled(prefix, units: list, points: np.ndarray) -> int:
  """How many of the units have points (k, d) clearly on both of their sides (|pre-activation| above 1e-9 of its
  scale), counted where their known features cover the active ones."""
  f = network.features(prefix, points)
  live = active_features(prefix, f)
  count = 0
  for u in units:
    covered = ~np.any(live & ~u.known, axis=1)
    z = f.h[covered] @ u.w + u.b
    tol = 1e-9 * (np.linalg.norm(f.h[covered], axis=1) + abs(u.b))
    count += bool(np.any(z > tol) and np.any(z < -tol))
  return count
