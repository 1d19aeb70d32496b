"""Points of a unit's surface inside a chosen linear region of the prefix, by linear programming (offline).

On a linear region of the prefix every prefix pre-activation is an affine function of x, so "x lies in the region
R, at least t from each of its walls, on the surface p_hat_j(x) = 0 of a unit of the next layer" is a set of
linear constraints on (x, t). The region wanted here keeps the activation pattern of every prefix layer but the
last as at a given point x0 and makes every unit of the last prefix layer active: there the features h are all
live, so the layer's pre-activations have the largest rank d p_hat / dx and the exact sign test of
signs.hidden_signs (a direction that moves one unit and no other possibly active one) exists for the most
units. Float64 numpy; scipy's HiGHS solver; no query.
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import network


def _affine_layers(prefix: network.DeepNet, x0: np.ndarray) -> list:
  """Per prefix layer (pre-activations at x0 (n_l,), their input gradients (d, n_l)), valid on x0's region."""
  out = []
  for depth, w in enumerate(prefix.weights):
    f = network.features(prefix.prefix(depth), x0[None])
    out.append((f.h[0] @ w + prefix.biases[depth], f.jac[0] @ w))
  return out


def all_active_points(
  prefix: network.DeepNet, w: np.ndarray, b: float, x0: np.ndarray, center, radius: float, rng, count: int = 2
) -> np.ndarray:
  """Up to `count` points (k, d) of the surface {h(x) . w + b = 0} in the region that keeps x0's activation
  pattern on every prefix layer but the last and makes the last one all active, as deep inside it as the box
  |x - center|_inf <= radius allows (module docstring); the first maximises the margin t, the others are moved
  from it along the surface by less than t/2 (same region). Empty when that region misses the surface."""
  from scipy.optimize import linprog  # here, not at import: scipy.optimize adds 0.3 s to every launch

  layers = _affine_layers(prefix, x0)
  d = len(x0)
  a_ub, b_ub = [], []
  for depth, (p0, g) in enumerate(layers):
    sign = np.ones(len(p0)) if depth == len(layers) - 1 else np.where(p0 > 0, 1.0, -1.0)
    gn = np.linalg.norm(g, axis=0)
    # sign (p0 + g.(x - x0)) >= t |g|
    a_ub.append(np.concatenate([-(sign[:, None] * g.T), gn[:, None]], axis=1))
    b_ub.append(sign * (p0 - g.T @ x0))
  p0, g = layers[-1]
  grad = g @ w  # p_hat(x) = w . (p0 + g.(x - x0)) + b on the region
  a_eq = np.append(grad, 0.0)[None]
  b_eq = np.array([grad @ x0 - w @ p0 - b])
  if not np.linalg.norm(grad):
    return np.zeros((0, d))
  bounds = [(c - radius, c + radius) for c in center] + [(0.0, radius)]
  cost = np.zeros(d + 1)
  cost[-1] = -1.0
  res = linprog(cost, np.concatenate(a_ub), np.concatenate(b_ub), a_eq, b_eq, bounds=bounds, method="highs")
  if res.status != 0 or res.x[-1] <= 1e-9 * radius:
    return np.zeros((0, d))
  x, t = res.x[:d], res.x[-1]
  nrm = grad / np.linalg.norm(grad)
  out = [x]
  for _ in range(count - 1):
    v = rng.normal(size=d)
    v -= (v @ nrm) * nrm
    out.append(x + 0.5 * t * v / np.linalg.norm(v))
  pts = np.array(out)
  for _ in range(2):  # onto the surface to rounding (the solver's tolerance is coarser); p_hat is affine here
    pts = pts - (network.features(prefix, pts).h @ w + b)[:, None] * (grad / (grad @ grad))[None]
  return pts
