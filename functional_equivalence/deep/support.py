"""Signs of a first hidden layer from the support of g's gradient (any width, expanding included).

Whatever the depth, the chain rule gives grad g(x) = sum_{l live at x} alpha_l(x) w_l: only the first layer's units
that are active at x, with a live path to the outputs, appear (alpha_l != 0 for them, generically). When fewer than
d of them are live, the representation is sparse, and a sparse one is unique: for a generic gradient of
span{w_l : l in A}, |A| <= d - 1, no other set B of at most d - 1 units has it in span{w_l : l in B} unless B
contains A. So a representation grad g(x) = sum_{l in B} beta_l w_l, exact to the measurement's precision, with
|B| <= d - 1 and every beta_l clearly nonzero, *is* the live set: each l in B is active at x, its orientation is
sign(p_hat_l(x)). The representation is looked for by basis pursuit (least l1 norm, a linear program, offline) and
only a sparse one that the least squares on its support reproduces within `rtol` is accepted; otherwise the point
says nothing. Only "active" is concluded (a unit missing from B may be inactive or on a dead path), so no unit is
decided wrongly, up to measure-zero coincidences. An expanding first layer (wider than the input: no direction
moves one unit alone, so `signs.hidden_signs`' exact test is rarely possible) has many points with fewer than d
live units; a contractive one never needs this. Float64 numpy; every query through the Querier (finite-difference
Jacobians, recover.gradients); scipy's HiGHS for the linear program.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from functional_equivalence import recover


def _verified(w, g, support, rtol):
  """support (bool (n,)) if g is reproduced by least squares on it within rtol, with every weight clearly
  nonzero and at most d - 1 of them; else None."""
  if not support.any() or support.sum() > w.shape[0] - 1:
    return None
  sol, *_ = np.linalg.lstsq(w[:, support], g, rcond=None)
  if np.linalg.norm(w[:, support] @ sol - g) > rtol or np.min(np.abs(sol)) < 1e-4 * np.max(np.abs(sol)):
    return None
  return support


def _basis_pursuit(w, g, tol: float = 1e-9):
  """The least-l1 representation beta (min sum |beta| with |w beta - g| <= tol), or None."""
  from scipy.optimize import linprog  # here, not at import: scipy.optimize adds 0.3 s to every launch

  n = w.shape[1]
  a = np.concatenate([w, -w], axis=1)
  res = linprog(np.ones(2 * n), A_ub=np.concatenate([a, -a]), b_ub=np.concatenate([g + tol, tol - g]), bounds=(0, None))
  if res.status != 0:
    return None
  return res.x[:n] - res.x[n:]


def _exhaustive(w, g, among, rtol, chunk: int = 8192):
  """The units in every (d - 1)-subset of `among` whose span holds g (the live set, when it has <= d - 1 units
  and they are all among `among`), or None."""
  d, n = w.shape
  inside = np.ones(n, bool)
  found = False
  combos = itertools.combinations(among, d - 1)
  while True:
    idx = np.array(list(itertools.islice(combos, chunk)))
    if not len(idx):
      break
    qs, _ = np.linalg.qr(np.transpose(w[:, idx], (1, 0, 2)))  # (k, d, d - 1)
    res = np.linalg.norm(g - np.einsum("kdr,kr->kd", qs, np.einsum("kdr,d->kr", qs, g)), axis=1)
    for row in idx[res <= rtol]:
      mask = np.zeros(n, bool)
      mask[row] = True
      inside &= mask
      found = True
  return inside if found else None


def live_support(w, grad, rtol: float = 1e-7, max_subsets: int = 4096) -> np.ndarray | None:
  """The units l (bool (n,)) with grad = sum_l beta_l w_l on at most d - 1 of them (module docstring), or None
  when none is found. w (d, n) unit-norm columns, grad (d,). Basis pursuit (least l1 norm) first; it finds
  supports well below d only, so where it misses, every (d - 1)-subset of the units it weighs most is tried
  (as many of them as keep the subsets <= max_subsets; the live units are usually among them)."""
  d, n = w.shape
  scale = np.linalg.norm(grad)
  if scale == 0 or d < 2:
    return None
  g = grad / scale
  beta = _basis_pursuit(w, g)
  if beta is None:
    return None
  found = _verified(w, g, np.abs(beta) > 1e-6 * np.max(np.abs(beta)), rtol)
  if found is None:
    k = d - 1
    while k < n and math.comb(k + 1, d - 1) <= max_subsets:
      k += 1
    support = _exhaustive(w, g, np.argsort(-np.abs(beta), kind="stable")[:k], rtol)
    found = None if support is None else _verified(w, g, support, rtol)
  return found


def support_signs(
  q, w, b, undecided, scale, center, rng, stats, batch: int = 16, max_batches: int = 16, radius: float = np.inf
):
  """Orientations of the units `undecided` (bool (n,)) of the first layer (w (d, n), b (n,)): gradients at random
  points around the center (radii 0.5 to 4 times `scale`, those within `radius` of it: with probabilities the
  ball where none underflows, iris-trained 4-12-6-3 seed 1 of `fe_deep_fresh_probabilities.md` stopped at such a
  point), each sparse live set found (live_support) marking its units active there; at most max_batches batches of
  `batch` points. Returns the signs (n,) of the units that two points, and none against, found active (0 for the
  others)."""
  d, n = w.shape
  wn = w / np.linalg.norm(w, axis=0)
  plus, minus = np.zeros(n, int), np.zeros(n, int)
  q0 = q.queries
  for _ in range(max_batches):
    done = (plus + minus >= 2) | ~undecided
    if done.all():
      break
    x = center + scale * rng.normal(size=(batch, d)) * rng.uniform(0.5, 4.0, size=(batch, 1))
    dist = np.min(np.abs(x @ w + b) / np.linalg.norm(w, axis=0), axis=1)
    eps = np.minimum(1e-3 * scale, 0.25 * dist)
    keep = (eps > 1e-9 * scale) & (np.linalg.norm(x - center, axis=1) <= radius)
    if not keep.any():
      continue
    jac, ok, _, _ = recover.gradients(q, x[keep], eps[keep], rng)
    for xi, g, good in zip(x[keep], jac, ok):
      q.check("signs")  # the subset search is offline (bounded by max_subsets, but many points)
      if not good:
        continue
      grad = rng.normal(size=len(g)) @ g  # a random mix of the outputs: the union of their live sets
      live = live_support(wn, grad)
      if live is None:
        continue
      side = np.sign(xi @ w + b)
      plus += live & (side > 0)
      minus += live & (side < 0)
  stats["support_queries"] = stats.get("support_queries", 0) + q.queries - q0
  signs = np.where((plus >= 2) & (minus == 0), 1.0, np.where((minus >= 2) & (plus == 0), -1.0, 0.0))
  return signs * undecided
