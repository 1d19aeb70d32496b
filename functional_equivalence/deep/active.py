"""Points of the domain where a rarely active unit is on, found on the recovered network (no queries).

A unit on over a small part of the domain only (a cap at its edge) can have every precise point of its surface far
outside the domain, where the search's lines met its kinks: random 10-8-6-1 seed 3 with a second-layer unit on at 0.03%
of the ball of radius 1000 (`network.with_rare_unit`) had its 25 points at radii 6,500-66,000. The polish step's points
inside the domain then met the unit at one point: its output weight kept the error of the last layer's least-squares fit
(7.5e-8, every other weight at 1e-16 after the step). `rare_points` finds, for each hidden unit on at fewer than `want`
of `count` points over the domain, points of the domain where it is on: projected gradient ascent of its pre-activation
(on the recovered network) from the points where it is highest, then random points around the first one where it is on,
kept where it is on. Units on at no point of the domain are left alone.

A unit's weight from an input feature is fixed by the answers only where the two are on together. Where that is a
small part of the domain the polish step's points may miss it, and the step then leaves that weight as the peeling
read it while it moves the others to fit the points it has. fe_deep_rare's 10-8-8-8-1 seed 1: around the first point
`rare_points` found, feature 6 is off, while it is on at about half of the ball's points where the rare unit is on;
the polished network was returned wrong (2^-16.9). `co_active_points` finds, for every such (unit, feature) pair,
points where both are on, by ascent (`both_on`); nothing where that is nowhere in the domain. Float64 numpy.
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import network


def input_grad(prefix: network.DeepNet, pre: list, v: np.ndarray) -> np.ndarray:
  """d(pre[-1] . v)/dx (N, d) on each point's linear region: v (N, n) back through the prefix's layers."""
  g = v @ prefix.weights[-1].T
  for i in range(len(prefix.weights) - 2, -1, -1):
    g = (g * (pre[i] > 0)) @ prefix.weights[i].T
  return g


def both_on(
  prefix: network.DeepNet, w: np.ndarray, b, k, x: np.ndarray, dom, steps: int = 64, deeper: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """The points of x moved, by ascent on min(p / |grad p|, pre_k / |grad pre_k|) (steps along the gradient of the
  smaller, projected onto the domain, from a tenth of each point's distance to the domain's center, shrinking), to
  where the unit of pre-activation p = relu(prefix's last pre-activations) . w + b and the prefix's unit k are both
  on (on the network `prefix`, no query); w (n,) or one per point (N, n), b and k scalars or one per point. With
  `deeper`, that many more steps of the same ascent for the points already there, each kept only if both stay on and
  the smaller margin grows: at the first point inside, pre_k is near 0, and so is what a wrong weight from k changes
  there. Returns the mask of the points where both are on at the end, and the points."""
  d = x.shape[1]
  center, reach = dom.center(d), dom.circumradius(d)
  x = np.array(x, np.float64)
  rows = np.arange(len(x))
  ek = np.zeros((len(x), prefix.weights[-1].shape[1]))
  ek[rows, k] = 1.0

  def ascent(x, t):
    """(both on, the smaller margin, the step's direction) at x."""
    pre = network.preactivations(prefix, x)
    p, pk = _dot(np.maximum(pre[-1], 0.0), w) + b, pre[-1][rows, k]
    gp = input_grad(prefix, pre, (pre[-1] > 0) * w)
    gk = input_grad(prefix, pre, ek)
    np_, nk = np.linalg.norm(gp, axis=1) + 1e-300, np.linalg.norm(gk, axis=1) + 1e-300
    g = np.where((p / np_ < pk / nk)[:, None], gp / np_[:, None], gk / nk[:, None])
    size = 0.1 * 0.5 ** (t / 16) * (np.linalg.norm(x - center, axis=1) + 1e-3 * reach)
    return (p > 0) & (pk > 0), np.minimum(p / np_, pk / nk), size[:, None] * g

  for t in range(steps):
    done, _, step = ascent(x, t)
    if done.all():
      break
    x = np.where(done[:, None], x, dom.project(x + step))
  for t in range(deeper):
    done, margin, step = ascent(x, t)
    trial = dom.project(x + step)
    now, after, _ = ascent(trial, t)
    x = np.where((done & now & (after > margin))[:, None], trial, x)
  pre = network.preactivations(prefix, x)
  return (_dot(np.maximum(pre[-1], 0.0), w) + b > 0) & (pre[-1][rows, k] > 0), x


def _dot(h: np.ndarray, w: np.ndarray) -> np.ndarray:
  """h . w per point: w one vector (n,) or one per point (N, n)."""
  return h @ w if w.ndim == 1 else np.einsum("nk,nk->n", h, w)


def _relative(prefix: network.DeepNet, x0: np.ndarray):
  """The prefix's last pre-activations at x0 (N, n), each relative to its scale (|input| |weights| + |bias|), and
  its features h (N, n)."""
  pre0 = network.preactivations(prefix, x0)
  before = np.maximum(pre0[-2], 0.0) if len(pre0) > 1 else x0
  wl, bl = prefix.weights[-1], prefix.biases[-1]
  scale = np.linalg.norm(before, axis=1)[:, None] * np.linalg.norm(wl, axis=0) + np.abs(bl) + 1e-300
  return pre0[-1] / scale, np.maximum(pre0[-1], 0.0)


def both_on_points(prefix, w: np.ndarray, b: float, ks, x0: np.ndarray, dom, starts: int = 8, steps: int = 64):
  """For each feature k of `ks` (units of the prefix's last layer), `both_on` from the `starts` points of x0 where
  min(p, pre_k), each relative to its scale (|input| |weights| + |bias|), is highest. Returns (k', d) points."""
  k_rel, h0 = _relative(prefix, x0)
  p_rel = (h0 @ w + b) / (np.linalg.norm(h0, axis=1) * np.linalg.norm(w) + abs(b) + 1e-300)
  found = [np.zeros((0, x0.shape[1]))]
  for k in ks:
    on, x = both_on(prefix, w, b, k, x0[np.argsort(-np.minimum(p_rel, k_rel[:, k]))[:starts]], dom, steps)
    found.append(x[on])
  return np.concatenate(found)


def co_active_points(
  net: network.DeepNet,
  dom,
  rng,
  want: int = 16,
  count: int = 4096,
  starts: int = 4,
  steps: int = 64,
  chunk: int = 256,
  deeper: int = 0,
) -> np.ndarray:
  """For every hidden unit after the first layer and each input feature with a nonzero weight that are on together
  at fewer than `want` of `count` points over the domain, up to `starts` points of the domain where they are
  (module docstring): `both_on` from the candidates where the smaller of the two relative pre-activations is
  highest, so that points already inside both regions lie deep in them. Returns (k, d) points (on the network
  alone, no query)."""
  d = net.sizes[0]
  x0 = dom.check_points(rng, d, count)
  out = [np.zeros((0, d))]
  for layer in range(1, net.depth):
    prefix = net.prefix(layer)
    k_rel, h0 = _relative(prefix, x0)
    w, b = net.weights[layer], net.biases[layer]
    p_rel = (h0 @ w + b) / (np.linalg.norm(h0, axis=1, keepdims=True) * np.linalg.norm(w, axis=0) + np.abs(b) + 1e-300)
    together = (h0 > 0).T.astype(float) @ (p_rel > 0).astype(float)  # (features, units): points with both on
    ks, js = np.nonzero((together < want) & (w != 0))
    for c in range(0, len(ks), chunk):
      k, j = ks[c : c + chunk], js[c : c + chunk]
      score = np.minimum(p_rel[:, j], k_rel[:, k])  # (count, pairs)
      best = np.argsort(-score, axis=0)[:starts].T.ravel()  # per pair its `starts` best candidates
      pair = np.repeat(np.arange(len(k)), starts)
      on, x = both_on(prefix, w[:, j[pair]].T, b[j[pair]], k[pair], x0[best], dom, steps, deeper)
      out.append(x[on])
  return np.concatenate(out)


def rare_points(net: network.DeepNet, dom, rng, want: int = 16, count: int = 4096, steps: int = 60) -> np.ndarray:
  """Up to `want` points of the domain where each rarely active hidden unit of `net` is on (module docstring);
  (0, d) when every unit is on at `want` of `count` points over the domain."""
  d = net.sizes[0]
  candidates = dom.check_points(rng, d, count)
  out = [np.zeros((0, d))]
  for layer, z in enumerate(network.preactivations(net.prefix(net.depth), candidates)):
    for j in np.flatnonzero(np.sum(z > 0, axis=0) < want).tolist():
      starts = candidates[np.argsort(-z[:, j])[:4]]
      out.append(unit_points(net, layer, j, dom, starts, rng, want, steps))
  return np.concatenate(out)


def _pre(net: network.DeepNet, layer: int, j: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unit j of hidden layer `layer`: its pre-activation at x (N,) and the gradient (N, d)."""
  f = network.features(net.prefix(layer), x)
  w = net.weights[layer][:, j]
  return f.h @ w + net.biases[layer][j], np.einsum("ndk,k->nd", f.jac, w)


def unit_points(net, layer: int, j: int, dom, starts: np.ndarray, rng, want: int, steps: int = 60) -> np.ndarray:
  """Points of the domain where unit j of hidden layer `layer` is on: projected ascent from `starts` (steps from a
  tenth of the domain's circumradius, shrinking), then points around the first one found on, at distances
  log-uniform in [1e-4, 1e-1] circumradius, kept inside the domain where the unit is on (at most `want`)."""
  d = net.sizes[0]
  size = dom.circumradius(d)
  x = np.array(starts, np.float64)
  for k in range(steps):
    z, g = _pre(net, layer, j, x)
    if np.any(z > 0):
      break
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-300
    x = dom.project(x + 0.1 * size * 0.93**k * g)
  z, _ = _pre(net, layer, j, x)
  if not np.any(z > 0):
    return np.zeros((0, d))
  seed = x[int(np.argmax(z))]
  v = rng.normal(size=(64 * want, d))
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  near = seed + v * (size * 10.0 ** rng.uniform(-4, -1, size=(len(v), 1)))
  near = near[dom.contains(near)]
  on = near[_pre(net, layer, j, near)[0] > 0]
  return np.concatenate([seed[None], on[: want - 1]])
