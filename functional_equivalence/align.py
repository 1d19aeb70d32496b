"""Evaluation of an extracted two-layer network against the victim: aligned weight error and logit agreement.

A two-layer ReLU network is defined up to a permutation of its hidden units and a positive scale per unit
(a -> lambda a, b -> lambda b, A1 column -> A1 column / lambda). `weight_error` matches recovered units to true
ones (Hungarian matching on normalised rows and biases), rescales each recovered unit so that its row of A0 has the
true row's norm (the scale moving into A1), and reports the largest absolute difference over all four arrays.
True units that cannot change the function are set aside first: a zero row (its constant relu(b) is folded into
b1), a zero column of A1, or (given a domain) a unit never active on the domain; and true units on one hyperplane
with one orientation (indistinguishable from one unit) are merged into one. With `differences=True` (the probabilities oracle) the second layer is only defined up
to a common shift of all logits, so w1 and b1 are compared as differences to class 0.
Precision: float64; random-input comparisons are chunked (16384 inputs per chunk).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from functional_equivalence.victims import TwoLayerNet

if TYPE_CHECKING:  # annotations only: at run time _logits imports deep.network where it needs it
  from functional_equivalence.deep.network import DeepNet

MERGE_TOL = 1e-12


def merge_coincident(net: TwoLayerNet) -> tuple[TwoLayerNet, int]:
  """The network with units of equal hyperplane and orientation (normalised rows and biases within MERGE_TOL)
  merged into the first of each group: c relu(a x + b) + c' relu(k a x + k b) = (c + k c') relu(a x + b) for k > 0.
  Returns (net, number of units merged away)."""
  norms = np.linalg.norm(net.w0, axis=0)
  live = np.flatnonzero(norms > 0)
  u, b = net.w0[:, live] / norms[live], net.b0[live] / norms[live]
  same = (u.T @ u > 1 - MERGE_TOL) & (np.abs(b[:, None] - b[None, :]) <= MERGE_TOL * (1 + np.abs(b[None, :])))
  first = np.argmax(same, axis=1)  # the first unit of each one's group
  if np.all(first == np.arange(len(live))):
    return net, 0
  w1 = net.w1.copy()
  for j in np.flatnonzero(first != np.arange(len(live))):
    i = first[j]
    w1[live[i]] += norms[live[j]] / norms[live[i]] * w1[live[j]]
  drop = live[first != np.arange(len(live))]
  keep = np.setdiff1d(np.arange(net.w0.shape[1]), drop)
  return TwoLayerNet(net.w0[:, keep], net.b0[keep], w1[keep], net.b1), len(drop)


def bits(error: float) -> float:
  """-log2(error), capped at 64 for an exact 0."""
  return 64.0 if error <= 0 else -math.log2(error)


def _second_layer(w1, b1, differences):
  return (w1[:, 1:] - w1[:, :1], b1[1:] - b1[:1]) if differences else (w1, b1)


def weight_error(true: TwoLayerNet, rec: TwoLayerNet, differences: bool = False, domain=None) -> dict:
  """Max aligned absolute weight error (see module docstring).

  Args:
    true, rec: the victim and the recovered network. differences: compare the second layer as differences to
      class 0 (probabilities). domain: a domain.Ball / Box; units of either network never active on it are set
      aside.
  Returns:
    dict with max_weight_error (inf unless every live true unit is matched and nothing is extra),
    weight_error_bits, true_units, inert_true_units (never change the function on the domain),
    merged_true_units (merged with another on the same hyperplane), matched_units,
    unmatched_true_units, extra_units, sign_flipped_units (unmatched units that match with the opposite
    orientation), max_matched_error and the max errors per array over the matched units (w0, b0, w1, b1).
  """
  from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize adds 0.3 s to every launch

  h_true = true.w0.shape[1]
  true, merged = merge_coincident(true)
  norms = np.linalg.norm(true.w0, axis=0)
  inert = (norms == 0) | (np.linalg.norm(true.w1, axis=1) == 0)
  if domain is not None:  # units never active on the domain, of either network, are set aside
    inert |= domain.max_affine(true.w0.T, true.b0) <= 0
    keep = domain.max_affine(rec.w0.T, rec.b0) > 0
    rec = TwoLayerNet(rec.w0[:, keep], rec.b0[keep], rec.w1[keep], rec.b1)
  b1_true = true.b1 + np.maximum(true.b0[norms == 0], 0) @ true.w1[norms == 0]
  live = np.flatnonzero(~inert)
  t_u, t_b = true.w0[:, live] / norms[live], true.b0[live] / norms[live]
  r_norm = np.linalg.norm(rec.w0, axis=0)
  r_u, r_b = rec.w0 / r_norm, rec.b0 / r_norm
  cost = np.maximum(2 - 2 * t_u.T @ r_u, 0) + (t_b[:, None] - r_b[None, :]) ** 2  # |du|^2 + |db|^2
  close = cost < 1e-6  # a wrong orientation or a different unit is far above this
  ti, rj = linear_sum_assignment(np.where(close, cost, 1.0)) if cost.size else (np.zeros(0, int),) * 2
  matched = close[ti, rj]
  ti, rj = ti[matched], rj[matched]
  lam = norms[live][ti] / r_norm[rj]
  w1_t, b1_t = _second_layer(true.w1[live][ti], b1_true, differences)
  w1_r, b1_r = _second_layer(rec.w1[rj] / lam[:, None], rec.b1, differences)
  errs = dict(
    w0=float(np.max(np.abs(rec.w0[:, rj] * lam - true.w0[:, live][:, ti]), initial=0.0)),
    b0=float(np.max(np.abs(rec.b0[rj] * lam - true.b0[live][ti]), initial=0.0)),
    w1=float(np.max(np.abs(w1_r - w1_t), initial=0.0)),
    b1=float(np.max(np.abs(b1_r - b1_t), initial=0.0)),
  )
  complete = len(ti) == len(live) == rec.w0.shape[1]
  err = max(errs.values()) if complete else math.inf
  # unmatched units that match with the opposite orientation: a wrong global sign
  t_rest = np.setdiff1d(np.arange(len(live)), ti)
  r_rest = np.setdiff1d(np.arange(rec.w0.shape[1]), rj)
  flipped = 0
  if len(t_rest) and len(r_rest):
    c2 = np.maximum(2 + 2 * t_u[:, t_rest].T @ r_u[:, r_rest], 0) + (t_b[t_rest, None] + r_b[None, r_rest]) ** 2
    a, b = linear_sum_assignment(np.where(c2 < 1e-6, c2, 1.0))
    flipped = int(np.sum(c2[a, b] < 1e-6))
  return dict(
    max_weight_error=err,
    weight_error_bits=bits(err),
    true_units=int(h_true),
    inert_true_units=int(np.sum(inert)),
    merged_true_units=merged,
    matched_units=int(len(ti)),
    unmatched_true_units=int(len(live) - len(ti)),
    extra_units=int(rec.w0.shape[1] - len(rj)),
    sign_flipped_units=flipped,
    max_matched_error=max(errs.values()),
    **{f"max_error_{k}": v for k, v in errs.items()},
  )


def _logits(net, x):
  """Logits of a TwoLayerNet or of a deep network (deep.network.DeepNet: `weights`, `biases`)."""
  if hasattr(net, "weights"):
    from functional_equivalence.deep import network

    return network.logits(net, x)
  return np.maximum(x @ net.w0 + net.b0, 0) @ net.w1 + net.b1


def _input_dim(net) -> int:
  return (net.weights[0] if hasattr(net, "weights") else net.w0).shape[0]


def labels(logits: np.ndarray) -> np.ndarray:
  """Predicted classes: the arg-max, or with one output the sign (logit > 0), its binary decision."""
  return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(1)


def logit_agreement(
  true: TwoLayerNet | DeepNet, rec: TwoLayerNet | DeepNet, x: np.ndarray, differences: bool = False
) -> dict:
  """Max |logit difference| and top-1 agreement (`labels`) on inputs x (N, d), for two-layer or deep networks.
  With differences=True, logits are compared as differences to class 0 (the arg-max is unaffected by the common
  shift)."""
  a, b = _logits(true, x), _logits(rec, x)
  if differences:
    a, b = a - a[:, :1], b - b[:, :1]
  return dict(
    max_logit_error=float(np.max(np.abs(a - b))), agreement=float(np.mean(labels(a) == labels(b))), count=int(len(x))
  )


def centered_logit_error(true: TwoLayerNet | DeepNet, rec: TwoLayerNet | DeepNet, x: np.ndarray) -> np.ndarray:
  """Per input of x (N, d): the largest |difference| over classes between the two networks' logits, each centred on
  its mean over classes (a common shift, all that a probabilities oracle cannot show, does not count). The paper's
  epsilon-fidelity: a point is epsilon-close when this is <= epsilon. Float64."""
  a, b = _logits(true, x), _logits(rec, x)
  a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
  return np.max(np.abs(a - b), axis=1)


def random_agreement(
  true: TwoLayerNet | DeepNet,
  rec: TwoLayerNet | DeepNet,
  count: int,
  scale: float = 1.0,
  seed: int = 0,
  differences: bool = False,
  chunk: int = 16384,
) -> dict:
  """`logit_agreement` over `count` inputs ~ N(0, scale^2 I), drawn and compared chunk by chunk."""
  rng = np.random.default_rng(seed)
  worst, same, done = 0.0, 0.0, 0
  while done < count:
    n = min(chunk, count - done)
    r = logit_agreement(true, rec, rng.standard_normal((n, _input_dim(true))) * scale, differences)
    worst, same, done = max(worst, r["max_logit_error"]), same + r["agreement"] * n, done + n
  return dict(max_logit_error=worst, agreement=same / max(count, 1), count=count)


def domain_agreement(
  true: TwoLayerNet | DeepNet, rec: TwoLayerNet | DeepNet, dom, count: int, seed: int = 0, differences: bool = False
) -> dict:
  """`logit_agreement` over `count` points covering the domain (`dom.check_points`: spheres of radii up to R for a
  ball, interior, vertices and faces for a box)."""
  rng = np.random.default_rng(seed)
  return logit_agreement(true, rec, dom.check_points(rng, _input_dim(true), count), differences)
