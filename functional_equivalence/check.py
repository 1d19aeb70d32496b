"""The end of the attack: the final check over the domain, lines towards where it failed, the per-unit table.

Float64 numpy. The check's error at a point is relative to the largest |g| among the checked points at about the
same distance from the domain's center (where g happens to be ~0 far out, the recovery's error still scales with
|x|).
"""

from __future__ import annotations

import numpy as np

from functional_equivalence import recover
from functional_equivalence.victims import TwoLayerNet


def lines_towards_center(points: np.ndarray, dom, scale: float, rng):
  """Lines through points where the check failed, towards the domain's center (a point where the recovery is
  wrong is on the active side of a missed unit; if the center is not, the line crosses its hyperplane)."""
  d = points.shape[1]
  dirs = dom.center(d) - points
  dirs *= scale * np.sqrt(d) / (np.linalg.norm(dirs, axis=1, keepdims=True) + 1e-300)
  return points, dirs + 0.1 * scale * rng.normal(size=dirs.shape)


def unit_table(units: recover.Units, layer2, dom, stats) -> dict:
  """Per hidden unit of the result: kind, estimated relative row error, max effect on the domain (max over the
  domain of |w1_i| relu(z_i), in logit units) and whether that effect is below the oracle's precision there (the
  precision floor: 2^-probe_bits times the largest |g| of the final check), and the kinks without a measurable jump
  whose bound is below that floor (negligible units that were not recovered)."""
  n = len(units)
  kind = ["unit"] * n + ["twin"] * layer2.paired + ["linear"] * layer2.linear
  twin_of = (
    np.argmax(np.abs(layer2.u[n : n + layer2.paired] @ units.u.T), axis=1) if layer2.paired else np.zeros(0, int)
  )
  err = np.concatenate([units.err, units.err[twin_of], np.zeros(layer2.linear)])
  zmax = np.maximum(dom.max_affine(layer2.u, layer2.beta), 0.0)
  effect = np.max(np.abs(layer2.w1), axis=1) * zmax
  floor = stats["check_max_abs_g"] * 2.0 ** -stats["probe_bits"]
  lost = np.array(stats["lost_kink_bounds"])
  return dict(
    kind=kind,
    row_error=err.tolist(),
    effect=effect.tolist(),
    negligible=(effect <= floor).tolist(),
    precision_floor=float(floor),
    negligible_lost_kinks=int(np.sum(lost <= floor)),
    negligible_lost_bound=float(np.max(lost[lost <= floor], initial=0.0)),
  )


def final_check(q, net: TwoLayerNet, layer2, dom, scale: float, count: int, rtol: float, rng, differences: bool):
  """The final check: the recovered g against the oracle at fresh points that cover the domain (64 near the
  center, `count` over the domain, and for every recovered hyperplane that meets the domain 2 of its points
  inside it, each on the hyperplane and +-1e-3 scale beside it); see `compare`. Returns (stats, the points above
  rtol, worst first)."""
  d = net.w0.shape[0]
  on, which = dom.hyperplane_points(layer2.u, layer2.beta, rng, 2)
  side = 1e-3 * scale * layer2.u[which]
  return compare(
    q,
    on,
    side,
    lambda x: np.maximum(x @ net.w0 + net.b0, 0) @ net.w1 + net.b1,
    dom,
    scale,
    count,
    rtol,
    rng,
    differences,
    d,
  )


def compare(
  q, on, side, predict, dom, scale: float, count: int, rtol: float, rng, differences: bool, d: int, extra=None
):
  """The recovered logits `predict(x)` against the oracle at 64 points near the center, `count` over the domain,
  at the surface points `on` (k, d) and beside them (on +- side), and at the points `extra` if given. Per point the
  error is relative to the largest |g| among the checked points at about the same distance from the center (the
  same power of 2 of |x - center| + scale: where g happens to be ~0 far out, the recovery's error still scales with
  |x|). Returns (stats, the points above rtol, worst first)."""
  center = dom.center(d)
  x = np.concatenate(
    [center + scale * rng.normal(size=(64, d)), dom.check_points(rng, d, count), on, on + side, on - side]
    + ([] if extra is None else [extra])
  )
  g = q(x, "final check", underflow_ok=True)
  mine = predict(x)
  if differences:
    mine = mine[:, 1:] - mine[:, :1]
  seen = np.all(np.isfinite(g), axis=1)
  size = np.max(np.abs(g[seen]), axis=1)
  shell = np.floor(np.log2(np.linalg.norm(x[seen] - center, axis=1) + scale)).astype(int)
  ref = np.zeros(len(size))
  for b in np.unique(shell):
    ref[shell == b] = np.max(size[shell == b])
  diff = np.max(np.abs(mine[seen] - g[seen]), axis=1)
  rel = diff / (ref + 1e-300)
  err = float(np.max(rel))
  order = np.argsort(-rel)
  bad = x[seen][order[rel[order] > rtol]]
  return dict(
    check_error=err,
    check_max_abs_error=float(np.max(diff)),
    check_points=int(len(x)),
    check_skipped_underflow=int(np.sum(~seen)),
    check_max_abs_g=float(np.max(size)),
  ), bad
