"""Critical-point search and the precision probe: exact kink positions, bounded failure on bad oracles."""
import time

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import queries, search, victims
from functional_equivalence.errors import NotPiecewiseLinearError, OraclePrecisionError


def _querier(backend, output="logits"):
  return queries.Querier(Oracle(backend, output=output, record_inputs=False))


def _true_kinks(net, u, v, t_max):
  t = -(u @ net.w0 + net.b0) / (v @ net.w0)  # where each unit's pre-activation is 0 on each line
  return [np.sort(row[np.abs(row) < t_max]) for row in t]


def test_find_kinks_matches_analytic_positions():
  net = victims.random_net(0, 32, 48, 10)
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(2, 32)), rng.normal(size=(2, 32))
  q = _querier(victims.backend(net))
  kinks = search.find_kinks(q, u, v, 8.0)
  assert kinks.unresolved == 0 and kinks.queries == q.queries
  for line, true in enumerate(_true_kinks(net, u, v, 8.0)):
    found = kinks.t[kinks.line == line]
    assert len(found) == len(true) > 20
    np.testing.assert_allclose(found, true, rtol=0, atol=1e-9)
  assert kinks.queries < 20 * len(kinks.t)  # a bisection with line intersections, not a grid


@pytest.mark.parametrize("d,h", [(64, 16), (64, 256)])
def test_long_lines_find_every_kink_cheaply(d, h):
  # |t| <= 64000: the first pieces are 16000 wide while the kinks near 0 are ~0.01 apart; an interval holding a
  # cluster must never pass for one kink (the checks beside t* once used steps of 1e-3 of the interval)
  net = victims.random_net(2, d, h, 10)
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(3, d)), rng.normal(size=(3, d))
  q = _querier(victims.backend(net))
  kinks = search.find_kinks(q, u, v, 64000.0)
  for line, true in enumerate(_true_kinks(net, u, v, 64000.0)):
    found = kinks.t[kinks.line == line]
    assert len(found) == len(true)
    np.testing.assert_allclose(found, true, rtol=1e-8, atol=1e-9)
  # ~16 queries a kink, plus ~150 a line for the coarse levels far out
  assert kinks.queries < 16 * len(kinks.t) + 200 * len(u)


def test_rounding_far_outside_the_domain_is_given_up_not_fatal():
  # rounding that grows like eps |x| |J| (a line nearly parallel to a far hyperplane): below the tolerances near
  # 0, above them far out, where the search gives up instead of calling the whole oracle noisy
  net = victims.random_net(0, 8, 6, 3)
  rng = np.random.default_rng(0)
  noisy = lambda x: victims.logits(net, x) * (1 + 1e-14 * (np.linalg.norm(x, axis=1, keepdims=True) / 2000) ** 2
                                                * rng.normal(size=(len(x), 1)))
  u, v = rng.normal(size=(1, 8)), rng.normal(size=(1, 8))
  with pytest.raises(OraclePrecisionError):
    search.find_kinks(_querier(noisy), u, v, 64000.0, max_intervals=256)
  kinks = search.find_kinks(_querier(noisy), u, v, 64000.0, max_intervals=256, far=2000.0)
  [true] = _true_kinks(net, u, v, 100.0)                     # all within |x| < 2000 here
  assert kinks.unresolved > 0 and len(kinks.t) >= len(true)
  np.testing.assert_allclose(kinks.t[np.abs(kinks.t) < 100], true, atol=1e-6)


def test_find_kinks_separates_close_opposite_kinks_with_one_output():
  # g(t) = relu(t - 0.300) - 0.5 relu(t - 0.301): a convex and a concave kink 1e-3 apart, one output; the
  # intersection of the outer lines lands outside both kinks, so only the checks beside t* can reject it.
  net = victims.TwoLayerNet(np.array([[1.0, 1.0]]), np.array([-0.300, -0.301]), np.array([[1.0], [-0.5]]),
                            np.zeros(1))
  kinks = search.find_kinks(_querier(victims.backend(net)), np.zeros((1, 1)), np.ones((1, 1)), 1.0, pieces=2)
  np.testing.assert_allclose(kinks.t, [0.300, 0.301], atol=1e-12)


def test_probe_accepts_float64_relu_and_reports_precision():
  net = victims.random_net(0, 16, 12, 4)
  p = queries.probe(_querier(victims.backend(net)), 16, 1.0, np.random.default_rng(0))
  assert p.precision_bits > 45 and p.slope_change < 1e-8 and p.queries == 64


@pytest.mark.parametrize("kind,bits", [("float32", (20, 28)), ("rounded", (15, 30)), ("noise", (25, 33))])
def test_probe_refuses_imprecise_oracles(kind, bits):
  net = victims.random_net(0, 16, 12, 4)
  rng = np.random.default_rng(0)
  backend = {"float32": lambda x: victims.logits(net, x).astype(np.float32).astype(np.float64),
             "rounded": lambda x: np.round(victims.logits(net, x), 6),
             "noise": lambda x: victims.logits(net, x) + 1e-9 * rng.normal(size=(len(x), 4))}[kind]
  with pytest.raises(OraclePrecisionError, match="precision reached") as e:
    queries.probe(_querier(backend), 16, 1.0, np.random.default_rng(0))
  assert bits[0] < e.value.precision_bits < bits[1]


def test_querier_refuses_float32_answers_at_once():
  net = victims.random_net(0, 8, 4, 3)
  with pytest.raises(OraclePrecisionError, match="float32"):
    _querier(victims.backend(net, np.float32))(np.zeros((1, 8)))


def test_probe_refuses_smooth_victims():
  net = victims.random_net(0, 16, 12, 4)
  smooth = lambda x: np.tanh(x @ net.w0 + net.b0) @ net.w1 + net.b1
  with pytest.raises(NotPiecewiseLinearError, match="not piecewise linear"):
    queries.probe(_querier(smooth), 16, 1.0, np.random.default_rng(0))


def test_noisy_search_ends_with_an_error_quickly():
  # noise below the probe's threshold is still fatal to the search: it must stop, bounded, with a clear error
  net = victims.random_net(0, 16, 12, 4)
  rng = np.random.default_rng(0)
  q = _querier(lambda x: victims.logits(net, x) + 1e-11 * rng.normal(size=(len(x), 4)))
  start = time.monotonic()
  with pytest.raises(OraclePrecisionError, match="precision reached: 2\\^"):
    search.find_kinks(q, rng.normal(size=(1, 16)), rng.normal(size=(1, 16)), 8.0, max_intervals=256)
  assert time.monotonic() - start < 5 and q.queries < 20_000
