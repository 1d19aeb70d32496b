"""wide_signs: the voted signs of a first hidden layer wider than the input are checked by the next layer's
surfaces, followed with an affine term allowed. Random victims with the true first layer as prefix and chosen
units flipped: the audit finds exactly the flipped ones (one, two, far from the origin too, and more than the input
has dimensions: by the next layer's weights, with flips of 0 or 1 where the equations leave them free, and with
features always on along a surface), flips nothing when the signs are right, and refuses to decide when a wrong
unit was not voted or the surfaces do not determine the flips. The whole attack on an
iris-trained 4-16-16-3, whose votes got two signs wrong, returns its first layer with every sign right."""

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import queries
from functional_equivalence.deep import align, attack, network, wide_signs
from functional_equivalence.deep import layer as layers


def _flipped(net, units):
  flip = np.ones(net.weights[0].shape[1])
  flip[list(units)] = -1.0
  return network.DeepNet((net.weights[0] * flip,), (net.biases[0] * flip,))


def _audit(net, prefix, center=0.0, uncertain=None, seed=0):
  d = net.sizes[0]
  q = queries.Querier(Oracle(network.backend(net), output="logits", record_inputs=False))
  c = np.full(d, center)
  cfg = layers.LayerConfig(center=c, scale=1.0 + abs(center) / 10, reach=16.0, lines_per_round=4)
  uncertain = np.ones(net.weights[0].shape[1], bool) if uncertain is None else uncertain
  return wide_signs.audit(q, prefix, uncertain, cfg, None, np.random.default_rng(seed), {})


@pytest.mark.parametrize(
  "seed,sizes,wrong,center",
  [
    (0, (3, 8, 5, 1), (2,), 0.0),
    (1, (4, 10, 6, 2), (1, 7), 0.0),
    (2, (3, 8, 6, 1), (5,), 200.0),
    (0, (3, 8, 8, 1), (0, 1, 2, 3), 0.0),  # more wrong units than inputs: by the next layer's weights
    (2, (4, 10, 10, 2), (1, 3, 5, 7, 9), 0.0),
    (0, (3, 8, 5, 1), (0, 1, 2, 3), 0.0),  # 5 surfaces leave the flips free: the binary solution is unique
    pytest.param(0, (5, 20, 10, 2), (3, 5, 8, 17, 18, 19), 0.0, marks=pytest.mark.slow),  # features always on
    (1, (3, 12, 6, 1), (0, 4, 6, 10), -300.0),
  ],
)
def test_the_audit_finds_the_flipped_units(seed, sizes, wrong, center):
  net = network.random_net(seed, sizes)
  mask, why = _audit(net, _flipped(net, wrong), center)
  assert sorted(np.flatnonzero(mask)) == sorted(wrong), why


def test_right_signs_are_left_alone():
  net = network.random_net(0, (3, 8, 5, 1))
  mask, why = _audit(net, net.prefix(1))
  assert not mask.any() and "hold" in why


def test_units_not_voted_are_never_flipped():
  net = network.random_net(1, (4, 10, 6, 2))
  uncertain = np.ones(10, bool)
  uncertain[7] = False  # one of the two wrong units was "decided exactly": the span test cannot name 2 units
  mask, why = _audit(net, _flipped(net, (1, 7)), uncertain=uncertain)
  assert not mask.any(), why


def test_binary_flips_keeps_only_what_every_solution_shares():
  """Flips sol + null^T c that are all 0 or 1: one solution determines every flip; two leave the flips they differ
  on undetermined; none, or more freedom than may be listed, decide nothing."""
  one = wide_signs._binary_flips(np.array([0.6, 0.4, 1.0, 0.2]), np.array([[1.0, -1.0, 0.0, 2.0]]), np.ones(4, bool))
  assert one[2] == 1 and one[0].all() and list(one[1]) == [1, 0, 1, 1]  # c = 0.4; c = -0.6 puts the last at -1
  two = wide_signs._binary_flips(np.array([0.5, 0.5, 1.0]), np.array([[1.0, -1.0, 0.0]]), np.ones(3, bool))
  assert two[2] == 2 and list(two[0]) == [False, False, True] and two[1][2] == 1
  none = wide_signs._binary_flips(np.array([0.5, 0.3, 1.0]), np.array([[1.0, 1.0, 0.0]]), np.ones(3, bool))
  assert none[2] == 0 and not none[0].any()
  kept = np.array([True, False, True])  # a unit no surface weighs is never determined
  fixed = wide_signs._binary_flips(np.array([1.0, 0.0, 0.0]), np.zeros((0, 2)), kept)
  assert fixed[2] == 1 and list(fixed[0]) == [True, False, True]
  rng = np.random.default_rng(0)
  many = wide_signs._binary_flips(rng.random(30), rng.normal(size=(20, 30)), np.ones(30, bool), most=14)
  assert many[2] == -1 and not many[0].any()


@pytest.mark.slow
def test_iris_first_layer_signs_right_after_the_audit():
  net, _ = network.tabular_net("iris", 0, (16, 16))
  oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
  result = attack.extract(oracle, 4, attack.Config(layers=1, max_seconds=300), seed=121999420)
  assert result.stats["signs_flipped"] >= 1
  true = align.canonical(net)[0]
  tw, rw = true.weights[0], result.net.weights[0]
  tn, rn = tw / np.linalg.norm(tw, axis=0), rw / np.linalg.norm(rw, axis=0)
  match = np.argmax(np.abs(tn.T @ rn), axis=0)
  assert len(set(match)) == 16
  assert np.all(np.sum(tn[:, match] * rn, axis=0) > 1 - 1e-9)
