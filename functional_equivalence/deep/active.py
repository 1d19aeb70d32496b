"""Points of the domain where a rarely active unit is on, found on the recovered network (no queries).

A unit on over a small part of the domain only (a cap at its edge) can have every precise point of its surface far
outside the domain, where the search's lines met its kinks: random 10-8-6-1 seed 3 with a second-layer unit on at 0.03%
of the ball of radius 1000 (`network.with_rare_unit`) had its 25 points at radii 6,500-66,000. The polish step's points
inside the domain then met the unit at one point: its output weight kept the error of the last layer's least-squares fit
(7.5e-8, every other weight at 1e-16 after the step). `rare_points` finds, for each hidden unit on at fewer than `want`
of `count` points over the domain, points of the domain where it is on: projected gradient ascent of its pre-activation
(on the recovered network) from the points where it is highest, then random points around the first one where it is on,
kept where it is on. Units on at no point of the domain are left alone. Float64 numpy.
"""

from __future__ import annotations

import numpy as np

from functional_equivalence.deep import network


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
