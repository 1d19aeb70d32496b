"""Evaluation: matching across permutation and positive scale, logit differences, inert units, wrong signs."""

import math

import numpy as np

from functional_equivalence import align, victims


def _permuted_rescaled(net, seed=0):
  rng = np.random.default_rng(seed)
  h = net.shape[1]
  perm, lam = rng.permutation(h), rng.uniform(0.1, 10, h)
  return victims.TwoLayerNet(net.w0[:, perm] * lam, net.b0[perm] * lam, net.w1[perm] / lam[:, None], net.b1)


def test_permuted_and_rescaled_copy_is_exact():
  net = victims.random_net(0, 12, 9, 4)
  err = align.weight_error(net, _permuted_rescaled(net))
  assert err["max_weight_error"] < 1e-12 and err["matched_units"] == 9 and err["extra_units"] == 0
  assert err["weight_error_bits"] > 40
  agree = align.random_agreement(net, _permuted_rescaled(net), 5000, chunk=1000)
  assert agree["agreement"] == 1.0 and agree["max_logit_error"] < 1e-12 and agree["count"] == 5000


def test_error_is_the_largest_aligned_difference():
  net = victims.random_net(0, 12, 9, 4)
  other = victims.TwoLayerNet(net.w0, net.b0, net.w1.copy(), net.b1 + np.array([0, 0, 1e-6, 0]))
  other.w1[4, 1] += 2e-7
  err = align.weight_error(net, other)
  assert math.isclose(err["max_weight_error"], 1e-6, rel_tol=1e-9) and math.isclose(
    err["max_error_w1"], 2e-7, rel_tol=1e-6
  )


def test_differences_ignore_a_common_shift_of_the_logits():
  net = victims.random_net(1, 6, 5, 3)
  shift = np.random.default_rng(0).normal(size=5)
  shifted = victims.TwoLayerNet(net.w0, net.b0, net.w1 + shift[:, None], net.b1 + 3.0)
  assert align.weight_error(net, shifted, differences=True)["max_weight_error"] < 1e-12
  assert align.weight_error(net, shifted)["max_weight_error"] > 1.0
  x = np.random.default_rng(1).normal(size=(100, 6))
  assert align.logit_agreement(net, shifted, x, differences=True)["max_logit_error"] < 1e-12


def test_inert_units_are_set_aside_and_constants_folded_into_b1():
  net = victims.random_net(2, 6, 5, 3)
  w0, b0 = net.w0.copy(), net.b0.copy()
  w0[:, 1], b0[1] = 0, 2.0  # constant 2 * w1[1]
  true = victims.TwoLayerNet(w0, b0, net.w1, net.b1)
  keep = [0, 2, 3, 4]
  rec = victims.TwoLayerNet(w0[:, keep], b0[keep], net.w1[keep], net.b1 + 2.0 * net.w1[1])
  err = align.weight_error(true, rec)
  assert err["inert_true_units"] == 1 and err["max_weight_error"] < 1e-12


def test_a_wrong_orientation_is_not_matched_but_reported():
  net = victims.random_net(3, 6, 5, 3)
  w0, b0 = net.w0.copy(), net.b0.copy()
  w0[:, 2], b0[2] = -w0[:, 2], -b0[2]
  err = align.weight_error(net, victims.TwoLayerNet(w0, b0, net.w1, net.b1))
  assert err["max_weight_error"] == math.inf and err["sign_flipped_units"] == 1 and err["matched_units"] == 4
  assert align.bits(math.inf) == -math.inf and align.bits(0.0) == 64.0 and align.bits(2.0**-30) == 30.0


def test_units_dead_on_the_domain_are_set_aside_on_both_sides():
  from functional_equivalence import domain

  net = victims.random_net(4, 6, 5, 3)
  far = np.zeros((6, 1))
  far[0, 0] = 1.0
  # a unit active only where x_0 > 50: outside the ball of radius 10, in the recovered network only
  rec = victims.TwoLayerNet(
    np.concatenate([net.w0, far], 1),
    np.concatenate([net.b0, [-50.0]]),
    np.concatenate([net.w1, np.ones((1, 3))]),
    net.b1,
  )
  assert align.weight_error(net, rec)["max_weight_error"] == math.inf
  err = align.weight_error(net, rec, domain=domain.Ball(10.0))
  assert err["max_weight_error"] < 1e-12 and err["extra_units"] == 0


def test_centered_logit_error_ignores_a_common_shift_and_measures_the_rest():
  net = victims.random_net(1, 6, 5, 3)
  x = np.random.default_rng(2).normal(size=(50, 6)) * 100.0  # far from the origin too
  shifted = victims.TwoLayerNet(net.w0, net.b0, net.w1 + 0.7, net.b1 - 2.0)  # the same shift for every class
  assert np.max(align.centered_logit_error(net, shifted, x)) < 1e-9
  moved = victims.TwoLayerNet(net.w0, net.b0, net.w1, net.b1 + np.array([0.3, 0.0, 0.0]))
  # class 0 up by 0.3: centred, class 0 moves by 0.2 and the others by -0.1, at every input
  np.testing.assert_allclose(align.centered_logit_error(net, moved, x), 0.2, rtol=1e-9)
