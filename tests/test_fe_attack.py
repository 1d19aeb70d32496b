"""The whole attack: exact recovery (up to permutation and scale) without being told the hidden width, to a stated
precision, the probabilities path, h > d, dead units, a trained digits victim, clear bounded errors on bad oracles,
and query accounting checked by a backend that counts its own rows."""
import functools
import time

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence import align, attack, certify, domain, victims
from functional_equivalence.errors import (LimitReachedError, NoCriticalPointsError, NotPiecewiseLinearError,
                                           OraclePrecisionError)


class CountingBackend:
  """Counts the rows it answers itself, independently of the Oracle's own count."""

  def __init__(self, backend):
    self.backend, self.rows = backend, 0

  def __call__(self, x):
    self.rows += len(x)
    return self.backend(x)


def _extract(net, output="logits", backend=None, seed=7, **cfg):
  counter = CountingBackend(backend or victims.backend(net))
  oracle = Oracle(counter, output=output, record_inputs=False)
  result = attack.extract(oracle, net.shape[0], attack.Config(**cfg), seed=seed)
  # every query went through the oracle, and the reported count is what the victim answered, stage by stage
  assert result.queries == counter.rows == sum(result.queries_by_stage.values())
  return result


def _assert_exact(net, result, differences=False, units=None, bits=32):
  err = align.weight_error(net, result.net, differences)
  agree = align.random_agreement(net, result.net, 10_000, seed=1, differences=differences)
  assert result.hidden_units_found == (units if units is not None else net.shape[1])
  assert err["max_weight_error"] <= 2.0 ** -bits, err
  assert agree["agreement"] == 1.0 and agree["max_logit_error"] <= 1e-8, agree
  return err


@pytest.mark.parametrize("shape", [(8, 6, 1), (16, 8, 10), (32, 48, 10), (20, 10, 3)])
def test_exact_recovery_of_random_nets(shape):
  net = victims.random_net(1, *shape)
  result = _extract(net)
  _assert_exact(net, result)
  assert result.stats["check_error"] < 1e-9 and result.net.w0.shape == (shape[0], shape[1])
  # the per-unit error estimates are honest upper estimates of the row errors
  assert max(result.units["row_error"]) < 1e-8 and not any(result.units["negligible"])


def test_a_backend_that_counts_catches_queries_around_the_oracle(monkeypatch):
  net = victims.random_net(1, 12, 6, 3)
  counter = CountingBackend(victims.backend(net))
  oracle = Oracle(counter, output="logits", record_inputs=False)
  real = attack.second_layer.solve

  def peeking(units, x, g, *args, **kwargs):  # an attack that asks the victim behind the oracle's back
    counter(x)
    return real(units, x, g, *args, **kwargs)
  monkeypatch.setattr(attack.second_layer, "solve", peeking)
  result = attack.extract(oracle, 12, seed=0)
  assert result.queries == oracle.used < counter.rows


def test_probabilities_path_recovers_logit_differences():
  net = victims.random_net(2, 16, 12, 5)
  result = _extract(net, output="probabilities")
  _assert_exact(net, result, differences=True)
  assert np.all(result.net.w1[:, 0] == 0) and result.net.b1[0] == 0  # class 0 is the reference
  # the plain comparison differs by the common shift only
  assert align.weight_error(net, result.net)["max_weight_error"] > 1e-3


def test_more_hidden_units_than_inputs():
  net = victims.random_net(3, 8, 40, 10)
  _assert_exact(net, _extract(net))


def test_unidentifiable_signs_give_a_network_equal_on_the_domain():
  # h > d with one output: the orientations cannot be told apart (h + k > k (d + 1)), the function can: the affine
  # part they leave is represented by linear units outside the domain
  net = victims.random_net(3, 8, 12, 1)
  result = _extract(net)
  assert result.stats["layer2_model"] == "affine" and result.hidden_units_found == 12
  dom = domain.Ball(1000.0)
  assert align.domain_agreement(net, result.net, dom, 4000)["agreement"] == 1.0
  assert certify.certify(net, result.net, dom)["bound"] < 1e-6


def test_dead_units_are_not_found_and_do_not_matter():
  net = victims.random_net(4, 16, 8, 10)
  w0, b0, w1 = net.w0.copy(), net.b0.copy(), net.w1.copy()
  w0[:, 2], b0[2] = 0, -1.0   # never active
  w0[:, 5], b0[5] = 0, 0.7    # always active and constant: folded into b1
  w1[3] = 0                   # active but invisible
  dead = victims.TwoLayerNet(w0, b0, w1, net.b1)
  err = _assert_exact(dead, _extract(dead), units=5)
  assert err["inert_true_units"] == 3 and err["matched_units"] == 5


@functools.lru_cache(maxsize=1)
def _digits():
  return victims.digits_net(seed=0, hidden=24, steps=200)


def test_trained_digits_victim_is_extracted_exactly():
  net, (_, _, x_test, y_test) = _digits()
  assert np.mean(victims.logits(net, x_test).argmax(1) == y_test) > 0.9
  result = _extract(net)
  _assert_exact(net, result)
  test = align.logit_agreement(net, result.net, x_test)
  assert test["agreement"] == 1.0 and test["max_logit_error"] < 1e-8


@pytest.mark.parametrize("kind,error", [
    ("noise", OraclePrecisionError), ("float32", OraclePrecisionError), ("float32_cast", OraclePrecisionError),
    ("softplus", NotPiecewiseLinearError)])
def test_bad_oracles_end_quickly_with_a_clear_error(kind, error):
  net = victims.random_net(5, 16, 8, 10)
  rng = np.random.default_rng(0)
  backend = {
      "noise": lambda x: victims.logits(net, x) + 1e-8 * rng.normal(size=(len(x), 10)),
      "float32": victims.backend(net, np.float32),
      "float32_cast": lambda x: victims.backend(net, np.float32)(x).astype(np.float64),
      "softplus": lambda x: np.logaddexp(0, x @ net.w0 + net.b0) @ net.w1 + net.b1}[kind]
  start = time.monotonic()
  with pytest.raises(error):
    _extract(net, backend=backend)
  assert time.monotonic() - start < 5


def test_an_affine_victim_is_an_affine_network_on_the_domain():
  net = victims.random_net(5, 16, 8, 10)
  affine = lambda x: x @ net.w0 @ net.w1 + net.b1
  result = _extract(net, backend=affine)
  assert result.hidden_units_found == 0 and result.stats["layer2_model"] == "affine"
  assert result.stats["linear_units"] == 8                        # the rank of w0 @ w1
  x = domain.Ball(1000.0).check_points(np.random.default_rng(0), 16, 500)
  np.testing.assert_allclose(victims.logits(result.net, x), affine(x), rtol=0, atol=1e-9)


def test_no_kink_on_lines_too_short_for_a_victim_that_is_not_affine():
  net = victims.random_net(5, 16, 8, 10)
  with pytest.raises(NoCriticalPointsError, match="not affine on the domain"):
    _extract(net, line_reach=1e-9)


def test_limits_stop_the_attack():
  net = victims.random_net(6, 32, 48, 10)
  with pytest.raises(LimitReachedError, match="query limit 2000"):
    _extract(net, max_queries=2000)
  with pytest.raises(LimitReachedError, match="time limit"):
    _extract(net, max_seconds=0.0)
  oracle = Oracle(victims.backend(net), output="logits", budget=1000, record_inputs=False)
  with pytest.raises(LimitReachedError, match="oracle budget"):
    attack.extract(oracle, 32)
  assert oracle.used <= 1000
