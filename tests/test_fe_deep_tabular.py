"""Victims trained on scikit-learn's tabular datasets (deep.network.tabular_net): scaled as asked, refused in one line
for a regression dataset or an unknown scaling, and a two-hidden-layer iris victim with an expanding first layer
(4 inputs, 8 units) recovered exactly by the deep attack, not told its widths; the same through the launcher
(--fe_victim=tabular), whose victim is the one tabular_net trains, and its flags' one-line refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest

from extraction.oracle import Oracle
from functional_equivalence.deep import align, attack, network
from tests.conftest import REPO


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


def _assert_exact(net, rec, data, far):
  """Aligned weights to 1e-9 and the victim's logits and labels on N(0, I), N(0, far^2 I) and the test split."""
  x = np.concatenate(
    [
      np.random.default_rng(5).normal(size=(20_000, 4)),
      far * np.random.default_rng(6).normal(size=(20_000, 4)),
      data.x_test,
    ]
  )
  err = align.weight_error(net, rec, x)
  assert err["max_weight_error"] <= 1e-9, err
  a, b = network.logits(net, x), network.logits(rec, x)
  assert np.max(np.abs(a - b) / (np.abs(a).max(axis=1, keepdims=True) + 1.0)) < 1e-9
  assert np.mean(a.argmax(1) == b.argmax(1)) == 1.0


@pytest.mark.parametrize("scaling", ["minmax", "standard"])
def test_an_iris_victim_is_recovered_exactly(scaling):
  net, data = network.tabular_net("iris", 0, [8, 8], scaling=scaling)
  result = attack.extract(Oracle(network.backend(net), output="logits", record_inputs=False), 4, seed=3)
  _assert_exact(net, result.net, data, far=30.0)


@pytest.mark.slow
def test_an_iris_victim_wider_than_its_inputs_in_both_layers_is_recovered():
  # iris-trained 4-16-16-3 seed 0, the benchmark's attack seed (fe_deep_unseen.md, fe_deep_expansive.md): a
  # second-layer unit on at 0.1% of the ball is missed at first, and a kink of it gave another unit, in a repair
  # (unseen.read_weights), a weight from a feature never on at that unit's surface; the layer never settled ("final
  # check failed"). The reading is refused now (its unit does not predict its surface around the kink), the rare unit
  # is found, and the network, which keeps 5 of its weights unread (the victim's function does not depend on them
  # within the ball), is returned exact on the rest
  net, data = network.tabular_net("iris", 0, [16, 16])
  result = attack.extract(Oracle(network.backend(net), output="logits", record_inputs=False), 4, seed=121999420)
  assert result.stats["read_weights_refused"] >= 1 and result.widths == [16, 16]
  _assert_exact(net, result.net, data, far=300.0)


def _cli(*args):
  cmd = [sys.executable, "-m", "launch.run", "--experiment=functional_equivalence", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_launcher_trains_and_extracts_a_tabular_victim(tmp_path):
  p = _cli(
    "--fe_victim=tabular",
    "--fe_dataset=iris",
    "--fe_layers=8,8",
    "--fe_tabular_scaling=standard",
    "--seed=1",
    "--fe_eval_inputs=5000",
    "--fe_domain_eval_inputs=5000",
    f"--workdir={tmp_path}",
  )
  assert p.returncode == 0, p.stderr[-2000:]
  [row] = json.loads((tmp_path / "results.json").read_text())
  assert row["victim"] == "tabular" and row["recovered_shape"] == "4-8-8-3", row
  assert row["max_weight_error"] <= 1e-9 and row["agreement"] == row["domain_agreement"] == 1.0
  assert row["test_agreement"] == 1.0 and row["victim_test_accuracy"] > 0.8  # iris' test split (38 flowers)
  net, data = network.tabular_net("iris", 1, [8, 8], scaling="standard")  # the victim of --seed=1, 500 steps
  saved = network.load_npz(tmp_path / "victim.npz")
  assert all(np.array_equal(a, b) for a, b in zip(saved.weights + saved.biases, net.weights + net.biases))
  rec = network.load_npz(tmp_path / "recovered.npz")
  a, b = network.logits(net, data.x_test), network.logits(rec, data.x_test)
  assert np.max(np.abs(a - b)) < 1e-9 * (np.abs(a).max() + 1.0)


@pytest.mark.parametrize(
  "args,message",
  [
    (["--fe_victim=tabular"], "--fe_victim=tabular needs --fe_dataset (breast_cancer, wine or iris)"),
    (["--fe_dataset=wine"], "--fe_dataset=wine is for --fe_victim=tabular"),
    (["--fe_victim=tabular", "--fe_dataset=diabetes"], "value should be one of <breast_cancer|wine|iris>"),
  ],
)
def test_launcher_tabular_flags_fail_with_one_line(tmp_path, args, message):
  p = _cli(f"--workdir={tmp_path}", *args)
  assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
