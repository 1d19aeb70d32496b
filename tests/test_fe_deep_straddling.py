"""crosscheck.straddling: a unit of the lenient search that the strict one refused is taken back only when its own
precise surface points lie on both sides of the layer's kept units (a whole hyperplane), never when its points keep
every kept unit's state (a deeper unit's piece), when they are too few or span too little to fix its hyperplane,
when it duplicates a kept unit or when it misses a feature. Built offline on a random first layer (no query)."""

import copy

import numpy as np

from functional_equivalence.deep import crosscheck, network
from functional_equivalence.deep import layer as layers

D, N0 = 4, 6


def _prefix(d=D):
  rng = np.random.default_rng(0)
  return network.DeepNet((rng.normal(size=(d, N0)),), (0.5 * rng.normal(size=N0),))


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
  d = prefix.weights[0].shape[0]
  center = np.zeros(d) if center is None else center
  u.points = list(_on_surface(prefix, u, center + spread * rng.normal(size=(count, d))))
  return u


def _one_side_of_each(prefix, units, points):
  """The points on the side of every unit where most of them are (one activation pattern of the kept units)."""
  h = network.features(prefix, points).h
  pattern = (h @ np.stack([u.w for u in units], 1) + np.array([u.b for u in units])) > 0
  keys, counts = np.unique(pattern, axis=0, return_counts=True)
  return points[np.all(pattern == keys[np.argmax(counts)], axis=1)]


def test_a_true_unit_is_taken_back_and_pieces_duplicates_and_partial_units_are_not():
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  true = _layer(10, prefix)
  assert len(true.points) >= 20
  # a deeper unit's piece: a hyperplane only where every kept unit keeps its state, its points spread over many
  # first-layer regions there (they fix its hyperplane) but never on both sides of a kept unit
  piece = _layer(10, prefix, count=600)
  piece.points = list(_one_side_of_each(prefix, strict, np.asarray(piece.points)))
  assert len(piece.points) >= N0 + 1 + crosscheck.SPARE_POINTS
  assert crosscheck._fix_hyperplane(prefix, piece, np.asarray(piece.points))
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


def test_points_that_span_less_than_the_hyperplane_do_not_fix_it():
  # many points, but in one linear region of the first layer: [h, 1] has rank <= d + 1 = 5 < 6 features, so other
  # hyperplanes hold them too (random 16-12-10-4 seed 0: a copy of a unit off its surface, rank 10 on 12 features)
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  flat = _layer(10, prefix)
  anchor = flat.points[0]
  flat.points = list(_on_surface(prefix, flat, anchor + 1e-4 * np.random.default_rng(3).normal(size=(30, D))))
  assert len(flat.points) >= N0 + 1 + crosscheck.SPARE_POINTS
  assert not crosscheck._fix_hyperplane(prefix, flat, np.asarray(flat.points))
  assert crosscheck.straddling(prefix, strict, [flat]) == []


def test_a_unit_straddling_fewer_than_the_share_of_kept_units_stays_out():
  prefix = _prefix()
  strict = [_layer(s, prefix) for s in range(1, 5)]
  true = _layer(10, prefix)
  straddled = crosscheck._straddled(prefix, strict, np.asarray(true.points))
  assert crosscheck.straddling(prefix, strict, [true], share=straddled / len(strict)) == [true]
  assert crosscheck.straddling(prefix, strict, [true], share=(straddled + 1) / len(strict)) == []


def test_far_from_the_origin_the_same_holds():
  # every unit's points 1000 from the origin, spread over 300 (the tolerances are relative to the features' size);
  # 8 inputs, so that the few first-layer regions out there still span the 6 features
  d = 8
  prefix = _prefix(d)
  center = np.full(d, 1000.0 / np.sqrt(d))
  strict = [_layer(s, prefix, spread=300.0, center=center) for s in range(1, 5)]
  true = _layer(10, prefix, spread=300.0, center=center)
  piece = _layer(10, prefix, spread=300.0, center=center, count=600)
  piece.points = list(_one_side_of_each(prefix, strict, np.asarray(piece.points)))
  assert len(piece.points) >= N0 + 1 + crosscheck.SPARE_POINTS
  assert crosscheck._fix_hyperplane(prefix, piece, np.asarray(piece.points))
  assert crosscheck._fix_hyperplane(prefix, true, np.asarray(true.points))
  assert crosscheck.straddling(prefix, strict, [piece, true]) == [true]
