"""A worst-case certificate: the largest logit difference between two two-layer ReLU networks over a domain.

D(x) = f(x) - f'(x) is piecewise linear on the common arrangement of both networks' hyperplanes. Enumerating its
cells is exponential in general, so `certify` computes a rigorous upper bound instead, exact per term:
  * every unit is written c relu(u . x + beta) with |u| = 1 (c carries the row's norm), for both networks, the
    recovered one with -c; a unit never active on the domain is dropped, one always active on it is affine there
    and joins the affine part A x + b exactly;
  * the other units are grouped by hyperplane (max over the domain of |z_k -+ z_r| below 1% of that of |z_r|,
    and output vectors that cancel: a unit and its recovery; any grouping gives a valid bound, a good one a tight
    bound). In a group with reference z_r, a
    member with the same orientation is relu(z_r) + e, with the opposite one relu(z_r) - z_r + e, where
    |e| <= max over the domain of |z_k -+ z_r| (a number: the exact max of an affine function on the domain);
  * so D = A x + b + sum_groups C_g relu(z_g) + E, and per output o
        max_domain |D_o| <= max_domain |A_o x + b_o| + sum_g |C_g,o| max_domain relu(z_g) + sum |c_k,o| e_k,
    every max exact (domain.max_affine). When the recovery matches, the C_g and e_k are at rounding level and the
    bound is tight to a few units of the rounding; a missed or wrong unit shows up at full size.
Beside it, `search_max` evaluates |D| at points over the domain, on and beside every hyperplane, and climbs from
the worst of them by projected gradient steps (D is linear on each cell): a lower bound, from a stated search.
With differences=True (probabilities oracle), D is compared as differences to class 0. Float64 throughout.
"""
from __future__ import annotations

import numpy as np

from functional_equivalence import domain as domains
from functional_equivalence.victims import TwoLayerNet

GROUP_TOL = 1e-2


def _units(net: TwoLayerNet, sign: float, differences: bool):
  """(u (h, d) unit rows, beta (h,), c (h, m)) of net's live units, and its constant part (zero rows folded)."""
  w1, b1 = (net.w1 - net.w1[:, :1], net.b1 - net.b1[:1]) if differences else (net.w1, net.b1)
  norms = np.linalg.norm(net.w0, axis=0)
  live = norms > 0
  const = sign * (b1 + np.maximum(net.b0[~live], 0) @ w1[~live])
  return (net.w0[:, live] / norms[live]).T, net.b0[live] / norms[live], sign * w1[live] * norms[live, None], const


def _max_abs(dom, a, b):
  return domains.max_abs_affine(dom, a, b)


def certify(true: TwoLayerNet, rec: TwoLayerNet, dom: domains.Domain, differences: bool = False) -> dict:
  """Upper bound on max over the domain of |f_o(x) - f'_o(x)| for every output o (see module docstring).

  Returns:
    dict with bound (the max over outputs, logit units), bound_per_output (list), groups (hyperplane groups
    crossing the domain), unmatched_groups (groups whose coefficients do not cancel to rounding level: a unit
    of one network without a partner in the other), affine_units (units affine on the domain).
  """
  u1, b1, c1, k1 = _units(true, 1.0, differences)
  u2, b2, c2, k2 = _units(rec, -1.0, differences)
  u, beta, c = np.concatenate([u1, u2]), np.concatenate([b1, b2]), np.concatenate([c1, c2])
  d, m = u.shape[1], c.shape[1]
  zmax, zmin = dom.max_affine(u, beta), -dom.max_affine(-u, -beta)
  on, cross = zmin >= 0, (zmax > 0) & (zmin < 0)
  a_lin = c[on].T @ u[on]                                              # (m, d)
  b_lin = k1 + k2 + c[on].T @ beta[on]                                 # (m,)
  idx = np.flatnonzero(cross)
  cos = u[idx] @ u[idx].T
  orient = np.sign(cos)
  # candidates: the max over the domain of |z_k -+ z_r| small next to that of |z_r|
  dev_all = np.full((len(idx), len(idx)), np.inf)
  near = np.argwhere((np.abs(cos) > 1 - GROUP_TOL) & ~np.eye(len(idx), dtype=bool))
  if len(near):
    a, b = idx[near[:, 0]], idx[near[:, 1]]
    s = orient[near[:, 0], near[:, 1]]
    dev = _max_abs(dom, u[a] - s[:, None] * u[b], beta[a] - s * beta[b])
    ok = dev <= GROUP_TOL * _max_abs(dom, u[b], beta[b])
    dev_all[near[ok, 0], near[ok, 1]] = dev[ok]
  group = np.full(len(idx), -1)
  error = np.zeros(m)
  coef = []
  for i in range(len(idx)):
    if group[i] >= 0:
      continue
    r, total = idx[i], c[idx[i]].copy()
    group[i] = len(coef)
    # a candidate joins when its coefficients cancel the group's (a unit and its recovery), closest first
    for j in np.argsort(dev_all[i]):
      if not np.isfinite(dev_all[i, j]) or group[j] >= 0:
        continue
      k, s = idx[j], orient[i, j]
      if np.max(np.abs(total + c[k])) > 0.5 * (np.max(np.abs(total)) + np.max(np.abs(c[k]))):
        continue
      group[j] = group[i]
      total += c[k]
      if s < 0:                                # relu(z_k) ~ relu(-z_r) = relu(z_r) - z_r
        a_lin -= np.outer(c[k], u[r])
        b_lin -= c[k] * beta[r]
      error += np.abs(c[k]) * dev_all[i, j]
    coef.append((total, max(zmax[r], 0.0)))
  per = _max_abs(dom, a_lin, b_lin) + error
  scale = np.zeros(m)
  unmatched = 0
  for total, top in coef:
    per = per + np.abs(total) * top
    scale += np.abs(total) * top
  for i in range(len(coef)):
    members = np.flatnonzero(group == i)
    size = sum(np.abs(c[idx[j]]) for j in members)
    unmatched += int(np.any(np.abs(coef[i][0]) > 1e-4 * (size + 1e-300)))
  return dict(bound=float(np.max(per)), bound_per_output=per.tolist(), groups=len(coef),
              unmatched_groups=unmatched, affine_units=int(np.sum(on)))


def _logit_diff(true, rec, x, differences):
  f = np.maximum(x @ true.w0 + true.b0, 0) @ true.w1 + true.b1
  g = np.maximum(x @ rec.w0 + rec.b0, 0) @ rec.w1 + rec.b1
  diff = f - g
  return diff - diff[:, :1] if differences else diff


def search_max(true: TwoLayerNet, rec: TwoLayerNet, dom: domains.Domain, seed: int = 0, count: int = 4096,
               climbs: int = 32, steps: int = 24, differences: bool = False) -> dict:
  """A lower bound on max over the domain of |D_o| (see module docstring): `count` points over the domain, 3
  points on and beside each hyperplane of both networks inside it, then `climbs` projected ascents of `steps`
  steps from the worst points (step sizes from R / 4 halving, gradients of D by finite differences within the
  cell). Returns dict(found, points)."""
  rng = np.random.default_rng(seed)
  d = true.w0.shape[0]
  us, bs = [], []
  for net in (true, rec):
    n = np.linalg.norm(net.w0, axis=0)
    live = n > 0
    us.append((net.w0[:, live] / n[live]).T)
    bs.append(net.b0[live] / n[live])
  u, beta = np.concatenate(us), np.concatenate(bs)
  on, which = dom.hyperplane_points(u, beta, rng, 1)
  side = 1e-6 * dom.circumradius(d) * u[which]
  x = np.concatenate([dom.check_points(rng, d, count), on, dom.project(on + side), dom.project(on - side)])
  diff = np.abs(_logit_diff(true, rec, x, differences))
  worst = np.max(diff, axis=1)
  start = x[np.argsort(-worst)[:climbs]]
  out = np.argmax(diff[np.argsort(-worst)[:climbs]], axis=1)
  best = float(np.max(worst))
  radius = dom.circumradius(d)
  pts = start.copy()
  h = 1e-7 * radius
  for it in range(steps):
    base = _logit_diff(true, rec, pts, differences)[np.arange(len(pts)), out]
    grad = np.stack([(_logit_diff(true, rec, pts + h * e, differences)[np.arange(len(pts)), out] - base) / h
                     for e in np.eye(d)], axis=1) if d <= 64 else _random_grad(true, rec, pts, out, h, rng,
                                                                                  differences)
    step = radius / 4 * 0.5 ** (it // 3)
    nrm = np.linalg.norm(grad, axis=1, keepdims=True) + 1e-300
    cand = dom.project(pts + np.sign(base)[:, None] * step * grad / nrm)
    val = np.abs(_logit_diff(true, rec, cand, differences)[np.arange(len(pts)), out])
    better = val > np.abs(base)
    pts[better] = cand[better]
    best = max(best, float(np.max(val)))
  return dict(found=best, points=int(len(x) + climbs * steps * (min(d, 64) + 2)))


def _random_grad(true, rec, pts, out, h, rng, differences, k: int = 64):
  """The gradient of D_out projected on k random directions (for large d): an ascent direction, not the gradient."""
  d = pts.shape[1]
  dirs = rng.normal(size=(k, d)) / np.sqrt(d)
  base = _logit_diff(true, rec, pts, differences)[np.arange(len(pts)), out]
  slopes = np.stack([(_logit_diff(true, rec, pts + h * v, differences)[np.arange(len(pts)), out] - base) / h
                     for v in dirs], axis=1)
  return slopes @ dirs
