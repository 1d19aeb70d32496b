"""Critical-point search: the kinks of t -> g(u + t v) on random lines, by a batched bisection.

g is piecewise linear along a line; a kink (critical point) is where one hidden unit's pre-activation crosses
zero. Every interval [ta, tb] of every line is processed at once per level (one oracle call for all):
  * slopes at both ends are measured with a step eta = 1e-3 (tb - ta) inside the interval;
  * if g(mid) and g(tb) lie on the line through ta, the interval holds no kink (a cancellation of two kinks
    would need two k-vectors of slope jumps to cancel exactly: a null event);
  * otherwise the lines from both ends intersect at t*; if g just left of t* lies on the left line, g just right
    of t* on the right line (t* +- delta, delta ~ 1e-8 (tb - ta) or 100 tolerances / slope jump: a cluster of
    kinks within +-delta would pass for one) and g(mid) on its side's line, the interval holds exactly one kink, at t*
    (to the accuracy of the float64 values, not of any grid; the checks beside t* matter for one output, where
    g(t*) itself would always match);
  * otherwise it is split in two at the midpoint.
The number of levels, of live intervals and of queries is bounded, so a noisy or smooth g ends with an error.
Precision: float64; tolerances are relative (`rtol`) to the magnitude of g and of slope * width on the interval.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from functional_equivalence.errors import OraclePrecisionError
from functional_equivalence.queries import Querier


class Kinks(NamedTuple):
  """Critical points found: line index and position t on it (sorted by line, then t), plus the number of
  intervals left unresolved at the deepest level and the queries spent."""
  line: np.ndarray
  t: np.ndarray
  unresolved: int
  queries: int


def _points(starts, dirs, line, t):
  """Inputs u_line + t * v_line for arrays `line`, `t` of one shape S: returns S + (d,)."""
  return starts[line] + t[..., None] * dirs[line]


def _close(a, b, tol):
  """All outputs of a and b (..., m) agree within tol (...,)."""
  return np.all(np.abs(a - b) <= tol[..., None], axis=-1)


def find_kinks(query: Querier, starts: np.ndarray, dirs: np.ndarray, t_max, *, pieces: int = 8,
               rtol: float = 1e-10, max_depth: int | None = None, max_intervals: int = 4096,
               far: float | None = None, center=None) -> Kinks:
  """Finds the kinks of g along the lines starts[l] + t dirs[l], t in [-t_max, t_max].

  Long lines cost little more than short ones: an interval without a kink is dropped at the first level that
  sees it whole, so far out the search stays coarse and only intervals where g bends are refined (each level
  that halves the range around a cluster of kinks costs ~5 queries).

  Args:
    query: the attack's Querier (float64 g).
    starts, dirs: (L, d) float64 points and directions of the lines.
    t_max: half-length of the searched range of t (float), or per-line ranges (L, 2) of [t_low, t_high].
    pieces: initial equal pieces per line (each is one interval of the first level).
    rtol: relative tolerance of the collinearity tests (float64 rounding is ~1e-13 relative here).
    max_depth: most bisection levels (default: down to widths of ~2^-43 in t, as 44 levels from |t| <= 8).
    max_intervals: most live intervals per line at one level (a line crosses each hidden unit's hyperplane at most
      once, so more means more than ~max_intervals units or a g that is not exactly piecewise linear).
    far, center: when the live intervals pass max_intervals, those lying wholly further than `far` from `center`
      (default 0) are given up first (counted in `unresolved`): far outside the domain g's rounding grows like
      eps |x| |J|, which the tolerances (relative to |g| and to the slope along the line) cannot always see, e.g.
      on a line nearly parallel to a far hyperplane.
  Returns:
    Kinks. Raises OraclePrecisionError when the live intervals explode (noise) and LimitReachedError (from the
    Querier) when the attack's limits are reached.
  """
  used0 = query.queries
  n_lines = len(starts)
  ranges = np.broadcast_to(np.array([-t_max, t_max], float) if np.ndim(t_max) == 0 else np.asarray(t_max, float),
                           (n_lines, 2))
  if max_depth is None:
    max_depth = 44 + max(0, int(np.ceil(np.log2(np.max(ranges[:, 1] - ranges[:, 0]) / pieces / 2))))
  grid = ranges[:, :1] + (ranges[:, 1:] - ranges[:, :1]) * np.linspace(0, 1, pieces + 1)[None]   # (L, pieces+1)
  line0 = np.repeat(np.arange(n_lines), pieces + 1)
  g0 = query(_points(starts, dirs, line0, grid.reshape(-1)), "critical-point search")
  g0 = g0.reshape(n_lines, pieces + 1, -1)
  # g's rounding is relative to the terms it sums, ~ eps |x| |J|, not to |g| where units cancel: |J| per line is
  # estimated from the first grid (max |g| / |x| over it)
  x0 = np.linalg.norm(_points(starts, dirs, line0, grid.reshape(-1)), axis=-1).reshape(n_lines, pieces + 1)
  jac_est = np.max(np.max(np.abs(g0), axis=-1) / (x0 + 1e-300), axis=1)
  line = np.repeat(np.arange(n_lines), pieces)
  ta, tb = grid[:, :-1].reshape(-1), grid[:, 1:].reshape(-1)
  ga, gb = g0[:, :-1].reshape(len(line), -1), g0[:, 1:].reshape(len(line), -1)
  found_line, found_t = [], []
  given_up = 0
  for _ in range(max_depth):
    if len(line) == 0:
      break
    if len(line) > max_intervals * n_lines and far is not None:
      c = np.zeros(starts.shape[1]) if center is None else center
      near = np.minimum(np.linalg.norm(_points(starts, dirs, line, ta) - c, axis=-1),
                        np.linalg.norm(_points(starts, dirs, line, tb) - c, axis=-1)) <= far
      near |= (ta < 0) & (tb > 0)                                          # an interval around the line's base
      given_up += int(np.sum(~near))
      line, ta, tb, ga, gb = line[near], ta[near], tb[near], ga[near], gb[near]
      if len(line) == 0:
        break
    if len(line) > max_intervals * n_lines:
      width = float(np.min((tb - ta) / (ranges[line, 1] - ranges[line, 0])))
      raise OraclePrecisionError(
          f"precision reached: 2^{np.log2(width):.0f} (relative interval width) in the critical-point search: "
          f"{len(line)} intervals on {n_lines} line(s) still hold inconsistent slopes, so g is not exactly "
          f"piecewise linear at float64 precision (noisy or rounded oracle?)", precision_bits=-np.log2(width))
    w = tb - ta
    eta, mid = 1e-3 * w, 0.5 * (ta + tb)
    ts = np.stack([ta + eta, tb - eta, mid])
    g3 = query(_points(starts, dirs, np.broadcast_to(line, ts.shape), ts).reshape(-1, starts.shape[1]),
               "critical-point search").reshape(3, len(line), -1)
    sa, sb, gm = (g3[0] - ga) / eta[:, None], (gb - g3[1]) / eta[:, None], g3[2]
    mag = np.max(np.maximum(np.maximum(np.abs(ga), np.abs(gb)), np.abs(gm)), axis=-1)
    mag = np.maximum(mag, w * np.max(np.maximum(np.abs(sa), np.abs(sb)), axis=-1))
    mag = np.maximum(mag, 0.1 * jac_est[line] * np.linalg.norm(_points(starts, dirs, line, mid), axis=-1))
    tol = rtol * mag
    flat = _close(gm, ga + sa * (mid - ta)[:, None], tol) & _close(gb, ga + sa * w[:, None], tol)
    ds = sa - sb
    with np.errstate(divide="ignore", invalid="ignore"):
      tstar = ta + np.sum(ds * (gb - sb * w[:, None] - ga), -1) / np.sum(ds * ds, -1)
    # t* right at the end of a slope window is what a kink inside that window gives: split those instead
    cand = ~flat & np.isfinite(tstar) & (tstar > ta + 2 * eta) & (tstar < tb - 2 * eta)
    # the checks beside t* accept any cluster of kinks within +-delta of t* as one kink, so delta must be far
    # below the interval (eta is not, on long lines), yet |ds| delta must stand well above the tolerance
    with np.errstate(divide="ignore", invalid="ignore"):
      delta = np.minimum(eta, np.maximum(1e-8 * w, 100 * tol / np.sqrt(np.sum(ds * ds, -1))))
    single = np.zeros_like(cand)
    if np.any(cand):
      i = np.flatnonzero(cand)
      near = np.stack([tstar[i] - delta[i], tstar[i] + delta[i]])      # just left and right of t*
      gn = query(_points(starts, dirs, np.broadcast_to(line[i], near.shape), near).reshape(-1, starts.shape[1]),
                 "critical-point search").reshape(2, len(i), -1)
      at_mid_a = mid[i] <= tstar[i]
      single[i] = (_close(gn[0], ga[i] + sa[i] * (near[0] - ta[i])[:, None], tol[i])
                   & _close(gn[1], gb[i] + sb[i] * (near[1] - tb[i])[:, None], tol[i])
                   & np.where(at_mid_a, _close(gm[i], ga[i] + sa[i] * (mid[i] - ta[i])[:, None], tol[i]),
                              _close(gm[i], gb[i] + sb[i] * (mid[i] - tb[i])[:, None], tol[i])))
    found_line.append(line[single])
    found_t.append(tstar[single])
    split = ~flat & ~single
    line = np.concatenate([line[split], line[split]])
    ta, tb = np.concatenate([ta[split], mid[split]]), np.concatenate([mid[split], tb[split]])
    ga, gb = np.concatenate([ga[split], gm[split]]), np.concatenate([gm[split], gb[split]])
  line_all = np.concatenate(found_line) if found_line else np.zeros(0, int)
  t_all = np.concatenate(found_t) if found_t else np.zeros(0)
  order = np.lexsort((t_all, line_all))
  return Kinks(line_all[order], t_all[order], int(len(line)) + given_up, query.queries - used0)
