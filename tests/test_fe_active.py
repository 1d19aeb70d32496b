"""Points of the domain where a rarely active unit is on (functional_equivalence/deep/active.py), found on the
network alone (no queries), and the attack's polish step that uses them."""

import numpy as np

from functional_equivalence import domain
from functional_equivalence.deep import active, network
from tests.deep_points import rare_net

DOM = domain.Ball(1000.0)


def test_points_are_found_inside_the_domain_where_a_rare_unit_is_on():
  net = rare_net(3, (10, 8, 6, 1))
  rng = np.random.default_rng(0)
  z = network.preactivations(net.prefix(2), DOM.check_points(rng, 10, 4096))[1][:, 0]
  assert np.sum(z > 0) < 16  # rare among the candidates: the ascent has to find its region
  x = active.rare_points(net, DOM, rng, want=16)
  assert 8 <= len(x) <= 16 and DOM.contains(x).all()
  assert np.all(network.preactivations(net.prefix(2), x)[1][:, 0] > 0)


def test_deeper_rare_unit_and_none_for_a_network_without_one():
  net = rare_net(0, (10, 8, 8, 8, 1))
  x = active.rare_points(net, DOM, np.random.default_rng(1))
  on = network.preactivations(net.prefix(3), x)[2][:, 0] > 0
  assert on.sum() >= 8 and DOM.contains(x).all()
  plain = network.random_net(2, (10, 8, 6, 1))
  assert active.rare_points(plain, DOM, np.random.default_rng(1)).shape == (0, 10)


def test_a_unit_on_nowhere_in_the_domain_gets_no_points():
  net = network.random_net(3, (10, 8, 6, 1))
  biases = list(net.biases)
  biases[1] = biases[1] - np.eye(6)[0] * 1e6  # off over the whole ball
  x = active.unit_points(
    network.DeepNet(net.weights, tuple(biases)),
    1,
    0,
    DOM,
    DOM.check_points(np.random.default_rng(0), 10, 4),
    np.random.default_rng(0),
    16,
  )
  assert x.shape == (0, 10)
