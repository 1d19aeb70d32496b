"""Victims built to break the claim of equivalence on the domain: hyperplanes far from the origin, units with tiny
output weights, two units on one hyperplane, units affine on the whole domain, a box domain, another input scale,
and the probabilities oracle's shorter reach. Each is checked against the victim's weights over the whole domain."""
import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import align, attack, certify, domain, victims


def _extract(net, output="logits", seed=3, **cfg):
  oracle = Oracle(victims.backend(net), output=output, record_inputs=False)
  return attack.extract(oracle, net.shape[0], attack.Config(**cfg), seed=seed)


def _far(net, dists, sign):
  """`net` with units 0, 1, ... moved (bias only) so that their hyperplanes lie at `dists` from the origin, on the
  side that keeps them active (sign +1) or inactive (sign -1) at the origin."""
  b0 = net.b0.copy()
  for j, dist in enumerate(dists):
    b0[j] = sign * dist * np.linalg.norm(net.w0[:, j])
  return victims.TwoLayerNet(net.w0, b0, net.w1, net.b1)


def _sphere_agreement(net, rec, radius, count=4000, seed=0):
  x = np.random.default_rng(seed).normal(size=(count, net.shape[0]))
  return align.logit_agreement(net, rec, radius * x / np.linalg.norm(x, axis=1, keepdims=True))


def _row_errors(true, rec):
  """Per recovered unit: |u_rec - u_true| against the nearest true row (up to orientation)."""
  tu = (true.w0 / np.linalg.norm(true.w0, axis=0)).T
  ru = (rec.w0 / np.linalg.norm(rec.w0, axis=0)).T
  cos = ru @ tu.T
  j = np.argmax(np.abs(cos), axis=1)
  return np.linalg.norm(ru - np.sign(cos[np.arange(len(j)), j])[:, None] * tu[j], axis=1)


@pytest.mark.parametrize("sign", [1, -1])
def test_far_hyperplanes_are_found_and_the_whole_ball_agrees(sign):
  net = _far(victims.random_net(1, 64, 32, 10), [50, 300, 900], sign)
  result = _extract(net)
  assert result.hidden_units_found == 32 and result.domain == domain.Ball(1000.0)
  for radius in (50, 300, 900, 1000):
    agree = _sphere_agreement(net, result.net, radius)
    assert agree["agreement"] == 1.0 and agree["max_logit_error"] < 1e-5, (radius, agree)
  cert = certify.certify(net, result.net, domain.Ball(1000.0))
  assert cert["bound"] < 1e-4 and cert["unmatched_groups"] == 0
  err = align.weight_error(net, result.net)
  # units active at the origin with biases ~900 make |logits| ~160 there: every finite difference loses ~7 bits
  assert err["max_weight_error"] <= (2.0 ** -30 if sign < 0 else 2.0 ** -20), err


@pytest.mark.parametrize("shape,scales", [((784, 64, 10), {5: 1e-6, 9: 1e-4}), ((64, 16, 10), {3: 1e-8})])
def test_units_with_tiny_output_weights_are_recovered_with_their_precision(shape, scales):
  net = victims.random_net(2, *shape)
  w1 = net.w1.copy()
  for unit, s in scales.items():
    w1[unit] *= s
  net = victims.TwoLayerNet(net.w0, net.b0, w1, net.b1)
  result = _extract(net)
  assert result.hidden_units_found == shape[1]
  actual, estimate = _row_errors(net, result.net), np.array(result.units["row_error"])
  assert np.all(actual <= estimate), np.c_[actual, estimate][actual > estimate]    # the stated precision holds
  tiny = np.isin(np.argmax(np.abs((result.net.w0 / np.linalg.norm(result.net.w0, axis=0)).T @ net.w0), 1),
                 list(scales))
  assert np.all(estimate[~tiny] < 1e-8) and np.all(estimate[tiny] > 1e-8) and np.all(actual[~tiny] < 1e-9)
  dom = domain.Ball(1000.0)
  assert align.domain_agreement(net, result.net, dom, 4000)["agreement"] == 1.0
  assert certify.certify(net, result.net, dom)["bound"] < 1e-6


def test_a_unit_below_the_search_threshold_changes_the_ball_by_less_than_its_effect():
  net = victims.random_net(2, 64, 16, 10)
  w1 = net.w1.copy()
  w1[3] *= 1e-13                                     # a slope change of ~1e-14 relative: below what the search sees
  net = victims.TwoLayerNet(net.w0, net.b0, w1, net.b1)
  result = _extract(net)
  assert result.hidden_units_found == 15
  effect = np.max(np.abs(w1[3])) * (1000 * np.linalg.norm(net.w0[:, 3]) + abs(net.b0[3]))
  assert certify.certify(net, result.net, domain.Ball(1000.0))["bound"] < 1e-7 + effect


@pytest.mark.parametrize("second", ["same", "generic"])
def test_two_opposite_units_on_one_hyperplane(second):
  net = victims.random_net(3, 16, 8, 10)
  w0, b0, w1 = net.w0.copy(), net.b0.copy(), net.w1.copy()
  w0[:, 1], b0[1] = -w0[:, 0], -b0[0]                # relu(z) and relu(-z): kinks on one hyperplane
  w1[1] = w1[0] if second == "same" else 0.3 * net.w1[5]   # c relu(z) + c relu(-z) = c |z|
  pair = victims.TwoLayerNet(w0, b0, w1, net.b1)
  result = _extract(pair)
  assert result.stats["layer2_model"] == "pairs" and result.stats["paired_units"] == 1
  assert result.hidden_units_found == 8 and result.units["kind"].count("twin") == 1
  assert align.weight_error(pair, result.net)["max_weight_error"] <= 2.0 ** -32


def test_two_units_with_one_hyperplane_and_orientation_are_one_unit():
  net = victims.random_net(3, 16, 8, 10)
  w0, b0 = net.w0.copy(), net.b0.copy()
  w0[:, 1], b0[1] = 2 * w0[:, 0], 2 * b0[0]
  dup = victims.TwoLayerNet(w0, b0, net.w1, net.b1)
  result = _extract(dup)
  err = align.weight_error(dup, result.net)
  assert result.hidden_units_found == 7 and err["merged_true_units"] == 1 and err["max_weight_error"] <= 2.0 ** -32


def test_units_affine_on_the_whole_ball_become_linear_units():
  # unit 0 is active everywhere within 10^6 of the origin; unit 1's hyperplane lies at 5000, outside the ball
  net = _far(victims.random_net(4, 32, 12, 10), [1e6, 5e3], 1)
  result = _extract(net)
  assert result.stats["layer2_model"] == "affine" and result.stats["linear_units"] >= 1
  assert result.units["kind"].count("linear") == result.stats["linear_units"]
  dom = domain.Ball(1000.0)
  for radius in (1, 300, 1000):
    assert _sphere_agreement(net, result.net, radius)["agreement"] == 1.0
  size = np.max(np.abs(victims.logits(net, dom.check_points(np.random.default_rng(0), 32, 100))))
  assert certify.certify(net, result.net, dom)["bound"] < 1e-8 * size


def test_a_box_domain():
  net = victims.random_net(5, 50, 20, 6)
  net = victims.TwoLayerNet(3 * net.w0, net.b0 - 1.5 * net.w0.sum(0), net.w1, net.b1)   # hyperplanes cross [0,1]^d
  box = domain.Box(0.0, 1.0)
  result = _extract(net, domain=box)
  assert result.hidden_units_found == 20 and result.domain.describe() == {"kind": "box", "low": 0.0, "high": 1.0}
  assert align.domain_agreement(net, result.net, box, 4000)["agreement"] == 1.0
  assert certify.certify(net, result.net, box)["bound"] < 1e-8
  assert align.weight_error(net, result.net, domain=box)["max_weight_error"] <= 2.0 ** -30


def test_another_input_scale():
  net = victims.random_net(7, 30, 20, 4)
  net = victims.TwoLayerNet(net.w0 / 100, net.b0, net.w1, net.b1)   # inputs of scale ~100
  result = _extract(net, scale=100.0)
  assert result.domain == domain.Ball(1e5) and result.hidden_units_found == 20
  assert align.weight_error(net, result.net)["max_weight_error"] <= 2.0 ** -30
  assert _sphere_agreement(net, result.net, 1e5)["agreement"] == 1.0


def test_probabilities_report_their_shorter_reach():
  net = _far(victims.random_net(1, 64, 32, 10), [50, 300, 900], -1)
  result = _extract(net, output="probabilities")
  # the lines stop where log-probability ratios reach 600: each still crosses the near hyperplanes, not the one
  # at 900, and the result says how far the search reached
  assert result.stats["search_radius"] < 1000.0 and result.hidden_units_found >= 31
  assert _extract(net).stats["search_radius"] >= 8 * 1000.0       # logits: 64 R / 8


def test_a_unit_the_lines_miss_is_found_from_where_the_check_fails(monkeypatch):
  net = _far(victims.random_net(6, 16, 8, 4), [300], -1)    # active on ~10% of the sphere of radius 1000
  a, b = net.w0[:, 0] / np.linalg.norm(net.w0[:, 0]), -300.0
  real = attack.search.find_kinks

  def blind(query, starts, dirs, t_max, **kwargs):   # random lines (from near 0) never see unit 0's kinks
    kinks = real(query, starts, dirs, t_max, **kwargs)
    x = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
    keep = (np.abs(x @ a + b) > 1e-6 * np.linalg.norm(x, axis=1)) | (np.linalg.norm(starts, axis=1)[kinks.line] > 100)
    return attack.search.Kinks(kinks.line[keep], kinks.t[keep], kinks.unresolved, kinks.queries)
  monkeypatch.setattr(attack.search, "find_kinks", blind)
  result = _extract(net, check_points=400)
  assert result.stats["repair_rounds"] >= 1 and result.hidden_units_found == 8
  assert align.domain_agreement(net, result.net, domain.Ball(1000.0), 4000)["agreement"] == 1.0
