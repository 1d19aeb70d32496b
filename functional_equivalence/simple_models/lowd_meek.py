"""Lowd & Meek 2005, "Adversarial learning" (KDD): a linear classifier sign(w . x + b) from membership queries.

The API answers labels only, so (w, b) is recovered up to a positive scale, to a stated precision `epsilon`:
  1. sign witnesses: random points of the box until one of each label (x+, x-);
  2. a line search between them to the decision boundary: a point x_b within epsilon * width of it;
  3. a probe point q = x_b + step * width * u on the positive side (u: the unit vector from x- to x+, which
     crosses the boundary, so w . u > 0 and q's margin is m = step * width * (w . u) > 0);
  4. for every feature i, a line search from q along +e_i and -e_i (doubling, then bisection to relative
     precision epsilon) to the distance delta_i where the label flips: w_i delta_i = -m, so w_i = -m / delta_i.
     Features whose label does not flip within `max_stretch` box widths get weight 0 (|w_i| <= m / max_stretch);
  5. b = -w . x_b.
This is Lowd and Meek's continuous-feature algorithm (weights relative to a reference, from line searches that
return to the boundary), with the witness direction u as the reference instead of one feature. Every search is
batched over features: one oracle call per level, one input per open search.
Queries: a few witnesses + log2(width / (epsilon * width)) for the boundary + about (2 + log2(1 / epsilon)) per
feature. Precision: float64; the direction is exact up to about epsilon relative.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from functional_equivalence.errors import ExtractionError
from functional_equivalence.simple_models.common import Asker, Box, Halfspace, labels


class NoWitnessError(ExtractionError):
  """Every random point of the box got the same label: no pair of sign witnesses."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Lowd-Meek settings.

  Attributes:
    epsilon: line searches stop when the bracket is below epsilon times its scale (box width, or distance).
    witness_queries: random box points tried for a pair of sign witnesses before giving up.
    step: distance of the probe point from the boundary, in box widths.
    max_stretch: farthest line search along a feature, in box widths (weights below m / max_stretch read 0).
  """

  epsilon: float = 1e-9
  witness_queries: int = 1024
  step: float = 0.25
  max_stretch: float = 2.0**40


def sign_witnesses(ask, box: Box, rng: np.random.Generator, budget: int, attack: str = "lowd_meek"):
  """A positive and a negative point of the box, from random batches of 2, 2, 4, 8, ... points."""
  asked, size = 0, 2
  while asked < budget:
    n = min(size, budget - asked)
    x = box.sample(rng, n)
    y = labels(ask(x), attack)
    asked, size = asked + n, size * (2 if asked else 1)
    if y.min() != y.max():
      return x[np.argmax(y == 1)], x[np.argmax(y == 0)], asked
  raise NoWitnessError(
    f"{attack}: all {budget} random points of the box got the same label; the classifier "
    f"is constant on the box (no sign witnesses)"
  )


def _bisect(ask_label, lo, hi, ref, done):
  """Batched bisection: label(lo) == ref is kept at lo, the other label at hi, until `done(lo, hi)`.
  ask_label(rows, t) -> labels of the points at t for those rows (one oracle call per level)."""
  lo, hi = np.array(lo, np.float64), np.array(hi, np.float64)
  while True:
    mid = 0.5 * (lo + hi)
    rows = np.flatnonzero(~done(lo, hi) & (mid != lo) & (mid != hi))
    if not len(rows):
      return lo, hi
    same = ask_label(rows, mid[rows]) == ref[rows]
    lo[rows[same]], hi[rows[~same]] = mid[rows[same]], mid[rows[~same]]


def extract(oracle, box: Box, cfg: Config = Config(), rng: np.random.Generator | None = None) -> Halfspace:
  """Recovers (w, b) of a binary linear classifier behind `oracle` (labels or probabilities) up to scale."""
  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  label = lambda x: labels(ask(x), "lowd_meek")
  x_pos, x_neg, witnesses = sign_witnesses(ask, box, rng, cfg.witness_queries)
  # 2. boundary point between the witnesses
  span = x_pos - x_neg
  length = np.linalg.norm(span)
  lo, hi = _bisect(
    lambda rows, t: label(x_neg + t[:, None] * span),
    [0.0],
    [1.0],
    np.zeros(1, np.int64),
    lambda lo, hi: (hi - lo) * length <= cfg.epsilon * box.width,
  )
  x_b = x_neg + 0.5 * (lo[0] + hi[0]) * span
  boundary = ask.queries - witnesses
  # 3. probe point on the positive side
  q = x_b + cfg.step * box.width * span / length
  if label(q[None])[0] != 1:
    raise ExtractionError(
      "lowd_meek: the probe point past the boundary is not positive: the classifier is not "
      "linear along the witness line"
    )
  # 4. per-feature line searches from q: doubling on both sides, then bisection of |delta|
  d, s0 = box.dim, cfg.step * box.width
  direction, lo, hi = np.zeros(d), np.zeros(d), np.full(d, np.nan)
  open_, scale = np.ones(d, bool), s0
  while open_.any() and scale <= cfg.max_stretch * box.width:
    rows = np.flatnonzero(open_)
    pts = np.repeat(q[None], 2 * len(rows), axis=0)
    pts[np.arange(len(rows)), rows] += scale
    pts[len(rows) + np.arange(len(rows)), rows] -= scale
    y = label(pts).reshape(2, len(rows))
    for side, sign in ((0, 1.0), (1, -1.0)):
      flip = rows[y[side] == 0]
      direction[flip], hi[flip], open_[flip] = sign, scale, False
    lo[open_] = scale
    scale *= 2.0
  found = np.flatnonzero(~open_)
  if not found.size:
    raise ExtractionError("lowd_meek: no feature changes the label within max_stretch box widths")

  def ask_feature(rows, t):
    pts = np.repeat(q[None], len(rows), axis=0)
    pts[np.arange(len(rows)), found[rows]] += direction[found[rows]] * t
    return label(pts)

  lo_f, hi_f = _bisect(
    ask_feature, lo[found], hi[found], np.ones(len(found), np.int64), lambda lo, hi: hi - lo <= cfg.epsilon * hi
  )
  w = np.zeros(d)
  w[found] = -1.0 / (direction[found] * 0.5 * (lo_f + hi_f))  # margin m = 1: the common positive scale
  b = -float(w @ x_b)
  norm = np.linalg.norm(w)
  stats = dict(
    witness_queries=witnesses,
    boundary_queries=boundary,
    feature_queries=ask.queries - witnesses - boundary,
    zero_weights=int(d - found.size),
  )
  return Halfspace(w / norm, b / norm, ask.queries, stats)
