"""From critical points to hidden units: rows of A0 from gradient jumps, biases and output vectors sharpened along
each row, duplicates. (Signs and the second layer: second_layer.py.)

Notation: a hidden unit contributes c * relu(u . x + beta) to g, with |u| = 1 (the true row a = lambda u, lambda > 0,
and c = lambda * A1[:, unit]). Before the sign step a recovered unit is (u_hat, beta_hat, c_hat) with
u_hat = s u, beta_hat = s beta for an unknown sign s = +-1, and c_hat = c exactly (the slope jump across a kink
is c whatever the orientation). Everything is float64 numpy, batched over units / regions.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from functional_equivalence.queries import Querier

EPS = np.finfo(np.float64).eps


class Units(NamedTuple):
  """Recovered hidden units: rows u (n, d) of unit norm, biases beta (n,), output vectors c (n, m)."""
  u: np.ndarray
  beta: np.ndarray
  c: np.ndarray

  def __len__(self):
    return len(self.beta)


def empty_units(d: int, m: int) -> Units:
  return Units(np.zeros((0, d)), np.zeros(0), np.zeros((0, m)))


def concat_units(a: Units, b: Units) -> Units:
  return Units(*(np.concatenate([x, y]) for x, y in zip(a, b)))


def gradients(query: Querier, points: np.ndarray, eps: np.ndarray, rng: np.random.Generator,
              retries: int = 3, chunk: int = 1 << 22):
  """Jacobians of g at `points` (R, d) by forward differences along every basis direction (d + 2 queries each).

  g is linear around each point, so the differences are exact up to rounding unless a step crosses a critical
  hyperplane; one extra query along a random direction checks that (a crossing makes it disagree), and failed
  points are measured again with a step 8 times smaller, at most `retries` times.
  Returns:
    (G (R, m, d), ok (R,) bool, steps (R,) finally used). Precision: entries err ~ eps_64 |g| / step.
  """
  n, d = points.shape
  if n == 0:
    raise ValueError("gradients: no points")
  G, ok, eps = None, np.zeros(n, bool), eps.astype(np.float64).copy()
  todo = np.arange(n)
  for _ in range(retries + 1):
    per = max(1, chunk // (d * (d + 2)))
    for lo in range(0, len(todo), per):
      idx = todo[lo:lo + per]
      p, e = points[idx], eps[idx]
      w = rng.normal(size=p.shape)
      w /= np.linalg.norm(w, axis=1, keepdims=True)
      steps = p[:, None, :] + e[:, None, None] * np.eye(d)[None]
      x = np.concatenate([p, steps.reshape(-1, d), p + e[:, None] * w])
      y = query(x, "gradients")
      g0, gj, gw = y[:len(idx)], y[len(idx):-len(idx)].reshape(len(idx), d, -1), y[-len(idx):]
      jac = np.swapaxes(gj - g0[:, None, :], 1, 2) / e[:, None, None]
      if G is None:
        G = np.zeros((n,) + jac.shape[1:])
      G[idx] = jac
      mag = np.maximum(np.max(np.abs(g0), -1), np.max(np.abs(gj), axis=(1, 2)))
      pred = g0 + e[:, None] * np.einsum("rmd,rd->rm", jac, w)
      ok[idx] = np.all(np.abs(gw - pred) <= 64 * EPS * mag[:, None] * (np.sqrt(d) + 1), -1)
    todo = np.flatnonzero(~ok)
    eps[todo] /= 8
    if len(todo) == 0:
      break
  return G, ok, eps


def units_from_jumps(jumps: np.ndarray, line_dirs: np.ndarray, points: np.ndarray, rank_tol: float = 1e-6):
  """Rows and biases from gradient jumps J = G_right - G_left (n, m, d) across kinks at `points` (n, d).

  J = c u^T up to sign; its top right singular vector is u_hat (oriented so u_hat . line_dir > 0) and
  beta_hat = -u_hat . point. A jump that is not rank one (second singular value > rank_tol * first) crossed two
  hyperplanes and is rejected.
  Returns:
    (Units, ok (n,) bool).
  """
  _, s, vt = np.linalg.svd(jumps, full_matrices=False)
  u = vt[:, 0, :]
  u *= np.where(np.sum(u * line_dirs, -1) < 0, -1.0, 1.0)[:, None]
  c = np.einsum("nmd,nd->nm", jumps, u)
  ok = s[:, 0] > 0
  if s.shape[1] > 1:
    ok &= s[:, 1] <= rank_tol * s[:, 0]
  return Units(u, -np.sum(u * points, -1), c), ok


def refine(query: Querier, units: Units, scale: float, rng: np.random.Generator, rtol: float = 1e-10,
           tries: int = 8, agree: float = 1e-6):
  """Sharpens each unit's bias and output vector along its row, at a point x0 of its hyperplane.

  Along u from x0, g has one kink (s = 0) within +-w unless another hyperplane is that close; the lines through
  g on [-w, -w/2] and [w/2, w] intersect at the kink s*, confirmed by g at s* -+ w/1024 lying on them and by a
  slope jump within `agree` (relative) of the unit's c (6 queries per unit per try). A failed try shrinks w
  8-fold and moves x0 (first the point of the hyperplane nearest 0, then projections of random points), so a
  hyperplane passing by chance through x0 cannot hold up a unit. beta <- beta - s*, c <- slope jump.
  Returns:
    (Units, ok (n,) bool, w (n,), x_k (n, d)): x_k lies on the unit's hyperplane, no other one crosses
    x_k + s u for w/1024 <= |s| <= w.
  """
  u, beta, c = (a.copy() for a in units)
  n, d = u.shape
  w = np.full(n, 1e-2 * scale)
  ok = np.zeros(n, bool)
  xk = -beta[:, None] * u
  for attempt in range(tries):
    idx = np.flatnonzero(~ok)
    if len(idx) == 0:
      break
    ui, wi = u[idx], w[idx]
    # |x0| small keeps beta precise: beta_hat - beta = (u - u_hat) . x_k
    p = scale * rng.normal(size=(len(idx), d)) / np.sqrt(d) if attempt else np.zeros((len(idx), d))
    x0 = p - (np.sum(ui * p, -1) + beta[idx])[:, None] * ui
    s = np.stack([-wi, -wi / 2, wi / 2, wi])
    g = query((x0[None] + s[..., None] * ui[None]).reshape(-1, d), "refine").reshape(4, len(idx), -1)
    sl, sr = (g[1] - g[0]) / (wi / 2)[:, None], (g[3] - g[2]) / (wi / 2)[:, None]
    ds = sr - sl
    with np.errstate(divide="ignore", invalid="ignore"):
      st = np.sum(ds * (g[0] + sl * wi[:, None] - g[3] + sr * wi[:, None]), -1) / np.sum(ds * ds, -1)
    good = np.isfinite(st) & (np.abs(st) < wi / 4)
    st = np.where(good, st, 0.0)
    near = np.stack([st - wi / 1024, st + wi / 1024])                 # just left and right of s*
    gs = query((x0[None] + near[..., None] * ui[None]).reshape(-1, d), "refine").reshape(2, len(idx), -1)
    mag = np.max(np.abs(g), axis=(0, 2)) + wi * np.max(np.abs(ds), -1)
    tol = rtol * mag[:, None]
    pa, pb = g[0] + sl * (near[0] + wi)[:, None], g[3] + sr * (near[1] - wi)[:, None]
    good &= np.all(np.abs(gs[0] - pa) <= tol, -1) & np.all(np.abs(gs[1] - pb) <= tol, -1)
    good &= np.linalg.norm(ds - c[idx], axis=-1) <= agree * np.linalg.norm(ds, axis=-1)
    done = idx[good]
    beta[done] -= st[good]
    c[done] = ds[good]
    xk[done] = x0[good] + st[good, None] * ui[good]
    ok[done] = True
    w[idx[~good]] /= 8
  return Units(u, beta, c), ok, w, xk


def polish_rows(query: Querier, units: Units, xk: np.ndarray, w: np.ndarray, step: np.ndarray,
                rng: np.random.Generator):
  """Measures rows again from the jump between xk +- (w/2) u (see `refine`) with finite-difference steps `step`
  (n,), for units whose first measurement had to use small steps (2 (d + 2) queries per unit).
  Keeps each unit's orientation; beta = -u_new . xk. Returns (Units, ok (n,) bool)."""
  pts = np.concatenate([xk + (w / 2)[:, None] * units.u, xk - (w / 2)[:, None] * units.u])
  jac, ok, _ = gradients(query, pts, np.concatenate([step, step]), rng)
  n = len(units)
  new, ok_rank = units_from_jumps(jac[:n] - jac[n:], units.u, xk)
  ok = ok[:n] & ok[n:] & ok_rank & (np.sum(new.u * units.u, -1) > 1 - 1e-6)
  u = np.where(ok[:, None], new.u, units.u)
  return Units(u, -np.sum(u * xk, -1), units.c), ok


def same_hyperplane(units: Units, x: np.ndarray, tol: np.ndarray) -> np.ndarray:
  """For points x (p, d): True where x lies within distance tol (p,) of a known unit's hyperplane."""
  if len(units) == 0:
    return np.zeros(len(x), bool)
  return np.min(np.abs(x @ units.u.T + units.beta), axis=1) <= tol


def dedup(units: Units, tol: float = 1e-7) -> Units:
  """Drops units whose hyperplane (u, beta) equals an earlier one's up to orientation (|u.u'| ~ 1, beta ~ +-beta')."""
  cos = units.u @ units.u.T
  db = np.abs(units.beta[:, None] - np.sign(cos) * units.beta[None, :])
  match = (np.abs(cos) > 1 - tol) & (db <= tol * (1 + np.abs(units.beta[None, :])))
  keep = ~np.any(np.tril(match, -1), axis=1)
  return Units(*(a[keep] for a in units))
