"""crosscheck.straddling: a unit of the lenient search that the strict one refused is taken back only when its own
precise surface points lie on both sides of the layer's kept units (a whole hyperplane), never when its points keep
every kept unit's state (a deeper unit's piece), when they are too few to overdetermine its hyperplane, when it
duplicates a kept unit or when it misses a feature. Built offline on a random first layer (no query)."""

import copy

import numpy as np

from functional_equivalence.deep import crosscheck, network
from functional_equivalence.deep import layer as layers

D, N0 = 4, 6


def _prefix():
  rng = np.random.default_rng(0)
  return network.DeepNet((rng.normal(size=(D, N0)),), (0.5 * rng.normal(size=N0),))


def _unit(w, b, points=()):
  w = np.asarray(w, np.float64)
  u = layers.Unit(w, np.ones(N0, bool), float(b), 1e-12, np.ones(1), list(points))
  u.normalise()
  return u


def _on_surface(prefix, u, x):
  """Points of x moved onto u's surface (offline Newton steps), those that landed on it."""
  pts = np.array([layers._onto_surface(prefix, u, p) for p in x])
  f = network.features(prefix, pts)
  z = np.abs(f.h @ u.w + u.b) / (np.linalg.norm(f.h, axis=1) + abs(u.b))
  return pts[z < 1e-12]


def _layer(seed, prefix, spread=3.0, count=40, center=None):
  rng = np.random.default_rng(seed)
  u = _unit(rng.normal(size=N0), 0.3 * rng.normal())
  center = np.zeros(D) if center is None else center
  u.points = list(_on_surface(prefix, u, center + spread * rng.normal(size=(count, D))))
  return u


def test_a_true_unit_is_taken_back_and_pieces_duplicates_and_partial_units_are_not():
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  true = _layer(10, prefix)
  assert len(true.points) >= 20
  # a deeper unit's piece: its points in a ball so small that no kept unit changes state across it
  piece = _layer(10, prefix)
  anchor = piece.points[0]
  piece.points = list(_on_surface(prefix, piece, anchor + 1e-4 * np.random.default_rng(3).normal(size=(30, D))))
  assert len(piece.points) >= N0 + 1 + crosscheck.SPARE_POINTS
  duplicate = copy.deepcopy(strict[0])
  duplicate.points = list(_on_surface(prefix, duplicate, 3.0 * np.random.default_rng(4).normal(size=(30, D))))
  partial = copy.deepcopy(true)
  partial.known[0] = False
  assert crosscheck._straddled(prefix, strict, np.asarray(true.points)) >= 3
  assert crosscheck._straddled(prefix, strict, np.asarray(piece.points)) == 0
  back = crosscheck.straddling(prefix, strict, [piece, duplicate, partial, true])
  assert back == [true]
  # the kept units themselves are never taken back twice, and nothing comes back from an empty lenient search
  assert crosscheck.straddling(prefix, strict, strict) == []
  assert crosscheck.straddling(prefix, strict, []) == []


def test_a_unit_whose_points_do_not_overdetermine_its_hyperplane_stays_out():
  # as many points as fix the hyperplane, and a few more: any such set lies on some hyperplane (CME-trained
  # 40-20-10-10-1 took back a deeper unit's piece fitted through 13 points on 20 features before this rule)
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  true = _layer(10, prefix)
  enough = N0 + 1 + crosscheck.SPARE_POINTS
  few = copy.deepcopy(true)
  few.points = few.points[: enough - 1]
  assert crosscheck._straddled(prefix, strict, np.asarray(few.points)) >= 2
  assert crosscheck.straddling(prefix, strict, [few]) == []
  few.points = true.points[:enough]
  assert crosscheck.straddling(prefix, strict, [few]) == [few]


def test_a_unit_straddling_fewer_than_the_share_of_kept_units_stays_out():
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  true = _layer(10, prefix)
  straddled = crosscheck._straddled(prefix, strict, np.asarray(true.points))
  assert crosscheck.straddling(prefix, strict, [true], share=straddled / len(strict)) == [true]
  assert crosscheck.straddling(prefix, strict, [true], share=(straddled + 1) / len(strict)) == []


def test_far_from_the_origin_the_same_holds():
  # the points of every unit 1000 from the origin, spread over 300: the tolerance is relative to the features' size
  prefix = _prefix()
  center = np.full(D, 1000.0 / np.sqrt(D))
  strict = [_layer(s, prefix, spread=300.0, center=center) for s in range(1, 5)]
  true = _layer(10, prefix, spread=300.0, center=center)
  piece = _layer(10, prefix, spread=300.0, center=center)
  piece.points = list(
    _on_surface(prefix, piece, piece.points[0] + 1e-3 * np.random.default_rng(3).normal(size=(20, D)))
  )
  back = crosscheck.straddling(prefix, [u for u in strict if len(u.points) >= 2], [piece, true])
  assert back == [true]
