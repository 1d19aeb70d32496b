"""Evaluation points of the deep-attack tests: where a recovered network is compared with its victim."""

import numpy as np

from functional_equivalence import domain
from functional_equivalence.deep import layer as layers
from functional_equivalence.deep import network


def eval_points(d, seed=5, count=10_000):
  """N(0, I) points and points on spheres of radii 1 .. 1000 (the default domain's radius)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.normal(size=(count, d)), domain.Ball(1000.0).check_points(rng, d, count)])


def rare_net(seed, sizes, point_seed=99, fraction=3e-4):
  """`network.random_net(seed, sizes)` with its last hidden layer's unit 0 on at `fraction` of 200,000 check points
  of the ball of radius 1000 drawn from `point_seed` (fe_deep --rare_sizes draws them from [99, len(sizes)])."""
  points = domain.Ball(1000.0).check_points(np.random.default_rng(point_seed), sizes[0], 200_000)
  return network.with_rare_unit(network.random_net(seed, sizes), fraction, points)


def middle_unit(net, depth, j, missing):
  """Unit j of hidden layer `depth` of `net` as a layer.Unit whose weights from `missing` features are unknown."""
  w = net.weights[depth][:, j].copy()
  w[missing] = 0.0
  known = np.ones(len(w), bool)
  known[missing] = False
  unit = layers.Unit(w, known, float(net.biases[depth][j]), 1e-12, np.ones(1))
  unit.normalise()
  return unit


def unit_row(net, depth, j):
  """Unit j of hidden layer `depth` of `net`: its weights and bias divided by the norm of its weights (how a
  layer.Unit with every weight known stores it)."""
  return np.append(net.weights[depth][:, j], net.biases[depth][j]) / np.linalg.norm(net.weights[depth][:, j])


def surface_point(pre, rng, d, x=None):
  """A point where the function `pre` of x (continuous, piecewise linear) is 0, between two of the points x
  (default 20,000 ~ N(0, I)): those where it is largest and least."""
  x = rng.normal(size=(20000, d)) if x is None else x
  p = pre(x)
  a, b = x[np.argmax(p)], x[np.argmin(p)]
  for _ in range(200):
    m = (a + b) / 2
    a, b = (m, b) if pre(m[None])[0] > 0 else (a, m)
  return (a + b) / 2
