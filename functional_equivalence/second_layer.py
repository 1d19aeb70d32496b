"""Global signs of the first layer and the second layer, by linear least squares on oracle answers.

With units (u_hat, beta_hat, c) whose orientation s_i = +-1 is unknown, relu(-z) = relu(z) - z gives
    g(x) = sum_i c_i relu(z_i(x)) - sum_{i: s_i = -1} c_i z_i(x) + b1,    z_i = u_hat_i . x + beta_hat_i,
so the residual r(x) = g(x) - sum_i c_i relu(z_i(x)) is affine and linear in the flip indicators t_i in {0, 1}:
r(x) = b1 - sum_i t_i z_i(x) c_i. N points give N*m equations for n + m unknowns (t, b1): the signs are
identifiable when those equations have full rank (checked by column-pivoted QR, LAPACK gelsy), which needs
n + m <= m * (d + 1): h > d works for m > 1 (ART's sign step needs h <= d). The rounded solution must leave an
affine residual of ~0 (a unit whose t does not round cleanly but whose rounding leaves no misfit is too small to
matter at the oracle's precision); otherwise units are missing. Then w1, b1 come from least squares on relu
features. `solve` tries, in order:
  1. "signs": the scalar flips above (the victim's units, each with one orientation);
  2. "pairs" (n <= d): a free vector q_i per hyperplane, r(x) = b1 - sum_i z_i(x) q_i. Units with q_i = 0 or c_i
     are flips as in 1; any other q_i is a pair on one hyperplane, (c_i - q_i) relu(z_i) + q_i relu(-z_i), e.g.
     relu(z) + relu(-z) = |z|, whose kinks coincide;
  3. "affine" (only when the attack allows it: the search found nothing new since 1-2 failed): r(x) = A x + b
     with A free, for units that are affine on the whole domain (hyperplanes far outside it, always active) and so
     were never crossed. A is represented by rank(A) "linear units" relu(v . x + B) whose hyperplanes lie outside
     the domain, so the recovered network equals the victim on the domain only, and orientations stay as found.
Precision: float64 throughout.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from functional_equivalence.errors import SignRecoveryError, SignsNotIdentifiableError
from functional_equivalence.recover import Units


class Layer2(NamedTuple):
  """Sign-corrected first layer (u (n, d), beta (n,)), second layer w1 (n, m), b1 (m,), the relative residual of
  the least-squares fit (max |error| / max |g|), the model that fitted ('signs', 'pairs' or 'affine'), and the
  number of units added for pairs (twins) and for the affine part (linear units; the last ones of u)."""
  u: np.ndarray
  beta: np.ndarray
  w1: np.ndarray
  b1: np.ndarray
  residual: float
  model: str = "signs"
  paired: int = 0
  linear: int = 0


def sample_points(units: Units, scale: float, count: int, rng: np.random.Generator, center=None) -> np.ndarray:
  """`count` points x0_i + N(0, scale^2 I) around the units' hyperplanes (x0_i: the point of the hyperplane
  nearest `center`, default 0), cycling over the units, on alternate sides of each unit's own hyperplane, so that
  every unit is active at half of the points near it (a unit far from the others is active nowhere else)."""
  d = units.u.shape[1]
  center = np.zeros(d) if center is None else np.asarray(center, float)
  which = np.arange(count) % len(units)
  u = units.u[which]
  x0 = center - (u @ center + units.beta[which])[:, None] * u
  noise = scale * rng.normal(size=(count, d))
  along = np.sum(noise * u, axis=1)
  side = np.where((np.arange(count) // len(units)) % 2 == 0, 1.0, -1.0)
  return x0 + noise + (side * np.abs(along) - along)[:, None] * u


def _misfit(fit, g) -> float:
  return float(np.max(np.abs(fit)) / (np.max(np.abs(g)) + 1e-300))


def flip_signs(units: Units, x: np.ndarray, g: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
  """The flip indicators t (n,) bool (True: the unit's orientation is reversed) from answers g (N, m) at x (N, d).

  Raises:
    SignsNotIdentifiableError: the system is rank deficient.
    SignRecoveryError: the residual after rounding t to {0, 1} is not ~0 (units missing, or pairs).
  """
  n, m = len(units), g.shape[1]
  keep = min(len(x), 3 * (n + m) // m + 8)                           # rank needs min(N, d+1) * m >= n + m
  x, g = x[:keep], g[:keep]
  z = x @ units.u.T + units.beta                                     # (N, n)
  r = g - np.maximum(z, 0) @ units.c                                 # (N, m)
  a = np.concatenate([-(z[:, None, :] * units.c.T[None]),            # d r_o / d t_i
                      np.broadcast_to(np.eye(m), (len(x), m, m))], axis=2).reshape(len(x) * m, n + m)
  norms = np.linalg.norm(a, axis=0) + 1e-300
  sol, _, rank, _ = scipy.linalg.lstsq(a / norms, r.reshape(-1), cond=1e-9, lapack_driver="gelsy")
  if rank < n + m:
    raise SignsNotIdentifiableError(
        f"signs not identifiable: {n} units and {m} outputs give a rank-{rank} system (need {n + m}; "
        f"requires n + m <= m * (d + 1) = {m * (x.shape[1] + 1)} and units that are not affinely dependent)")
  t = sol[:n] / norms[:n]
  t_round = np.clip(np.round(t), 0, 1)
  worst = float(np.max(np.abs(t - t_round))) if n else 0.0
  b1 = sol[n:] / norms[n:]
  rel = _misfit(r + (z * t_round) @ units.c - b1, g)
  if rel > rtol:
    raise SignRecoveryError(
        f"the residual of the {n} recovered units is not affine (sign indicators off {{0,1}} by {worst:.2g}, "
        f"relative misfit {rel:.2g}): some hidden units were not found")
  return t_round.astype(bool)


def pair_signs(units: Units, x: np.ndarray, g: np.ndarray, rtol: float = 1e-8, tol: float = 1e-6):
  """Flips, and the units that are pairs on one hyperplane, with a free q_i per unit (see module docstring, 2).

  Returns:
    (flips (n,) bool, pair (n,) bool). Raises SignRecoveryError when n > d or the residual is not affine.
  """
  n, d = units.u.shape
  if n >= len(x) or n > d:
    raise SignRecoveryError(f"pairs: {n} units need n <= d = {d} (and more than n points)")
  z = x @ units.u.T + units.beta
  r = g - np.maximum(z, 0) @ units.c
  phi = np.concatenate([-z, np.ones((len(x), 1))], axis=1)
  norms = np.linalg.norm(phi, axis=0) + 1e-300
  sol, _, rank, _ = scipy.linalg.lstsq(phi / norms, r, cond=1e-9, lapack_driver="gelsy")
  sol /= norms[:, None]
  if rank < n + 1:
    raise SignRecoveryError(f"pairs: the {n} hyperplanes are affinely dependent at the sampled points")
  if _misfit(phi @ sol - r, g) > rtol:
    raise SignRecoveryError("pairs: the residual is not affine: some hidden units were not found")
  q, cn = sol[:n], np.sum(units.c ** 2, 1) + 1e-300
  t = np.clip(np.round(np.sum(q * units.c, 1) / cn), 0, 1)
  pair = np.linalg.norm(q - t[:, None] * units.c, axis=1) > tol * np.sqrt(cn)
  return t.astype(bool) & ~pair, pair


def fit(units: Units, flips: np.ndarray, x: np.ndarray, g: np.ndarray, pair=None, rtol: float = np.inf) -> Layer2:
  """Applies the flips and fits w1, b1 by least squares on [relu(z), 1] at x (N, d) against g (N, m); a unit in
  `pair` gets a twin relu(-z) (appended after the units). Raises SignRecoveryError when the relu features are
  rank deficient or the relative misfit is above rtol."""
  s = np.where(flips, -1.0, 1.0)
  u, beta = units.u * s[:, None], units.beta * s
  if pair is not None and np.any(pair):
    u, beta = np.concatenate([u, -u[pair]]), np.concatenate([beta, -beta[pair]])
  phi = np.concatenate([np.maximum(x @ u.T + beta, 0), np.ones((len(x), 1))], axis=1)
  norms = np.linalg.norm(phi, axis=0) + 1e-300
  sol, _, rank, _ = scipy.linalg.lstsq(phi / norms, g, cond=1e-12, lapack_driver="gelsy")
  sol /= norms[:, None]
  if rank < phi.shape[1]:
    raise SignRecoveryError(f"second layer: relu features have rank {rank} < {phi.shape[1]} at the sampled points "
                            f"(a unit is never active near its hyperplane?)")
  rel = _misfit(phi @ sol - g, g)
  if rel > rtol:
    raise SignRecoveryError(f"second layer: relative misfit {rel:.2g}: some hidden units were not found")
  paired = 0 if pair is None else int(np.sum(pair))
  return Layer2(u, beta, sol[:-1], sol[-1], rel, "pairs" if paired else "signs", paired)


def affine_fit(units: Units, x: np.ndarray, g: np.ndarray, crossing: np.ndarray, active_bias,
               rtol: float = 1e-8) -> Layer2:
  """Model 3 of the module docstring, on points x inside the domain: g = relu(z) W + x A + b by least squares over
  the units whose hyperplane meets the domain (`crossing`; the others are affine or 0 there and keep their
  measured output vector c, subtracted first), with A (d, m) represented by linear units relu(v_j . x + B_j): v_j
  the left singular vectors of A, B_j = active_bias(v (r, d)) (r,) large enough to keep them active on the
  domain. Needs N > n + d points. Raises SignRecoveryError when the residual is not ~0."""
  n, d = units.u.shape
  z = x @ units.u.T + units.beta
  r = g - np.maximum(z[:, ~crossing], 0) @ units.c[~crossing]
  phi = np.concatenate([np.maximum(z[:, crossing], 0), x, np.ones((len(x), 1))], axis=1)
  norms = np.linalg.norm(phi, axis=0) + 1e-300
  sol, _, rank, _ = scipy.linalg.lstsq(phi / norms, r, cond=1e-12, lapack_driver="gelsy")
  sol /= norms[:, None]
  rel = _misfit(phi @ sol - r, g)
  if rank < phi.shape[1] or rel > rtol:
    raise SignRecoveryError(f"the residual of the {n} recovered units is not affine (relative misfit {rel:.2g}, "
                            f"rank {rank} of {phi.shape[1]}): some hidden units were not found")
  k = int(np.sum(crossing))
  w1 = units.c.copy()
  w1[crossing] = sol[:k]
  a, b1 = sol[k:k + d], sol[-1]
  left, sv, _ = np.linalg.svd(a, full_matrices=False)
  tiny = 1e-13 * np.max(np.abs(g)) / (np.max(np.linalg.norm(x, axis=1)) + 1e-300)
  rows = left[:, sv > tiny].T                                          # (r, d), orthonormal
  bias = np.asarray(active_bias(rows), float)
  lin_w1 = rows @ a                                                    # x A = sum_j (v_j . x) lin_w1_j
  return Layer2(np.concatenate([units.u, rows]), np.concatenate([units.beta, bias]),
                np.concatenate([w1, lin_w1]), b1 - bias @ lin_w1, rel, "affine", 0, len(rows))


def solve(units: Units, x: np.ndarray, g: np.ndarray, rtol: float = 1e-8) -> Layer2:
  """Models 1 then 2 of the module docstring. Raises SignRecoveryError (units missing) or
  SignsNotIdentifiableError."""
  try:
    flips = flip_signs(units, x, g, rtol)
    return fit(units, flips, x, g)
  except SignsNotIdentifiableError:
    raise
  except SignRecoveryError as first:
    try:
      flips, pair = pair_signs(units, x, g, rtol)
      return fit(units, flips, x, g, pair, rtol=rtol)
    except SignRecoveryError:
      raise first from None
