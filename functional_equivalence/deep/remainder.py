"""The last hidden layer up to what answers can tell: units plus a linear remainder of the layer's inputs.

For the last hidden layer, relu(-z) = relu(z) - z: a unit's orientation can be traded for a linear term of the
features h entering the layer, g = sum_j v_j relu(z_j) + h L + c. A unit that is active at every point of a set
(relu(z) = z there: it never kinks) is such a linear term, and so is a pair relu(z), relu(-z) on one hyperplane.
Answers on that set determine the units that kink there (up to orientation and scale), their output weights and
the remainder (L, c), not how the remainder splits into always-active units: their biases trade against the
output bias, and with one output even their directions trade against the other units' orientations. `fold`
brings a network to that form (the evaluation compares victim and recovery there: align.weight_error); `flip`
turns one unit over, moving its linear part into the remainder. A unit taken into the remainder because it was on
everywhere it was seen can be off somewhere: first where its pre-activation is least, which `least_points` seeks
for directions of the remainder's span (the attack's final check asks there) and `turning_points` for each unit of
a network it knows (an evaluation, on the victim). Float64 numpy.
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import active, network
from functional_equivalence.deep.network import DeepNet


def flip(w: np.ndarray, b: np.ndarray, v: np.ndarray, rem: np.ndarray, c: np.ndarray, j: int):
  """Unit j of a last hidden layer (incoming w (n_in, n), biases b (n,), outgoing v (n, m)) turned over, in place:
  relu(z) = relu(-z) + z, so (w_j, b_j) -> -(w_j, b_j) and the remainder (rem (n_in, m), c (m,)) gains z_j v_j."""
  rem += np.outer(w[:, j], v[j])
  c += b[j] * v[j]
  w[:, j], b[j] = -w[:, j], -b[j]


def fold(net: DeepNet, x: np.ndarray, rtol: float = 1e-6) -> tuple[DeepNet, np.ndarray, int]:
  """`net` with the units of its last hidden layer that are active at every point of x (z >= 0, to 1e-9 of its
  largest |z|: a unit of bias 0 is 0 where every feature is off) folded into a linear
  remainder of that layer's inputs, and every unit on the hyperplane of another (either orientation, within rtol)
  merged into it (both dropped when the merged output weights cancel, to rtol: a linear term only). Returns (net
  without those units, with the remainder's constant in its output bias; the remainder L (n_in, m); how many
  units were folded, merged or dropped)."""
  last = net.depth - 1
  w, b = net.weights[last].copy(), net.biases[last].copy()
  v, c = net.weights[-1].copy(), net.biases[-1].copy()
  rem = np.zeros((w.shape[0], v.shape[1]))
  keep = np.ones(w.shape[1], bool)
  z = network.preactivations(net.prefix(net.depth), x)[last]
  on = np.min(z, axis=0) >= -rtol * 1e-3 * np.max(np.abs(z), axis=0)  # relu(z) = z at x, to rounding
  for j in np.flatnonzero(on).tolist():
    rem += np.outer(w[:, j], v[j])
    c += b[j] * v[j]
    keep[j] = False
  rows = np.concatenate([w, b[None]]).T
  size = np.linalg.norm(rows, axis=1) + 1e-300
  unit = rows / size[:, None]
  for k in range(w.shape[1]):
    for j in range(k):
      if not (keep[j] and keep[k]):
        continue
      if np.linalg.norm(unit[j] + unit[k]) <= rtol:
        flip(w, b, v, rem, c, k)
      elif np.linalg.norm(unit[j] - unit[k]) > rtol:
        continue
      before = max(float(np.linalg.norm(v[j])), size[k] / size[j] * float(np.linalg.norm(v[k])))
      v[j] += size[k] / size[j] * v[k]  # z_k = (|k| / |j|) z_j
      keep[k] = False
      keep[j] = np.linalg.norm(v[j]) > rtol * before  # a pair whose outputs cancel: a linear term only
  weights = net.weights[:last] + (w[:, keep], v[keep])
  return DeepNet(weights, net.biases[:last] + (b[keep], c)), rem, int(np.sum(~keep))


def least_points(
  prefix: DeepNet,
  rem: np.ndarray,
  dom,
  rng: np.random.Generator,
  directions: int,
  starts: int,
  steps: int = 200,
) -> np.ndarray:
  """Points of the domain where linear functions c . h of the prefix's features h, c in the column span of a
  remainder `rem` (n_in, m), are least: where a unit the fit takes as active over the whole domain (h . w + b with
  w in that span, part of the remainder) would turn off first, if anywhere. The span's basis vectors both ways, then
  random unit vectors of it, `directions` in all (2 for a span of one dimension); each minimised over the domain by
  `descend` from `starts` points. Offline: no query. Returns (directions * starts, d); none for a remainder of rank
  0. Float64 numpy."""
  d = prefix.sizes[0] if prefix.weights else rem.shape[0]
  u, sv, _ = np.linalg.svd(rem, full_matrices=False)
  basis = u[:, sv > 1e-9 * max(float(sv[0]) if len(sv) else 0.0, 1e-300)]
  r = basis.shape[1]
  if r == 0 or directions <= 0:
    return np.zeros((0, d))
  coef = unit_directions(r, directions if r > 1 else min(directions, 2), rng)
  return descend(prefix, coef @ basis.T, dom, rng, starts, steps, d)


def unit_directions(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` unit vectors of R^n: its basis both ways first, then random ones. (count, n)."""
  c = np.concatenate([np.eye(n), -np.eye(n)])[:count]
  extra = rng.normal(size=(max(count - len(c), 0), n))
  return np.concatenate([c, extra / np.linalg.norm(extra, axis=1, keepdims=True)])


def descend(
  prefix: DeepNet, c: np.ndarray, dom, rng: np.random.Generator, starts: int, steps: int = 200, d: int | None = None
) -> np.ndarray:
  """Points of the domain where c_i . h is least, h the prefix's features (x itself for an empty prefix of d
  inputs), for each row of c (D, n): projected descent along the normalised gradient from `starts` points each
  (dom.check_points), step sizes falling geometrically from a fifth of the domain's circumradius to 1e-5 of it.
  Returns (D * starts, d), the starts of a row together. Offline."""
  d = prefix.sizes[0] if prefix.weights else d
  x = dom.check_points(rng, d, len(c) * starts)
  which = np.repeat(np.arange(len(c)), starts)
  size = dom.circumradius(d)
  for i in range(steps):
    g = _feature_gradient(prefix, x, c[which])
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-300
    x = dom.project(x - 0.2 * size * 1e-5 ** (i / steps) * g)
  return x


def _feature_gradient(prefix: DeepNet, x: np.ndarray, c: np.ndarray) -> np.ndarray:
  """d(c_i . h(x_i))/dx_i (N, d) for the prefix's features h (x itself for an empty prefix)."""
  if not prefix.weights:
    return c
  pre = network.preactivations(prefix, x)
  return active.input_grad(prefix, pre, c * (pre[-1] > 0))


def turning_points(net: DeepNet, x: np.ndarray, dom, rng: np.random.Generator, starts: int = 8) -> np.ndarray:
  """For every hidden unit of `net` on at every point of x or at none, the points of the domain where its
  pre-activation is least and greatest (`least_points` on its own direction, both ways: 2 * starts points a unit):
  where a unit that x shows as always on turns off, or one x shows as dead turns on, if anywhere. For an evaluation
  that knows the network (a victim), so that a unit is not taken for always on, or dead, over the whole domain
  from a sample (random 7-7-7-7-2 seed 1, thirty-third session: a third-layer unit on at every one of 10^5 ball
  points, off at its least points, where a recovery judged exact on those points was off by 0.16). Offline."""
  parts = [np.zeros((0, net.sizes[0]))]
  pre = network.preactivations(net.prefix(net.depth), x)
  for i, p in enumerate(pre):
    idle = (np.min(p, axis=0) > 0) | (np.max(p, axis=0) <= 0)
    for j in np.flatnonzero(idle).tolist():
      w = net.weights[i][:, j : j + 1]
      parts.append(least_points(net.prefix(i), w, dom, rng, 2, starts))
  return np.concatenate(parts)
