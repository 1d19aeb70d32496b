"""Victims of the direct-recovery attacks: scikit-learn models from joblib answer exactly as scikit-learn does,
trees answer leaf identifiers with missing features, two-layer nets answer input gradients, and the Oracle's
`leaf` / `gradients` modes keep the budget."""

import numpy as np
import pytest

from extraction import sklearn_victims as sv
from extraction import tabular
from extraction.oracle import BudgetExceeded, Oracle, softmax
from extraction.two_layer import TwoLayerBackend
from functional_equivalence import victims


@pytest.fixture(scope="module")
def wine():
  return tabular.load("wine", seed=3)


def test_tabular_data_lies_in_the_unit_box_and_splits_by_seed():
  for name in tabular.DATASETS:
    data = tabular.load(name, seed=1)
    x = np.concatenate([data.x_train, data.x_test])
    assert x.min() == 0.0 and x.max() == 1.0 and len(data.x_test) == round(0.25 * len(x))
  assert not np.array_equal(tabular.load("iris", 1).x_test, tabular.load("iris", 2).x_test)


def test_linear_backends_answer_as_scikit_learn(wine):
  binary = tabular.load("breast_cancer", seed=0)
  x = np.random.default_rng(0).uniform(-0.5, 1.5, size=(500, 30))
  lr2 = tabular.train("logistic_regression", binary)
  np.testing.assert_allclose(softmax(sv.backend(lr2)(x)), lr2.predict_proba(x), rtol=0, atol=1e-12)
  lr3 = tabular.train("logistic_regression", wine)
  xw = np.random.default_rng(1).uniform(0, 1, size=(500, 13))
  np.testing.assert_allclose(softmax(sv.backend(lr3)(xw)), lr3.predict_proba(xw), rtol=0, atol=1e-12)
  for model, xs in ((tabular.train("linear_svc", wine), xw), (tabular.train("linear_svc", binary), x)):
    assert np.array_equal(model.classes_[sv.backend(model)(xs).argmax(1)], model.predict(xs))


@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_tree_backend_matches_scikit_learn_and_hides_node_indices(name):
  data = tabular.load(name, seed=0)
  model = tabular.train("tree", data, tree_depth=5)
  x = np.random.default_rng(2).uniform(-0.2, 1.2, size=(2000, data.x_train.shape[1]))
  backend = sv.TreeBackend(model, id_seed=7)
  assert np.array_equal(backend.nodes(x), model.apply(x))
  answers = backend.leaf(x)
  if name == "diabetes":
    np.testing.assert_array_equal(answers[:, 1], model.predict(x))
  else:
    np.testing.assert_allclose(answers[:, 1:], model.predict_proba(x), atol=1e-15)
    np.testing.assert_allclose(softmax(backend(x)), model.predict_proba(x), atol=1e-15)
  ids = np.unique(answers[:, 0])
  assert len(ids) == len(np.unique(model.apply(x))) and not np.array_equal(ids, np.unique(model.apply(x)))


def test_tree_missing_features_stop_or_follow_the_majority(wine):
  model = tabular.train("tree", wine, tree_depth=4)
  t = model.tree_
  x = np.full((1, 13), np.nan)
  stop = sv.TreeBackend(model, "stop", id_seed=0)
  assert stop.nodes(x)[0] == 0  # the root tests a missing feature
  np.testing.assert_allclose(stop.leaf(x)[0, 1:], t.value[0, 0] / t.value[0, 0].sum())
  majority = sv.TreeBackend(model, "majority").nodes(x)[0]
  node = 0
  while t.children_left[node] >= 0:
    l, r = t.children_left[node], t.children_right[node]
    node = l if t.weighted_n_node_samples[l] >= t.weighted_n_node_samples[r] else r
  assert majority == node
  full = np.random.default_rng(0).uniform(0, 1, size=(1, 13))
  part = full.copy()
  part[0, t.feature[0]] = np.nan  # the root's feature left out: stop there
  assert stop.nodes(part)[0] == 0 and stop.nodes(full)[0] == model.apply(full)[0]


def test_joblib_victims_load_and_refuse_with_one_line_errors(tmp_path, wine):
  from sklearn.ensemble import RandomForestClassifier
  from sklearn.linear_model import LogisticRegression

  good = sv.save_joblib(tmp_path / "v.joblib", tabular.train("tree", wine))
  assert sv.kind(sv.load_joblib(good)) == "tree_classifier"
  (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
  sv.save_joblib(tmp_path / "forest.joblib", RandomForestClassifier(n_estimators=2).fit(wine.x_train, wine.y_train))
  sv.save_joblib(tmp_path / "unfitted.joblib", LogisticRegression())
  for name, match in (
    ("missing.joblib", "does not exist"),
    ("junk.joblib", "not a readable joblib"),
    ("forest.joblib", "unsupported victim .*RandomForestClassifier"),
    ("unfitted.joblib", "not fitted"),
  ):
    with pytest.raises(sv.VictimError, match=match) as e:
      sv.load_joblib(tmp_path / name)
    assert "\n" not in str(e.value)


def test_two_layer_gradients_are_the_input_gradients_of_every_logit():
  import jax

  net = victims.random_net(1, 7, 5, 3)
  x = np.random.default_rng(0).normal(size=(20, 7))
  answers = TwoLayerBackend(*net).gradients(x)
  assert answers.shape == (20, 3, 8)
  np.testing.assert_allclose(answers[:, :, 7], victims.logits(net, x), atol=1e-13)
  with jax.enable_x64(True):
    jac = jax.vmap(jax.jacobian(lambda v: jax.numpy.maximum(v @ net.w0 + net.b0, 0) @ net.w1 + net.b1))(x)
  np.testing.assert_allclose(answers[:, :, :7], np.asarray(jac), atol=1e-13)


class Counting:
  """A backend that counts the inputs it answers, whatever the mode (independent of oracle.used)."""

  def __init__(self, inner):
    self.inner, self.count = inner, 0

  def __call__(self, x):
    self.count += len(x)
    return self.inner(x)

  def leaf(self, x):
    self.count += len(x)
    return self.inner.leaf(x)

  def gradients(self, x):
    self.count += len(x)
    return self.inner.gradients(x)


def test_oracle_leaf_and_gradient_modes_keep_the_budget(wine):
  tree = Counting(sv.TreeBackend(tabular.train("tree", wine)))
  oracle = Oracle(tree, output="leaf", budget=10, batch_size=3)
  assert oracle(np.zeros((7, 13))).shape == (7, 4) and tree.count == 7
  with pytest.raises(BudgetExceeded):
    oracle(np.zeros((4, 13)))
  assert tree.count == 7 and oracle.used == 7
  net = Counting(TwoLayerBackend(*victims.random_net(0, 4, 3, 2)))
  grads = Oracle(net, output="gradients", budget=5)
  assert grads(np.ones((5, 4))).shape == (5, 2, 5) and net.count == 5
  with pytest.raises(BudgetExceeded):
    grads(np.ones((1, 4)))
  with pytest.raises(ValueError, match="needs a backend with a .leaf"):
    Oracle(sv.LinearBackend(np.ones((1, 3)), np.zeros(1)), output="leaf")
