"""benchmarks/fe_dead_sides.py: the output's gradient with respect to the first hidden layer, and the first-layer
units whose kink shows nowhere on a whole side of another unit."""

import numpy as np

from benchmarks import fe_dead_sides
from functional_equivalence.deep import network


def _logits_from_h1(net, h1):
  h = h1
  for w, b in zip(net.weights[1:-1], net.biases[1:-1]):
    h = np.maximum(h @ w + b, 0.0)
  return h @ net.weights[-1] + net.biases[-1]


def test_output_gradient_with_respect_to_the_first_hidden_layer_matches_finite_differences():
  net = network.random_net(3, (5, 6, 4, 3, 2))
  x = np.random.default_rng(0).normal(size=(4, 5))
  h1 = np.maximum(x @ net.weights[0] + net.biases[0], 0.0)
  grad = fe_dead_sides.output_grad_h1(net, x)
  step = 1e-6
  for j in range(6):
    e = np.zeros(6)
    e[j] = step
    fd = (_logits_from_h1(net, h1 + e) - _logits_from_h1(net, h1 - e)) / (2 * step)
    np.testing.assert_allclose(grad[:, j], fd, atol=1e-8)


def test_a_unit_read_only_where_another_unit_is_on_is_dead_on_a_side():
  # 75%-pruned random 10-8-6-1 seed 1: first-layer unit 3 feeds only second-layer unit 0, -0.5 relu(z3) + 0.43 relu(z4)
  # - 0.87 relu(z7) - 0.03, which is off wherever z4 < 0; unpruned, no unit of that net is dead on a side
  x = np.random.default_rng(1).normal(size=(20_000, 10))
  net = network.random_net(1, (10, 8, 6, 1))
  live, dead = fe_dead_sides.dead_sides(network.pruned(net, 1, 0.75), x, 500)
  assert 3 in live and 3 in dead
  live, dead = fe_dead_sides.dead_sides(net, x, 500)
  assert live == list(range(8)) and dead == []
