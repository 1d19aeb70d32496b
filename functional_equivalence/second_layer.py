"""Global signs of the first layer and the second layer, by linear least squares on oracle answers.

With units (u_hat, beta_hat, c) whose orientation s_i = +-1 is unknown, relu(-z) = relu(z) - z gives
    g(x) = sum_i c_i relu(z_i(x)) - sum_{i: s_i = -1} c_i z_i(x) + b1,    z_i = u_hat_i . x + beta_hat_i,
so the residual r(x) = g(x) - sum_i c_i relu(z_i(x)) is affine and linear in the flip indicators t_i in {0, 1}:
r(x) = b1 - sum_i t_i z_i(x) c_i. N points give N*m equations for n + m unknowns (t, b1): the signs are
identifiable when those equations have full rank (checked by column-pivoted QR, LAPACK gelsy), which needs
n + m <= m * (d + 1): h > d works for m > 1 (ART's sign step needs h <= d). The continuous solution must round
to {0, 1} with an affine residual of ~0; otherwise units are missing. Then w1, b1 come from least squares on
relu features. Precision: float64 throughout.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from functional_equivalence.errors import SignRecoveryError, SignsNotIdentifiableError
from functional_equivalence.recover import Units


class Layer2(NamedTuple):
  """Sign-corrected first layer (u (n, d), beta (n,)), second layer w1 (n, m), b1 (m,), and the relative
  residual of the least-squares fit (max |error| / max |g|)."""
  u: np.ndarray
  beta: np.ndarray
  w1: np.ndarray
  b1: np.ndarray
  residual: float


def sample_points(units: Units, scale: float, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` points x0_i + N(0, scale^2 I) around the units' hyperplanes (x0_i = -beta_i u_i), cycling over the
  units, so that every unit is active at about half of the points near its own hyperplane."""
  which = np.arange(count) % len(units)
  return -units.beta[which, None] * units.u[which] + scale * rng.normal(size=(count, units.u.shape[1]))


def flip_signs(units: Units, x: np.ndarray, g: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
  """The flip indicators t (n,) bool (True: the unit's orientation is reversed) from answers g (N, m) at x (N, d).

  Raises:
    SignsNotIdentifiableError: the system is rank deficient.
    SignRecoveryError: t does not round to {0, 1}, or the residual after rounding is not ~0 (units missing).
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
  fit = r + (z * t_round) @ units.c - b1
  rel = float(np.max(np.abs(fit)) / (np.max(np.abs(g)) + 1e-300))
  if worst > 0.01 or rel > rtol:
    raise SignRecoveryError(
        f"the residual of the {n} recovered units is not affine (sign indicators off {{0,1}} by {worst:.2g}, "
        f"relative misfit {rel:.2g}): some hidden units were not found")
  return t_round.astype(bool)


def fit(units: Units, flips: np.ndarray, x: np.ndarray, g: np.ndarray) -> Layer2:
  """Applies the flips and fits w1, b1 by least squares on [relu(z), 1] at x (N, d) against g (N, m)."""
  s = np.where(flips, -1.0, 1.0)
  u, beta = units.u * s[:, None], units.beta * s
  phi = np.concatenate([np.maximum(x @ u.T + beta, 0), np.ones((len(x), 1))], axis=1)
  sol, _, rank, _ = scipy.linalg.lstsq(phi, g, cond=1e-12, lapack_driver="gelsy")
  if rank < phi.shape[1]:
    raise SignRecoveryError(f"second layer: relu features have rank {rank} < {phi.shape[1]} at the sampled points "
                            f"(a unit is never active near its hyperplane?)")
  rel = float(np.max(np.abs(phi @ sol - g)) / (np.max(np.abs(g)) + 1e-300))
  return Layer2(u, beta, sol[:-1], sol[-1], rel)
