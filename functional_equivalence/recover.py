"""From critical points to hidden units: rows of A0 from gradient jumps, biases and output vectors sharpened along
each row, duplicates. (Signs and the second layer: second_layer.py.)

Notation: a hidden unit contributes c * relu(u . x + beta) to g, with |u| = 1 (the true row a = lambda u, lambda > 0,
and c = lambda * A1[:, unit]). Before the sign step a recovered unit is (u_hat, beta_hat, c_hat) with
u_hat = s u, beta_hat = s beta for an unknown sign s = +-1, and c_hat = c exactly (the slope jump across a kink
is c whatever the orientation). Everything is float64 numpy, batched over units / regions.

Precision is tracked per unit: `Units.err` estimates the relative error of the row u (and so of beta / |x|) from the
rounding noise of the Jacobians it was measured with (about eps_64 |g| / step per entry) against the size of the
unit's jump |c|. A unit with small output weights is therefore measured less precisely, not rejected; the tests
that tell kinks apart (rank one, same hyperplane, duplicates) allow each unit its own error.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from functional_equivalence.queries import Querier

EPS = np.finfo(np.float64).eps
NOISE_FACTOR = 16.0  # measured singular values of pure rounding noise stay below ~4x the estimate `jump_noise`


class Units(NamedTuple):
  """Recovered hidden units: rows u (n, d) of unit norm, biases beta (n,), output vectors c (n, m), and the
  estimated relative error err (n,) of each row (see module docstring)."""

  u: np.ndarray
  beta: np.ndarray
  c: np.ndarray
  err: np.ndarray

  def __len__(self):
    return len(self.beta)


def empty_units(d: int, m: int) -> Units:
  return Units(np.zeros((0, d)), np.zeros(0), np.zeros((0, m)), np.zeros(0))


def concat_units(a: Units, b: Units) -> Units:
  return Units(*(np.concatenate([x, y]) for x, y in zip(a, b)))


def gradients(
  query: Querier,
  points: np.ndarray,
  eps: np.ndarray,
  rng: np.random.Generator,
  retries: int = 3,
  chunk: int = 1 << 22,
  dirs=None,
):
  """Jacobians of g at `points` (R, d) by forward differences along every basis direction (d + 2 queries each),
  or along the given directions `dirs` (R, r, d) (r + 2 queries each: the derivatives along them, e.g. along
  directions that move one hidden feature of a deep network's known prefix at a time).

  g is linear around each point, so the differences are exact up to rounding unless a step crosses a critical
  hyperplane; one extra query along a random direction (a random combination of `dirs`) checks that (a crossing
  makes it disagree), and failed points are measured again with a step 8 times smaller, at most `retries` times.
  Returns:
    (G (R, m, d or r), ok (R,) bool, steps (R,) finally used, noise (R,)): noise = eps_64 max|g| / step, the scale
    of the rounding error of each entry of G.
  """
  n, d = points.shape
  if n == 0:
    raise ValueError("gradients: no points")
  G, ok, eps = None, np.zeros(n, bool), eps.astype(np.float64).copy()
  noise = np.zeros(n)
  todo = np.arange(n)
  r = d if dirs is None else dirs.shape[1]
  for _ in range(retries + 1):
    per = max(1, chunk // (d * (r + 2)))
    for lo in range(0, len(todo), per):
      idx = todo[lo : lo + per]
      p, e = points[idx], eps[idx]
      if dirs is None:
        w = rng.normal(size=p.shape)
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        coef, step_dirs, dir_norm = w, np.eye(d)[None], np.ones((1, d))
      else:
        coef = rng.normal(size=(len(idx), r))
        coef /= np.linalg.norm(coef, axis=1, keepdims=True)
        step_dirs = dirs[idx]
        w, dir_norm = np.einsum("nr,nrd->nd", coef, step_dirs), np.linalg.norm(step_dirs, axis=2)
      steps = p[:, None, :] + e[:, None, None] * step_dirs
      x = np.concatenate([p, steps.reshape(-1, d), p + e[:, None] * w])
      y = query(x, "gradients")
      g0, gj, gw = y[: len(idx)], y[len(idx) : -len(idx)].reshape(len(idx), r, -1), y[-len(idx) :]
      jac = np.swapaxes(gj - g0[:, None, :], 1, 2) / e[:, None, None]
      if G is None:
        G = np.zeros((n,) + jac.shape[1:])
      G[idx] = jac
      # rounding is relative to the terms summed, ~ |x| |J| (large near a far hyperplane where g is ~0)
      mag = np.maximum(np.max(np.abs(g0), -1), np.max(np.abs(gj), axis=(1, 2)))
      if dirs is None:
        mag = np.maximum(mag, np.linalg.norm(p, axis=1) * np.max(np.linalg.norm(jac, axis=2), axis=1))
      else:  # x-space slopes: derivative along a direction over that direction's length
        mag = np.maximum(mag, np.linalg.norm(p, axis=1) * np.max(np.linalg.norm(jac, axis=1) / dir_norm, axis=1))
      pred = g0 + e[:, None] * np.einsum("rmd,rd->rm", jac, coef)
      ok[idx] = np.all(np.abs(gw - pred) <= 64 * EPS * mag[:, None] * (np.sqrt(r) + 1), -1)
      noise[idx] = EPS * mag / e
    todo = np.flatnonzero(~ok)
    eps[todo] /= 8
    if len(todo) == 0:
      break
  return G, ok, eps, noise


def jump_noise(noise_left: np.ndarray, noise_right: np.ndarray, m: int, d: int) -> np.ndarray:
  """Expected spectral norm of the rounding error of G_right - G_left (m x d) from the two points' entry noise."""
  return np.hypot(noise_left, noise_right) * (np.sqrt(m) + np.sqrt(d))


def units_from_jumps(jumps: np.ndarray, line_dirs: np.ndarray, points: np.ndarray, noise=None, rank_tol: float = 1e-9):
  """Rows and biases from gradient jumps J = G_right - G_left (n, m, d) across kinks at `points` (n, d).

  J = c u^T up to sign; its top right singular vector is u_hat (oriented so u_hat . line_dir > 0) and
  beta_hat = -u_hat . point. `noise` (n,) is the jump's rounding noise (`jump_noise`; None: 0). A jump that is
  not rank one (second singular value > rank_tol * first + NOISE_FACTOR * noise) crossed two hyperplanes and is
  rejected, and so is one whose first singular value is within NOISE_FACTOR * noise (no measurable unit).
  Returns:
    (Units with err = max(s_2, noise) / s_1, ok (n,) bool).
  """
  _, s, vt = np.linalg.svd(jumps, full_matrices=False)
  noise = np.zeros(len(jumps)) if noise is None else np.asarray(noise, float)
  u = vt[:, 0, :]
  u *= np.where(np.sum(u * line_dirs, -1) < 0, -1.0, 1.0)[:, None]
  c = np.einsum("nmd,nd->nm", jumps, u)
  ok = s[:, 0] > NOISE_FACTOR * noise
  s2 = s[:, 1] if s.shape[1] > 1 else np.zeros(len(s))
  ok &= s2 <= rank_tol * s[:, 0] + NOISE_FACTOR * noise
  with np.errstate(divide="ignore", invalid="ignore"):
    err = np.where(s[:, 0] > 0, np.maximum(s2, noise) / s[:, 0], np.inf)
  return Units(u, -np.sum(u * points, -1), c, err), ok


def locate_kinks(
  query: Querier,
  x0: np.ndarray,
  dirs: np.ndarray,
  w: np.ndarray,
  slope: np.ndarray,
  rtol: float = 1e-10,
  stage: str = "refine",
  underflow_ok: bool = False,
):
  """The kink of g near each x0 (n, d) along unit directions dirs (n, d), within +-w (n,) (6 queries a point).
  With `underflow_ok`, a window where a probability underflows (NaN answers, queries.Querier) is not good.

  The lines through g on [-w, -w/2] and [w/2, w] intersect at s*; the kink is confirmed when |s*| < w/4 and g at
  s* -+ w/1024 lies on those lines (so no second kink within the window shows). `slope` (n,): the size of g's
  Jacobian, for the rounding of the terms g sums (~ |x| |J|).
  Returns:
    (s* (n,), good (n,) bool, ds (n, m) the slope jump across s*, mag (n,) the magnitude the tolerances used,
    flat (n,) bool: g is constant over the window to rounding (both slopes below it), so no kink of any unit can
    show there).
  """
  n, d = x0.shape
  s = np.stack([-w, -w / 2, w / 2, w])
  g = query((x0[None] + s[..., None] * dirs[None]).reshape(-1, d), stage, underflow_ok).reshape(4, n, -1)
  sl, sr = (g[1] - g[0]) / (w / 2)[:, None], (g[3] - g[2]) / (w / 2)[:, None]
  ds = sr - sl
  with np.errstate(divide="ignore", invalid="ignore"):
    st = np.sum(ds * (g[0] + sl * w[:, None] - g[3] + sr * w[:, None]), -1) / np.sum(ds * ds, -1)
  good = np.isfinite(st) & (np.abs(st) < w / 4)
  st = np.where(good, st, 0.0)
  near = np.stack([st - w / 1024, st + w / 1024])  # just left and right of s*
  gs = query((x0[None] + near[..., None] * dirs[None]).reshape(-1, d), stage, underflow_ok).reshape(2, n, -1)
  mag = np.max(np.abs(g), axis=(0, 2)) + w * np.max(np.abs(ds), -1)
  mag = np.maximum(mag, np.linalg.norm(x0, axis=1) * slope)  # terms ~ |x| |J|
  tol = rtol * mag[:, None]
  pa, pb = g[0] + sl * (near[0] + w)[:, None], g[3] + sr * (near[1] - w)[:, None]
  good &= np.all(np.abs(gs[0] - pa) <= tol, -1) & np.all(np.abs(gs[1] - pb) <= tol, -1)
  rounding = NOISE_FACTOR * 8 * EPS * mag * np.sqrt(g.shape[-1]) / w
  flat = (np.linalg.norm(sl, axis=-1) <= rounding) & (np.linalg.norm(sr, axis=-1) <= rounding)
  return st, good, ds, mag, flat


def refine(
  query: Querier,
  units: Units,
  scale: float,
  rng: np.random.Generator,
  center=None,
  kinks=None,
  rtol: float = 1e-10,
  tries: int = 8,
  agree: float = 1e-6,
):
  """Sharpens each unit's bias and output vector along its row, at a point x0 of its hyperplane.

  Along u from x0, g has one kink (s = 0) within +-w unless another hyperplane is that close; the lines through
  g on [-w, -w/2] and [w/2, w] intersect at the kink s*, confirmed by g at s* -+ w/1024 lying on them and by a
  slope jump within `agree` (relative, plus the rounding noise of both) of the unit's c (6 queries per unit per
  try). A failed try shrinks w 8-fold and moves x0 (first the point of the hyperplane nearest `center` (default
  0), then projections of random points near it), so a hyperplane passing by chance through x0 cannot hold up a
  unit. beta <- beta - s*, c <- slope jump. `kinks` (n, d): where the rows were measured (default: x0); the first
  window is wide enough for the hyperplane's error there, err |kink - x0|.
  Returns:
    (Units, ok (n,) bool, w (n,), x_k (n, d)): x_k lies on the unit's hyperplane, no other one crosses
    x_k + s u for w/1024 <= |s| <= w.
  """
  u, beta, c, err = (a.copy() for a in units)
  n, d = u.shape
  m = c.shape[1]
  center = np.zeros(d) if center is None else np.asarray(center, float)
  # beta_hat - beta ~ err |x_kink - x0|: an imprecise row (a unit with small output weights) starts wider
  x_near = center - (u @ center + beta)[:, None] * u
  moved = np.linalg.norm(kinks - x_near, axis=1) if kinks is not None else 0.0
  w = np.maximum(1e-2 * scale, 8 * NOISE_FACTOR * err * (moved + scale * np.sqrt(d)))
  ok = np.zeros(n, bool)
  xk = -beta[:, None] * u
  for attempt in range(tries):
    idx = np.flatnonzero(~ok)
    if len(idx) == 0:
      break
    ui, wi = u[idx], w[idx]
    # |x0| small keeps beta precise: beta_hat - beta = (u - u_hat) . x_k
    p = center + (scale * rng.normal(size=(len(idx), d)) / np.sqrt(d) if attempt else 0.0)
    x0 = p - (np.sum(ui * p, -1) + beta[idx])[:, None] * ui
    st, good, ds, mag, _ = locate_kinks(query, x0, ui, wi, np.linalg.norm(c[idx], axis=-1), rtol, "refine")
    rounding = NOISE_FACTOR * 8 * EPS * mag * np.sqrt(m) / wi
    cn = np.linalg.norm(c[idx], axis=-1)
    good &= np.linalg.norm(ds - c[idx], axis=-1) <= agree * np.linalg.norm(ds, axis=-1) + rounding + (
      NOISE_FACTOR * err[idx] * cn
    )
    good &= rounding <= 0.01 * cn  # a window so small that rounding hides c
    done = idx[good]
    beta[done] -= st[good]
    c[done] = ds[good]
    xk[done] = x0[good] + st[good, None] * ui[good]
    ok[done] = True
    w[idx[~good]] /= 8
  return Units(u, beta, c, err), ok, w, xk


def polish_rows(
  query: Querier,
  units: Units,
  xk: np.ndarray,
  w: np.ndarray,
  step: np.ndarray,
  rng: np.random.Generator,
  prefer_new: bool = False,
):
  """Measures rows again from the jump between xk +- (w/2) u (see `refine`) with finite-difference steps `step`
  (n,), for units whose first measurement had to use small steps (2 (d + 2) queries per unit).
  Keeps each unit's orientation; beta = -u_new . xk. A new row replaces the old one when it agrees with it within
  their errors and is more precise (with prefer_new, also when it is at most 4 times less precise or the old row
  is off it by more than the old error: with one output a jump across two hyperplanes is still rank one, so the
  first row may hold a small unit's jump that its error estimate cannot show, while the window beside x_k is free
  of other kinks). Returns (Units, ok (n,) bool)."""
  pts = np.concatenate([xk + (w / 2)[:, None] * units.u, xk - (w / 2)[:, None] * units.u])
  jac, ok, _, noise = gradients(query, pts, np.concatenate([step, step]), rng)
  n, m, d = len(units), units.c.shape[1], units.u.shape[1]
  new, ok_rank = units_from_jumps(jac[:n] - jac[n:], units.u, xk, jump_noise(noise[:n], noise[n:], m, d))
  close = np.linalg.norm(new.u - units.u, axis=-1) <= NOISE_FACTOR * (units.err + new.err) + 1e-6
  # with prefer_new, an old row off the new one by more than its own error was measured across a missed kink
  shifted = np.linalg.norm(new.u - units.u, axis=-1) > NOISE_FACTOR * units.err
  ok = (
    ok[:n] & ok[n:] & ok_rank & close & ((new.err < units.err) | (prefer_new & ((new.err <= 4 * units.err) | shifted)))
  )
  u = np.where(ok[:, None], new.u, units.u)
  return Units(u, -np.sum(u * xk, -1), units.c, np.where(ok, new.err, units.err)), ok


def same_hyperplane(units: Units, x: np.ndarray, tol: np.ndarray) -> np.ndarray:
  """For points x (p, d): True where x lies within distance tol (p,) of a known unit's hyperplane, widened by
  each unit's own error (NOISE_FACTOR * err * |x|)."""
  if len(units) == 0:
    return np.zeros(len(x), bool)
  slack = NOISE_FACTOR * units.err[None, :] * np.linalg.norm(x, axis=1)[:, None]
  return np.any(np.abs(x @ units.u.T + units.beta) <= tol[:, None] + slack, axis=1)


def dedup(units: Units, tol: float = 1e-7) -> Units:
  """Drops units whose hyperplane (u, beta) equals another's up to orientation (|u.u'| ~ 1, beta ~ +-beta', within
  tol plus both units' errors), keeping the most precise of each group."""
  order = np.argsort(units.err, kind="stable")
  units = Units(*(a[order] for a in units))
  cos = units.u @ units.u.T
  db = np.abs(units.beta[:, None] - np.sign(cos) * units.beta[None, :])
  e = tol + NOISE_FACTOR * (units.err[:, None] + units.err[None, :])
  match = (1 - np.abs(cos) <= np.minimum(e, 0.5) ** 2 / 2 + tol) & (db <= e * (1 + np.abs(units.beta[None, :])))
  keep = ~np.any(np.tril(match, -1), axis=1)
  return Units(*(a[keep] for a in units))
