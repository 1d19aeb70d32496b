"""Signatures of a layer whose input features outnumber the network's inputs at a kink (float64 numpy).

`layer.measure` reads a unit's partial signature w_A (its weights on the prefix features A active at a kink) from
derivatives along input directions that move one active feature at a time: that needs |A| <= d, the input
dimension. Where more features are active than there are inputs (iris-trained 4-16-16-3: ~8 of 16 first-layer
units on at a point of a 4-dimensional input) the Jacobian jump gives only the unit's normal in input space,
s ~ P_A w_A (P_A = d h_A / dx, d x |A|): d numbers for |A| unknowns, and such kinks were dropped.

Here the unit's surface is followed instead (Carlini et al. 2020's hyperplane following, with no weight known yet):
from a kink, walk (offline) along its local plane to the nearest prefix surface, step just across it, find the
kink again on a short line along the old normal (the surface is continuous: it bends there and goes on) and measure
its new normal; a kink whose plane does not pass through the point where the old plane meets that prefix surface
is another unit's, and refused. Each visited region k gives P_k w = lambda_k s_k (d equations, one new unknown)
and each kink h(x_k) . w + b = 0, all linear in (w, b, lambda): once the stacked system has a one-dimensional
null space, with every kink left out in turn too (`solve`), that null vector is the unit's signature on every
feature seen active (the others are left to `layer.complete`). Weights that satisfy every equation with all
lambda 0 (features on at every kink whose sum is constant there) are no unit and are projected out first
(`_analyse`); the walk aims at
the features that cause them or that were seen on (or off) at fewer than two kinks. A surface that is not one
unit of this layer (a deeper unit's, which also bends at this layer's unknown hyperplanes, or a kink of another
unit latched onto) leaves the system inconsistent: the kink without which it is consistent is dropped, and a
follow that keeps failing gives nothing. The result is an ordinary item (w on its known features, b, err, c) for
`layer._round`'s matching and acceptance tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from functional_equivalence import recover, search
from functional_equivalence.deep import network
from functional_equivalence.deep.layer import last_grad, prefix_distance, surface_tol, wall_distances
from functional_equivalence.errors import OraclePrecisionError

NF = recover.NOISE_FACTOR


@dataclasses.dataclass
class Followed:
  """A signature read by following a surface: w (n_in,) of norm 1 on `known`, bias b, relative error err, output
  jump c at the first kink for w as stored, the kinks visited (k, d), and (following with `affine`) the affine
  term v (d,) of its pre-activation beside w . h(x) + b."""

  w: np.ndarray
  known: np.ndarray
  b: float
  err: float
  c: np.ndarray
  points: np.ndarray
  v: np.ndarray | None = None


def wide(prefix: network.DeepNet, active: np.ndarray) -> np.ndarray:
  """True where a point's active prefix features (N, n_in) outnumber the inputs (and the prefix is not empty)."""
  if not prefix.weights:
    return np.zeros(len(active), bool)
  return active.sum(axis=1) > prefix.weights[0].shape[0]


def normal_at(q, prefix, x, v, room: float, cfg, rng, stats):
  """(s (d,) unit normal in input space, c (m,) output jump for s, relative error) of the one surface the line
  x + t v crosses at the kink x, from full input Jacobians a little way each side (inside the kink's prefix region
  and within `room`, the distance to the line's next kink); None when they do not give one rank-one jump."""
  d = len(x)
  center = cfg.center
  v = v / np.linalg.norm(v)
  f = network.features(prefix, x[None])
  half = 0.25 * min(room, float(prefix_distance(f)[0]))
  if not half > 0:
    return None
  reach = max(cfg.scale, float(np.linalg.norm(x - center)) / np.sqrt(d))
  sides = np.stack([x - half * v, x + half * v])
  q0 = q.queries
  jac, ok, _, nz = recover.gradients(q, sides, np.full(2, min(cfg.grad_step * reach, 0.25 * half)), rng)
  stats["follow_queries"] = stats.get("follow_queries", 0) + q.queries - q0
  if not ok.all():
    return None
  jump = jac[1] - jac[0]
  noise = recover.jump_noise(nz[:1], nz[1:], jump.shape[0], d)
  units, good = recover.units_from_jumps(jump[None], v[None], x[None], noise)
  if not good[0]:
    return None
  return units.u[0], units.c[0], max(float(units.err[0]), 1e-13)


def _analyse(
  f: network.Features, pts: np.ndarray, normals: np.ndarray, tol: float, seen=None, drop=None, affine: bool = False
):
  """The stacked system of the kinks `pts` (k, d), their prefix features f, with normals (k, d) over the features
  `seen` (default: those
  active at some kink), without kink `drop`: (status, seen, null vector (w on seen, [v,] b, lambda per kept
  kink)); with `affine` the unit's pre-activation may hold an affine term v . x besides (`wide_signs`), and a
  feature on at every kink is not seen (it is affine there: its weight is folded into v and b).

  Columns are scaled to norm 1 (the vector scaled back). Some (w, b) satisfy every equation with all lambda 0:
  weights on features on at every kink whose sum is constant there (5 features always on in 4 inputs leave one).
  They are no unit, and they make the unit's own weights undetermined: the system is then solved on their
  orthogonal complement, so that a kink off the unit's surface still shows as a residual, and the status is at
  best "more". Status: "inconsistent" (no null vector within the noise `tol`), "settled" (one, the next singular
  value 100 times above it) or "more"."""
  if seen is None:
    on = f.h > 0
    # with an affine term, a feature on at every kink is affine there too: its weight is part of v (not known)
    seen = np.flatnonzero(on.any(axis=0) & ~(affine & on.all(axis=0)))
  keep = [i for i in range(len(pts)) if i != drop]
  k, d, u = len(keep), pts.shape[1], len(seen)
  e = u + (d if affine else 0)  # the columns before b
  a = np.zeros((k * d + k, e + 1 + k))
  hn = np.linalg.norm(f.h, axis=1) + 1.0
  for r, i in enumerate(keep):
    a[r * d : (r + 1) * d, :u] = f.jac[i][:, seen]
    a[r * d : (r + 1) * d, e + 1 + r] = -normals[i]
    a[k * d + r, :u] = f.h[i, seen] / hn[i]
    a[k * d + r, e] = 1.0 / hn[i]
    if affine:
      a[r * d : (r + 1) * d, u:e] = np.eye(d)
      a[k * d + r, u:e] = pts[i] / hn[i]
  scale = np.linalg.norm(a, axis=0)
  scale = np.where(scale > 0, scale, 1.0)
  a = a / scale
  _, sv0, vt0 = np.linalg.svd(a[:, : e + 1], full_matrices=True)
  rank = int(np.sum(sv0 > 1e-10 * sv0[0])) if len(sv0) else 0
  basis = vt0[:rank].T  # (e + 1, rank): the complement of the weights that are no unit
  reduced = np.concatenate([a[:, : e + 1] @ basis, a[:, e + 1 :]], axis=1)
  _, sv, vt = np.linalg.svd(reduced, full_matrices=True)
  sv = np.concatenate([sv, np.zeros(max(0, reduced.shape[1] - len(sv)))])
  if sv[-1] > 1e3 * tol * sv[0]:
    return "inconsistent", seen, None
  if rank < e + 1 or sv[-2] < 100 * max(sv[-1], tol * sv[0]):
    return "more", seen, None
  v = np.concatenate([basis @ vt[-1, :rank], vt[-1, rank:]]) / scale
  return "settled", seen, v


def solve(prefix, pts: np.ndarray, normals: np.ndarray, errs, c0: np.ndarray, affine: bool = False):
  """("more" | "inconsistent" | "settled", Followed or None) for the kinks `pts` (k, d) with measured normals
  (k, d) (module docstring). Settled: one null vector within the normals' noise, with every kink left out in turn
  too (each kink's equations are implied by the others': one on another unit's surface leaves them inconsistent,
  whichever features it alone shows), and the unit's normal not 0 at any kink."""
  tol = max(NF * max(errs), 1e-10)
  f = network.features(prefix, pts)
  status, seen, v = _analyse(f, pts, normals, tol, affine=affine)
  if status != "settled":
    return status, None
  for i in range(len(pts)):
    if _analyse(f, pts, normals, tol, seen, drop=i, affine=affine)[0] != "settled":
      return "more", None
  d, n_in = pts.shape[1], f.h.shape[1]
  u = len(seen)
  e = u + (d if affine else 0)
  w = np.zeros(n_in)
  w[seen] = v[:u]
  norm = np.linalg.norm(w)
  lam = v[e + 1 :] / norm if norm > 0 else np.zeros(1)
  if not np.all(np.abs(lam) > 1e-6 * np.abs(lam).max()):
    return "more", None
  known = np.zeros(n_in, bool)
  known[seen] = True
  found = Followed(w / norm, known, float(v[e] / norm), max(errs), c0 / lam[0], pts)
  if affine:
    found.v = v[u:e] / norm
  return "settled", found


def culprit(prefix, pts: np.ndarray, normals: np.ndarray, errs, affine: bool = False) -> int | None:
  """The one kink (the latest first) without which an inconsistent system is consistent, or None."""
  tol = max(NF * max(errs), 1e-10)
  f = network.features(prefix, pts)
  for i in reversed(range(len(pts))):
    if _analyse(f, pts, normals, tol, drop=i, affine=affine)[0] != "inconsistent":
      return i
  return None


def _step(q, prefix, x, s, cfg, rng, stats, target: int | None = None, err: float = 1e-13):
  """From the kink x on a surface of normal s (relative error `err`), the kink of the same surface just across
  the nearest prefix surface along a direction of its local plane (random, or lowering feature `target`), and its
  normal: (x', s', err) or None (also when the kink found is not on a plane through the point where the old one
  meets that prefix surface: another unit's)."""
  d = len(x)
  center = cfg.center
  if target is None:
    tau = rng.normal(size=d)
  else:  # lower the feature where it is on, raise it where it is off
    on = network.feature_values(prefix, x[None])[0, target] > 0
    tau = (-1.0 if on else 1.0) * last_grad(prefix, x)[:, target]
  tau -= (tau @ s) * s
  if not np.linalg.norm(tau) > 0:
    return None
  tau /= np.linalg.norm(tau)
  dist = np.sort(wall_distances(prefix, network.features(prefix, x[None]), x, tau)[0])
  if not np.isfinite(dist[0]):
    return None
  reach = cfg.scale + float(np.linalg.norm(x + dist[0] * tau - center))
  if reach > min(cfg.far, cfg.radius):
    return None
  delta = min(0.5 * (dist[1] - dist[0]) if len(dist) > 1 else np.inf, 0.05 * reach)
  x1 = x + (dist[0] + delta) * tau
  q0 = q.queries
  for width in (4 * delta, 64 * delta):
    try:
      kinks = search.find_kinks(q, x1[None], s[None], np.array([[-width, width]]), pieces=4, max_intervals=16)
    except OraclePrecisionError:
      kinks = None
    if kinks is not None and len(kinks.t):
      xs = x1 + kinks.t[:, None] * s
      cand = np.flatnonzero(prefix_distance(network.features(prefix, xs)) > surface_tol(cfg, xs))
      if len(cand):
        j = cand[np.argmin(np.abs(kinks.t[cand]))]
        gaps = np.abs(np.delete(kinks.t, j) - kinks.t[j])
        room = min(gaps.min() if len(gaps) else np.inf, width - abs(kinks.t[j]))
        stats["follow_queries"] = stats.get("follow_queries", 0) + q.queries - q0
        measured = normal_at(q, prefix, xs[j], s, room, cfg, rng, stats)
        if measured is None:
          return None
        # the unit's surface is continuous: its plane in the new region passes through the point where its old
        # plane meets the prefix surface crossed; another unit's kink found on the line does not (measured on
        # 3-12-6-1: ~1e-10 of the distance against 0.1-1, about half the steps of a layer search). Refused too:
        # the same unit's kink in a region past that one (the line crossed another prefix surface): a step lost
        wall = x + dist[0] * tau
        gap = max(float(np.linalg.norm(xs[j] - wall)), cfg.scale)
        if abs(measured[0] @ (xs[j] - wall)) > 1e3 * NF * max(measured[2], err) * gap + 1e-9 * reach:
          stats["follow_switches"] = stats.get("follow_switches", 0) + 1
          return None
        return xs[j], measured[0], measured[2]
  stats["follow_queries"] = stats.get("follow_queries", 0) + q.queries - q0
  return None


def follow(
  q, prefix, x0, s0, c0, err0: float, cfg, rng, stats, regions: int | None = None, affine: bool = False
) -> Followed | None:
  """The signature of the surface through the kink x0 (normal s0, output jump c0 for s0), followed across prefix
  regions (module docstring) until it settles, or None after `regions` steps (default: enough for every feature
  of the layer before, four times over); with `affine`, with an affine term beside (`wide_signs`): a signature
  settled with features still on at every kink (their weights folded into the affine term) is returned only
  when the walk, aiming to turn them off, settles no other within its steps."""
  d = len(x0)
  if d < 2:
    return None  # a point has no plane to walk along
  n_in = prefix.weights[-1].shape[1]
  regions = regions or 4 * (int(np.ceil(n_in / (d - 1))) + 2)
  pts, normals, errs = [x0], [s0], [err0]
  x, s, e = x0, s0, err0
  target, target_was, steps = None, None, 0
  fallback = None  # with `affine`: a settled signature that still has features always on
  for _ in range(regions):
    q.check("follow")
    # features on at every kink so far, more than d + 1 of them, leave the weights undetermined (`_analyse`), and a
    # feature seen on (or off) at fewer than two kinks is not yet implied by the others' equations: walk until
    # one such feature turns over, then choose again; with `affine`, now and then a feature never on yet (its
    # weight then enters the affine term's equations, wide_signs)
    on = network.feature_values(prefix, np.array(pts)) > 0
    now = network.feature_values(prefix, x[None])[0] > 0
    if target is None or now[target] != target_was or steps > 8:
      always = np.flatnonzero(on.all(axis=0))
      short = np.flatnonzero(on.any(axis=0) & (np.minimum(on.sum(axis=0), (~on).sum(axis=0)) < 2))
      pool = always if len(always) > (0 if affine else d + 1) else short
      if affine and rng.random() < 0.25:
        pool = np.flatnonzero(~on.any(axis=0))
      target = int(rng.choice(pool)) if len(pool) else None
      target_was, steps = (bool(now[target]) if target is not None else None), 0
    steps += 1
    nxt = _step(q, prefix, x, s, cfg, rng, stats, target, e)
    if nxt is not None:
      pts.append(nxt[0])
      normals.append(nxt[1])
      errs.append(nxt[2])
      status, found = solve(prefix, np.array(pts), np.array(normals), errs, c0, affine)
      if status == "inconsistent":
        bad = culprit(prefix, np.array(pts), np.array(normals), errs, affine)
        if bad is None or bad == 0:  # the kink it started from is the odd one, or no single one is
          return None
        for group in (pts, normals, errs):
          del group[bad]
      elif status == "settled" and affine and always_on(prefix, found).any():
        fallback = found  # its always-on features' weights are in v: walk on to see them turn off
        x, s, e = nxt
        continue
      elif status == "settled":
        stats["followed_units"] = stats.get("followed_units", 0) + 1
        return found
      else:
        x, s, e = nxt
        continue
    j = int(rng.integers(len(pts)))  # no step, or one off the surface: walk again from a kink already on it
    x, s, e = pts[j], normals[j], errs[j]
  if fallback is not None:
    stats["followed_units"] = stats.get("followed_units", 0) + 1
  return fallback


def always_on(prefix, found: Followed) -> np.ndarray:
  """(n_in,) the features on at every kink of a followed surface and so not seen (`_analyse` with `affine`):
  affine along it, their weights are part of its affine term, whatever their signs."""
  return ~found.known & np.all(network.feature_values(prefix, found.points) > 0, axis=0)
