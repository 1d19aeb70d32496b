"""Victims trained on scikit-learn's tabular datasets (deep.network.tabular_net): scaled as asked, refused in one line
for a regression dataset or an unknown scaling, and a two-hidden-layer iris victim with an expanding first layer
(4 inputs, 8 units) recovered exactly by the deep attack, not told its widths."""

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence.deep import align, attack, network


def test_scalings_and_refusals():
  _, data = network.tabular_net("wine", 0, [4], steps=5)
  assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
  net, data = network.tabular_net("wine", 0, [4], steps=5, scaling="standard")
  np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-12)
  np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-12)
  assert tuple(net.sizes) == (13, 4, 3)
  with pytest.raises(ValueError, match="regression dataset"):
    network.tabular_net("diabetes", 0, [4], steps=5)
  with pytest.raises(ValueError, match="scaling is 'minmax' or 'standard'"):
    network.tabular_net("iris", 0, [4], steps=5, scaling="robust")


@pytest.mark.parametrize("scaling", ["minmax", "standard"])
def test_an_iris_victim_is_recovered_exactly(scaling):
  net, data = network.tabular_net("iris", 0, [8, 8], scaling=scaling)
  result = attack.extract(Oracle(network.backend(net), output="logits", record_inputs=False), 4, seed=3)
  x = np.concatenate(
    [
      np.random.default_rng(5).normal(size=(20_000, 4)),
      30.0 * np.random.default_rng(6).normal(size=(20_000, 4)),
      data.x_test,
    ]
  )
  err = align.weight_error(net, result.net, x)
  assert err["max_weight_error"] <= 1e-9, err
  a, b = network.logits(net, x), network.logits(result.net, x)
  assert np.max(np.abs(a - b) / (np.abs(a).max(axis=1, keepdims=True) + 1.0)) < 1e-9
  assert np.mean(a.argmax(1) == b.argmax(1)) == 1.0
