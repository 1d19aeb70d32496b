"""The deep weight comparison (functional_equivalence/deep/align.py): a weight the evaluation points do not determine
(no point has both of its ends active) is set aside and counted; one they determine is still compared."""

import math

import numpy as np

from extraction.oracle import Oracle
from functional_equivalence.deep import align, attack, network
from functional_equivalence.deep.network import DeepNet
from tests.deep_points import eval_points, rare_net


def _net(w_off_to_rare: float, w_on_to_rare: float = -0.3) -> DeepNet:
  """2-3-2-1: first-layer units relu(x1), relu(-x1), relu(x2); second-layer unit 0 = relu(w relu(x1) + relu(-x1)
  + a relu(x2) - 1) with a < 0 is active only where x1 < -1, where relu(x1) is 0: its weight w from relu(x1) never
  matters while it is on (nor makes it turn on when w <= 0: where x1 > 0 its preactivation is <= -1)."""
  w0 = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
  w1 = np.array([[w_off_to_rare, 0.5], [1.0, 0.3], [w_on_to_rare, -0.7]])
  w2 = np.array([[2.0], [-1.5]])
  return DeepNet((w0, w1, w2), (np.zeros(3), np.array([-1.0, 0.2]), np.array([0.1])))


def _points():
  rng = np.random.default_rng(0)
  return np.concatenate([rng.normal(size=(5000, 2)), 100 * rng.normal(size=(5000, 2))])


def test_a_weight_never_seen_with_both_ends_active_is_set_aside():
  x = _points()
  true, rec = _net(0.0), _net(-0.5)
  assert np.array_equal(network.logits(true, x), network.logits(rec, x))  # the same function everywhere
  masks = align.undetermined(true, x)
  assert masks[0][0, 0] and masks[0].sum() == 1, masks  # relu(x1) -> the rare unit, nothing else
  err = align.weight_error(true, rec, x)
  assert err["undetermined_weights"] == [1]
  assert err["max_weight_error"] <= 1e-15, err
  fields = dict(err, agreement=1.0, domain_agreement=1.0)
  assert align.verdict(true, rec, fields) == "exact; 1 weights undetermined on the points"


def test_a_determined_weight_is_still_compared():
  x = _points()
  true = _net(0.0)
  assert align.weight_error(true, _net(0.0, -0.3 - 1e-9), x)["max_weight_error"] > 5e-10
  off = align.weight_error(true, _net(0.0, -0.5), x)
  assert math.isinf(off["max_weight_error"]) and off["matched_units"][1] == 1, off


def test_a_permuted_rescaled_copy_stays_exact_with_its_own_masks():
  rng = np.random.default_rng(1)
  net = network.random_net(3, (6, 5, 4, 2))
  x = rng.normal(size=(20_000, 6))
  perm = rng.permutation(5)
  scale = rng.uniform(0.5, 2.0, size=5)
  w0, w1, w2 = net.weights
  b0, b1, b2 = net.biases
  copy = DeepNet((w0[:, perm] * scale, w1[perm] / scale[:, None], w2), (b0[perm] * scale, b1, b2))
  err = align.weight_error(net, copy, x)
  assert err["max_weight_error"] < 1e-14
  assert [int(m.sum()) for m in align.undetermined(copy, x)] == err["undetermined_weights"]


def test_the_polish_points_cover_every_feature_of_a_unit():
  # deep.attack._covering_points: a feature on at none of a unit's first 8 surface points (a rarely active unit)
  # adds one point where it is on, so the polish step fits answers that depend on that weight
  from functional_equivalence.deep import attack
  from functional_equivalence.deep.layer import Unit

  prefix = DeepNet((np.eye(3),), (np.zeros(3),))  # features relu(x)
  rng = np.random.default_rng(0)
  off = np.abs(rng.normal(size=(10, 3))) * np.array([1.0, 1.0, -1.0])  # feature 2 off
  on = np.array([[0.5, -0.2, 0.7]])  # feature 2 on
  points = list(np.concatenate([off, on, off[:3]]))
  unit = Unit(np.ones(3) / np.sqrt(3), np.ones(3, bool), 0.0, 1e-12, np.ones(1), points=points)
  chosen = attack._covering_points(prefix, unit)
  assert len(chosen) == 9 and np.array_equal(chosen[:8], off[:8]) and np.array_equal(chosen[8], on[0])
  first_layer = attack._covering_points(DeepNet((), ()), unit)  # inputs are always live: the first 8
  assert np.array_equal(first_layer, np.array(points[:8]))


def test_polish_points_go_around_a_unit_seen_mostly_beyond_the_domain():
  # deep.attack._rare_unit_points: a unit with fewer precise points inside the domain than its known features + 1
  # (fe_deep_rare's 10-8-6-1 seed 6: 40 far out, 2 inside once a read kink joined them) gets 8 polish points around
  # each of its covering points; one with enough points inside gets none (the rule was "none inside": 2 turned it off)
  from functional_equivalence import domain
  from functional_equivalence.deep.layer import Unit

  dom, net = domain.Ball(1000.0), network.random_net(2, (10, 8, 6, 1))  # no rarely active unit: rare_points gives none
  prefix = net.prefix(1)
  rng = np.random.default_rng(0)
  far = rng.normal(size=(40, 10)) * 5000.0
  inside = rng.normal(size=(12, 10)) * 20.0

  def around(points):
    unit = Unit(np.ones(8) / np.sqrt(8), np.ones(8, bool), 0.0, 1e-12, np.ones(1), points=list(points))
    return attack._rare_unit_points(net, [(prefix, unit)], dom, attack.Config())

  mostly_far = around(np.concatenate([far, inside[:2]]))
  assert len(mostly_far) >= 64 and not dom.contains(mostly_far).all()
  assert len(around(np.concatenate([far, inside]))) == 0


def test_a_weight_traded_with_the_linear_remainder_is_compared_inside_it():
  # last-hidden unit k on wherever feature j is (on these points): w_jk h_j v_k is a linear term; a network with
  # w_jk + delta and a unit relu(h_j) (always >= 0: folded into the remainder) of output -delta v_k is the same
  # function there. Before: unit k unmatched (its weights differ), error inf (random 10-8-8-8-1 seed 8's run)
  true = network.random_net(8, (10, 8, 8, 8, 1))
  x = eval_points(10, count=50_000)
  pre = network.preactivations(true, x)
  feat, on = pre[1] > 0, pre[2] > 0
  pairs = np.argwhere(((feat.T.astype(float) @ on) > 0) & ((feat.T.astype(float) @ ~on) == 0))
  assert len(pairs)
  j, k = pairs[0]
  delta = 0.3
  w2 = true.weights[2].copy()
  w2[j, k] += delta
  extra = np.eye(8)[:, j : j + 1]
  rec = DeepNet(
    true.weights[:2]
    + (np.concatenate([w2, extra], axis=1), np.concatenate([true.weights[3], -delta * true.weights[3][k : k + 1]])),
    true.biases[:2] + (np.append(true.biases[2], 0.0), true.biases[3]),
  )
  a, b = network.logits(true, x), network.logits(rec, x)
  assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(a))
  err = align.weight_error(true, rec, x)
  assert err["max_weight_error"] <= 1e-12 and err["remainder_weights"] >= 1, err
  assert align.weight_error(true, network.random_net(9, (10, 8, 8, 8, 1)), x)["max_weight_error"] == math.inf


def test_a_rare_unit_recovered_turned_over_is_matched_in_the_victims_orientation():
  # random 12-8-6-3 seed 3 with a second-layer unit on at 0.03% of the ball: the attack returns it as relu(-z) (on at
  # 99.96%) plus a linear term; its weights from features never on with the victim's unit were kept on its side
  # only, so it matched nothing (before: "wrong: units unmatched"); turned to the victim's orientation first, exact
  true = rare_net(3, (12, 8, 6, 3), point_seed=[99, 4])
  result = attack.extract(
    Oracle(network.backend(true), output="logits", record_inputs=False), 12, attack.Config(), seed=408810553
  )
  x = eval_points(12, count=50_000)
  err = align.weight_error(true, result.net, x)
  assert result.net.sizes != true.sizes and err["max_weight_error"] <= 2.0**-30, err


def test_a_unit_feeding_only_dead_units_is_set_aside_as_inert():
  # a pruned network: first-layer unit 0's one remaining weight goes to second-layer unit 1, which is never on (bias
  # -1e6), so unit 0 has no path to the output; before, only units never on or with no weight out were set aside
  rng = np.random.default_rng(0)
  w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=3)
  w1 = rng.normal(size=(3, 2))
  w1[0] = [0.0, 1.0]
  net = DeepNet((w0, w1, rng.normal(size=(2, 1))), (b0, np.array([0.5, -1e6]), np.zeros(1)))
  x = eval_points(4)
  live = align.live_units(net, x)
  assert live[0].tolist() == [False, True, True] and live[1].tolist() == [True, False]
  assert align.prune(net, x)[1] == [1, 1]
  assert np.allclose(network.logits(align.prune(net, x)[0], x), network.logits(net, x))
