"""Deep functionally-equivalent extraction through a probabilities oracle (issue 14: "logits or probabilities").

The attack sees log p_i - log p_0 (queries.Querier): the victim's logit differences to class 0, exact where no
probability underflows. It measures how far from the domain's center that holds and works on that ball."""

import json

import numpy as np
import pytest

from functional_equivalence import domain as domains
from functional_equivalence.deep import align, network
from functional_equivalence.errors import OraclePrecisionError
from tests import test_fe_deep
from tests.deep_points import eval_points
from tests.test_fe_deep import _cli


def _extract(net, seed=7, **cfg):
  return test_fe_deep._extract(net, seed, output="probabilities", **cfg)


def _differences(net, x):
  z = network.logits(net, x)
  return z[:, 1:] - z[:, :1]


def _assert_same_differences(net, rec, x):
  a, b = _differences(net, x), _differences(rec, x)
  assert np.max(np.abs(a - b) / (np.abs(a).max(axis=1, keepdims=True) + 1.0)) < 1e-9
  assert np.mean(network.logits(net, x).argmax(1) == network.logits(rec, x).argmax(1)) == 1.0


def _loud(net: network.DeepNet, factor: float) -> network.DeepNet:
  """The victim with its output weights times `factor`: its probabilities underflow close to the center."""
  return network.DeepNet(net.weights[:-1] + (net.weights[-1] * factor,), net.biases)


@pytest.mark.parametrize("sizes,seed", [((12, 8, 6, 3), 0), ((10, 8, 8, 3), 1)])
def test_two_hidden_layers_recovered_through_probabilities(sizes, seed):
  net = network.random_net(seed, sizes)
  result = _extract(net)
  assert result.net.sizes == sizes
  x = eval_points(sizes[0])
  err = align.weight_error(net, result.net, x, differences=True)
  assert err["max_weight_error"] <= 1e-11, err
  # class 0's output column and bias are 0: only the differences are determined
  assert np.all(result.net.weights[-1][:, 0] == 0) and result.net.biases[-1][0] == 0
  _assert_same_differences(net, result.net, x)
  assert result.domain == domains.Ball(result.stats["probability_radius"])  # the ball it worked on (<= 1000)


def test_the_attack_works_on_the_ball_where_no_probability_underflows():
  net = _loud(network.random_net(2, (10, 8, 8, 3)), 100.0)
  result = _extract(net)
  radius = result.stats["probability_radius"]
  assert 1.0 < radius < 100.0 and result.domain == domains.Ball(radius)
  x = np.random.default_rng(5).normal(size=(4000, 10))
  x *= radius / np.linalg.norm(x, axis=1, keepdims=True) * np.random.default_rng(6).uniform(size=(4000, 1))
  z = network.logits(net, x)
  assert np.max(z.max(axis=1) - z.min(axis=1)) < 708  # no probability underflows inside the ball
  # the recovered network is the victim's, also where its probabilities underflow (out to radius 1000)
  _assert_same_differences(net, result.net, np.concatenate([x, eval_points(10)]))
  assert align.weight_error(net, result.net, x, differences=True)["max_weight_error"] <= 1e-9


def test_a_first_layers_support_signs_stay_on_the_ball_where_no_probability_underflows():
  # iris-trained 4-12-6-3 seed 1 (fe_deep_fresh_probabilities.md, the benchmark's attack seed): its first layer has
  # more units than inputs, signs undecided by the votes are read from sparse live sets of gradients at random points
  # out to 4 times the input scale; one of them lay past the ball where no probability underflows (radius ~12), and
  # the attack stopped there ("gradients: a probability underflowed"). Now those points stay inside it
  net, data = network.tabular_net("iris", 1, [12, 6])
  result = test_fe_deep._extract(net, 1220005862, output="probabilities")
  radius = result.stats["probability_radius"]
  assert result.net.sizes == net.sizes and radius < 4 * np.sqrt(4)  # inside the support points' reach
  x = np.random.default_rng(5).normal(size=(20_000, 4))
  x *= radius / np.linalg.norm(x, axis=1, keepdims=True) * np.random.default_rng(6).uniform(size=(20_000, 1))
  x = np.concatenate([x, data.x_test])
  assert align.weight_error(net, result.net, x, differences=True)["max_weight_error"] <= 1e-9
  _assert_same_differences(net, result.net, x)


def test_a_box_reaching_past_where_the_probabilities_underflow_is_refused_with_one_line():
  net = _loud(network.random_net(2, (10, 8, 8, 3)), 100.0)
  with pytest.raises(
    OraclePrecisionError, match="underflow inside the box .* use a smaller box, a ball .* or the logits"
  ):
    _extract(net, domain=domains.Box(-100.0, 100.0))


def test_probabilities_that_underflow_within_the_attacks_inputs_are_refused_with_one_line():
  net = _loud(network.random_net(2, (10, 8, 8, 3)), 100.0)
  for scale in (3.0, 10.0):  # the probe's 64 points, or the radius measured, within the inputs' N(0, scale^2 I)
    with pytest.raises(OraclePrecisionError, match="underflow.*the logits output"):
      _extract(net, scale=scale)


def test_launcher_deep_victim_through_probabilities(tmp_path):
  net = _loud(network.random_net(2, (10, 8, 8, 3)), 100.0)  # its probabilities underflow ~8.5 from the center
  path = network.save_npz(tmp_path / "loud.npz", net)
  p = _cli(
    "--experiment=functional_equivalence",
    f"--victim_npz={path}",
    "--fe_oracle_output=probabilities",
    f"--workdir={tmp_path}/w",
    "--fe_eval_inputs=5000",
    "--fe_domain_eval_inputs=5000",
  )
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "w" / "results.json").read_text())
  assert row["oracle_output"] == "probabilities" and row["recovered_shape"] == "10-8-8-3"
  # claimed on the ball it worked on, evaluated (and equal) over the flags' whole domain
  assert 1.0 < row["probability_radius"] < 100.0 and row["domain"] == f"ball R={row['probability_radius']:g}"
  assert row["domain_evaluated"] == "ball R=1000" and row["domain_agreement"] == 1.0
  assert row["agreement"] == 1.0 and row["max_weight_error"] <= 1e-9
