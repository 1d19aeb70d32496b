"""The domain of the claim (ball, box) and the worst-case certificate: exact maxima of affine functions, points on
hyperplanes inside the domain, a bound that is never below the true max difference and is tight on equal nets."""
import itertools

import numpy as np
import pytest

from functional_equivalence import certify, domain, victims


def test_max_affine_is_the_exact_maximum():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 4)), rng.normal(size=5)
  ball, box = domain.Ball(3.0), domain.Box(-1.0, 2.0)
  # ball: attained at R a / |a|, and no sampled point of the ball beats it
  best = 3.0 * a / np.linalg.norm(a, axis=1, keepdims=True)
  np.testing.assert_allclose(ball.max_affine(a, b), np.sum(a * best, 1) + b, rtol=1e-14)
  x = ball.project(rng.normal(size=(20000, 4)) * 3)
  assert np.all((x @ a.T + b).max(0) <= ball.max_affine(a, b) + 1e-12)
  # box: the maximum over its 16 vertices
  vertices = np.array(list(itertools.product([-1.0, 2.0], repeat=4)))
  np.testing.assert_allclose(box.max_affine(a, b), (vertices @ a.T + b).max(0), rtol=1e-14)
  np.testing.assert_allclose(domain.max_abs_affine(box, a, b), np.abs(vertices @ a.T + b).max(0), rtol=1e-14)


@pytest.mark.parametrize("dom", [domain.Ball(10.0), domain.Box(0.0, 1.0)])
def test_check_and_hyperplane_points_lie_in_the_domain(dom):
  rng = np.random.default_rng(1)
  d = 6
  x = dom.check_points(rng, d, 60)
  assert x.shape == (60, d) and np.all(dom.contains(x))
  u = rng.normal(size=(4, d))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  beta = -(u @ dom.center(d)) + np.array([0.1, -0.2, 0.3, 1e3])   # the last one misses the domain
  pts, which = dom.hyperplane_points(u, beta, rng, 3)
  assert len(pts) > 0 and np.all(dom.contains(pts)) and 3 not in which
  np.testing.assert_allclose(np.sum(pts * u[which], 1) + beta[which], 0, atol=1e-12)


def test_ball_check_points_reach_the_radius():
  r = np.linalg.norm(domain.Ball(1000.0).check_points(np.random.default_rng(0), 5, 60), axis=1)
  assert np.isclose(r.max(), 1000.0) and r.min() < 2.0


def test_parse_domains_and_bad_boxes():
  assert domain.parse(None, None, 2.0) == domain.Ball(2000.0)
  assert domain.parse(5.0, None, 2.0) == domain.Ball(5.0)
  assert domain.parse(None, ["0", "255"], 1.0) == domain.Box(0.0, 255.0)
  for bad in (["1"], ["a", "2"], ["2", "1"]):
    with pytest.raises(ValueError, match="LOW"):
      domain.parse(None, bad, 1.0)


def _rescaled(net, seed=0):
  rng = np.random.default_rng(seed)
  h = net.shape[1]
  perm, lam = rng.permutation(h), rng.uniform(0.1, 10, h)
  return victims.TwoLayerNet(net.w0[:, perm] * lam, net.b0[perm] * lam, net.w1[perm] / lam[:, None], net.b1)


@pytest.mark.parametrize("dom", [domain.Ball(100.0), domain.Box(-3.0, 5.0)])
def test_certificate_bounds_the_true_max_from_above(dom):
  net = victims.random_net(0, 8, 6, 3)
  rng = np.random.default_rng(2)
  for trial in range(4):
    other = victims.TwoLayerNet(*(a + 1e-4 * rng.normal(size=a.shape) for a in _rescaled(net, trial)))
    cert = certify.certify(net, other, dom)
    found = certify.search_max(net, other, dom, seed=trial)
    x = dom.check_points(rng, 8, 20000)
    sampled = np.max(np.abs(victims.logits(net, x) - victims.logits(other, x)))
    assert sampled <= found["found"] <= cert["bound"] + 1e-12
    assert cert["bound"] < 20 * found["found"]   # and not absurdly loose on matched networks


def test_certificate_of_equal_networks_is_rounding_and_a_missing_unit_shows():
  net = victims.random_net(1, 10, 7, 4)
  dom = domain.Ball(1000.0)
  cert = certify.certify(net, _rescaled(net), dom)
  assert cert["bound"] < 1e-9 and cert["unmatched_groups"] == 0 and cert["groups"] == 7
  # relu(z) = relu(-z) + z, and z = relu(z + B) - B on the ball for B = 1000 |a| + |b|: unit 0 written as a
  # flipped unit plus a linear unit is the same function there
  w0, b0, w1 = net.w0, net.b0, net.w1
  big = 1e3 * np.linalg.norm(w0[:, 0]) + abs(b0[0])
  other = victims.TwoLayerNet(np.concatenate([-w0[:, :1], w0[:, 1:], w0[:, :1]], 1),
                              np.concatenate([-b0[:1], b0[1:], b0[:1] + big]), np.concatenate([w1, w1[:1]]),
                              net.b1 - big * w1[0])
  cert = certify.certify(net, other, dom)
  assert cert["bound"] < 1e-8 and cert["affine_units"] == 1
  missing = victims.TwoLayerNet(w0[:, 1:], b0[1:], w1[1:], net.b1)
  cert = certify.certify(net, missing, dom)
  found = certify.search_max(net, missing, dom)
  assert cert["unmatched_groups"] == 1 and found["found"] > 1.0 and cert["bound"] >= found["found"]


def test_differences_certify_logit_differences_only():
  net = victims.random_net(2, 6, 5, 3)
  shift = np.random.default_rng(0).normal(size=5)
  shifted = victims.TwoLayerNet(net.w0, net.b0, net.w1 + shift[:, None], net.b1 + 3.0)
  dom = domain.Ball(10.0)
  assert certify.certify(net, shifted, dom, differences=True)["bound"] < 1e-10
  assert certify.certify(net, shifted, dom)["bound"] > 1.0
