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


def test_a_rare_unit_gets_points_where_each_of_its_features_is_on_with_it():
  # fe_deep_rare's 10-8-8-8-1 seed 1: around the first point rare_points finds, the rare unit's feature 6 is off,
  # while it is on at about half the ball's points where the unit is; the polish step's points met the two together
  # nowhere, left that weight as the peeling read it, and moved the others to fit the points it had (returned wrong:
  # 2^-16.9). co_active_points: for every feature on with the unit somewhere, a point where both are on
  net = rare_net(1, (10, 8, 8, 8, 1), point_seed=[99, 5])
  pre = network.preactivations(net.prefix(3), DOM.check_points(np.random.default_rng(3), 10, 1_000_000))
  on = pre[2][:, 0] > 0
  together = np.flatnonzero(np.any((pre[1] > 0) & on[:, None], axis=0))  # features on with it somewhere
  assert len(together) >= 6
  x = active.co_active_points(net, DOM, np.random.default_rng(1))
  pre = network.preactivations(net.prefix(3), x)
  assert DOM.contains(x).all()
  for k in together:
    assert np.any((pre[1][:, k] > 0) & (pre[2][:, 0] > 0)), k


def test_both_on_goes_deeper_into_the_region_where_a_unit_and_a_feature_are_on():
  # a point just inside (feature 2 at 1e-3): a wrong weight from feature 2 changes the answers by 1e-3 of itself
  # there. `deeper` steps move it inside both regions, the smaller margin growing; without them it stays
  prefix = network.DeepNet((np.eye(3),), (np.zeros(3),))  # features relu(x)
  w, b, k = np.array([1.0, 1.0, 0.0]), -1.0, 2
  x = np.array([[0.6, 0.5, 1e-3]])
  dom = domain.Ball(100.0)

  def margin(x):
    h = np.maximum(x, 0.0)
    return min(float(h[0] @ w + b) / np.sqrt(2.0), float(h[0, k]))

  on, same = active.both_on(prefix, w, b, k, x, dom)
  assert on.all() and np.array_equal(same, x)
  on, deep = active.both_on(prefix, w, b, k, x, dom, deeper=32)
  assert on.all() and dom.contains(deep).all() and margin(deep) > 100 * margin(x)
