"""The direct-recovery attacks of Table 1 on victims the tests train (scikit-learn datasets that ship offline) and on
random victims of other sizes and boxes: exact recovery, query counts checked by a counting backend, budgets."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from extraction import sklearn_victims as sv
from extraction import tabular
from extraction.oracle import BudgetExceeded, Oracle
from extraction.two_layer import TwoLayerBackend
from functional_equivalence import align, victims
from functional_equivalence.errors import ExtractionError
from functional_equivalence.simple_models import (
  active_linear,
  equation_solving,
  evaluate,
  lowd_meek,
  milli,
  path_finding,
  tree_build,
)
from functional_equivalence.simple_models.common import Box, UnsupportedAnswersError
from tests.test_direct_victims import Counting


def _oracle(backend, output, budget=None):
  counting = Counting(backend)
  return Oracle(counting, output=output, budget=budget, record_inputs=False), counting


def _random_linear(seed, d, classes=2):
  """A logistic regression fitted to random labels of a random linear rule on [-3, 5]^d (not a shipped dataset)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-3, 5, size=(40 * d, d))
  scores = x @ rng.normal(size=(d, classes))
  return LogisticRegression(C=1.0, max_iter=5000).fit(x, scores.argmax(1))


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "iris", "digits"])
def test_equation_solving_recovers_logistic_regression_from_d_plus_1_queries(name):
  data = tabular.load(name, seed=0)
  model = tabular.train("logistic_regression", data)
  d, k = data.x_train.shape[1], data.num_classes
  oracle, counting = _oracle(sv.backend(model), "probabilities")
  r = equation_solving.solve_logistic(oracle, Box(0, 1, d), np.random.default_rng(5))
  # d + 1 queries, each k - 1 equations: (d + 1)(k - 1) equations for as many identifiable unknowns
  assert r.queries == counting.count == d + 1 and r.stats["redrawn"] == 0
  assert evaluate.linear_error(model.coef_, model.intercept_, r.coef, r.intercept, scaled=False) <= 1e-8
  if k > 2:  # scikit-learn centres multinomial parameters: the centred solve gives them exactly
    np.testing.assert_allclose(r.coef, model.coef_, atol=1e-8 * np.abs(model.coef_).max())


def test_equation_solving_on_a_victim_and_box_not_built_for():
  model = _random_linear(11, 50, classes=4)
  oracle, counting = _oracle(sv.backend(model), "probabilities")
  r = equation_solving.solve_logistic(oracle, Box(-3, 5, 50), np.random.default_rng(0))
  assert counting.count == r.queries == 51 + r.stats["redrawn"]  # answers saturated at 0 or 1 are redrawn
  assert evaluate.linear_error(model.coef_, model.intercept_, r.coef, r.intercept, scaled=False) <= 1e-8


def test_retraining_from_labels_and_the_mlp_fit_agree_on_most_of_the_box():
  data = tabular.load("iris", seed=0)
  model = tabular.train("logistic_regression", data)
  x = np.random.default_rng(9).uniform(0, 1, size=(20000, 4))
  oracle, counting = _oracle(sv.backend(model), "labels")
  r = equation_solving.retrain(oracle, Box(0, 1, 4), 500, np.random.default_rng(0))
  assert counting.count == 500
  assert evaluate.agreement(sv.backend(model)(x), sv.LinearBackend(r.coef, r.intercept)(x), False) > 0.95
  net = victims.random_net(2, 4, 6, 3)
  oracle, counting = _oracle(TwoLayerBackend(*net), "probabilities")
  fit, queries, _ = equation_solving.fit_two_layer(oracle, Box(0, 1, 4), 6, 200, np.random.default_rng(0), 200)
  assert queries == counting.count == 200
  assert evaluate.agreement(victims.logits(net, x), victims.logits(fit, x), False) > 0.95


@pytest.mark.parametrize("strategy", path_finding.STRATEGIES)
@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_path_finding_recovers_a_depth_6_tree_exactly(name, strategy):
  data = tabular.load(name, seed=0)
  model = tabular.train("tree", data, tree_depth=6)
  d = data.x_train.shape[1]
  box = Box(0, 1, d)
  oracle, counting = _oracle(sv.TreeBackend(model, "stop", id_seed=1), "leaf")
  r = path_finding.extract(oracle, box, path_finding.Config(strategy=strategy), np.random.default_rng(0))
  splits, reachable = evaluate.reachable_splits(model.tree_, 0, 1)
  assert r.queries == counting.count
  assert len(r.ids) == reachable == model.get_n_leaves()
  assert evaluate.threshold_error(splits, r.lo, r.hi) <= 1e-6  # float32 inputs of scikit-learn: ~1e-8 here
  rec = tree_build.to_sklearn(r.tree, d, regression=name == "diabetes")
  x = box.sample(np.random.default_rng(3), 20000)
  if name == "diabetes":
    np.testing.assert_array_equal(rec.predict(x), model.predict(x))
  else:
    assert np.array_equal(rec.predict(x), np.searchsorted(model.classes_, model.predict(x)))
    np.testing.assert_allclose(rec.predict_proba(x), model.predict_proba(x), atol=1e-15)


def test_path_finding_with_a_majority_api_and_a_tree_and_box_not_built_for():
  rng = np.random.default_rng(4)
  x = rng.uniform(-2, 2, size=(3000, 9))
  y = (np.sin(3 * x[:, 0]) + x[:, 1] * x[:, 2] > 0).astype(int) + (x[:, 3] > 1)
  model = DecisionTreeClassifier(max_depth=8, random_state=0).fit(x, y)
  oracle, _ = _oracle(sv.TreeBackend(model, "majority", id_seed=2), "leaf")
  r = path_finding.extract(
    oracle, Box(-2, 2, 9), path_finding.Config(strategy="exhaustive", reuse_thresholds=False), np.random.default_rng(1)
  )
  _, reachable = evaluate.reachable_splits(model.tree_, -2, 2)
  assert len(r.ids) == reachable
  xe = Box(-2, 2, 9).sample(np.random.default_rng(8), 20000)
  assert np.array_equal(r.tree.value[r.tree.apply(xe)].argmax(1), model.predict(xe))


@pytest.mark.parametrize("kind", ["logistic_regression", "linear_svc"])
def test_lowd_meek_recovers_the_direction_to_1e_6_with_its_query_count(kind):
  data = tabular.load("breast_cancer", seed=0)
  model = tabular.train(kind, data)
  oracle, counting = _oracle(sv.backend(model), "labels")
  r = lowd_meek.extract(oracle, Box(0, 1, 30), rng=np.random.default_rng(2))
  assert r.queries == counting.count and r.queries == sum(r.stats[k] for k in r.stats if k.endswith("queries"))
  assert r.queries <= 64 * 31  # witnesses, ~35 for the boundary, ~2 + log2(1 / epsilon) per feature
  assert evaluate.linear_error(model.coef_, model.intercept_, r.w[None], [r.b], scaled=True) <= 1e-6


def test_lowd_meek_on_a_victim_and_box_not_built_for():
  model = _random_linear(3, 40)
  oracle, _ = _oracle(sv.backend(model), "labels")
  r = lowd_meek.extract(oracle, Box(-3, 5, 40), rng=np.random.default_rng(0))
  assert evaluate.linear_error(model.coef_, model.intercept_, r.w[None], [r.b], scaled=True) <= 1e-6


def test_lowd_meek_refuses_a_multiclass_api_in_one_line():
  data = tabular.load("iris", seed=0)
  oracle, _ = _oracle(sv.backend(tabular.train("logistic_regression", data)), "labels")
  with pytest.raises(UnsupportedAnswersError, match="binary classifiers: the API answers 3 classes") as e:
    lowd_meek.extract(oracle, Box(0, 1, 4))
  assert "\n" not in str(e.value)


def test_active_learning_recovers_a_linear_classifier():
  model = _random_linear(5, 6)
  oracle, counting = _oracle(sv.backend(model), "labels")
  r = active_linear.extract(oracle, Box(-3, 5, 6), active_linear.Config(epsilon=1e-6), np.random.default_rng(0))
  assert r.queries == counting.count
  assert evaluate.linear_error(model.coef_, model.intercept_, r.w[None], [r.b], scaled=True) <= 1e-5


@pytest.mark.parametrize("shape,box", [((12, 8, 3), (-1.0, 1.0)), ((30, 20, 1), (0.0, 1.0))])
def test_gradient_recovery_of_a_two_layer_net(shape, box):
  net = victims.random_net(sum(shape), *shape)
  oracle, counting = _oracle(TwoLayerBackend(*net), "gradients")
  b = Box(*box, shape[0])
  r = milli.extract(oracle, b, rng=np.random.default_rng(0))
  assert r.queries == counting.count and r.stats["units"] == shape[1]
  err = align.weight_error(net, r.net)
  assert err["matched_units"] == shape[1] and err["max_weight_error"] <= 1e-8
  x = b.sample(np.random.default_rng(1), 20000)
  assert align.logit_agreement(net, r.net, x)["agreement"] == 1.0


def test_gradient_recovery_of_a_trained_net():
  data = tabular.load("iris", seed=0)
  net = victims.train_two_layer(data.x_train, data.y_train, 16, seed=0, steps=200, num_classes=3)
  oracle, _ = _oracle(TwoLayerBackend(*net), "gradients")
  r = milli.extract(oracle, Box(0, 1, 4), rng=np.random.default_rng(1))
  assert align.weight_error(net, r.net)["max_weight_error"] <= 1e-8
  assert align.logit_agreement(net, r.net, data.x_test)["agreement"] == 1.0


def test_gradient_recovery_beyond_identifiable_orientations_is_still_exact_as_a_function():
  net = victims.random_net(5, 5, 40, 3)  # 40 units, jumps in a 15-dimensional space: sides not identifiable
  oracle, _ = _oracle(TwoLayerBackend(*net), "gradients")
  r = milli.extract(oracle, Box(0, 1, 5), rng=np.random.default_rng(1))
  assert r.stats["units"] == 40 and r.stats["linear_units"] > 0
  x = Box(-2, 3, 5).sample(np.random.default_rng(2), 20000)
  agree = align.logit_agreement(net, r.net, x)
  assert agree["agreement"] == 1.0 and agree["max_logit_error"] <= 1e-9


def _attacks():
  """(name, fresh oracle factory, attack(oracle)) for every attack, on small victims."""
  iris = tabular.load("iris", seed=0)
  lr3 = tabular.train("logistic_regression", iris)
  tree = tabular.train("tree", iris, tree_depth=4)
  lin = _random_linear(1, 5)
  net = victims.random_net(0, 6, 5, 2)
  rng = lambda: np.random.default_rng(0)
  return [
    ("lowd_meek", sv.backend(lin), "labels", lambda o: lowd_meek.extract(o, Box(-3, 5, 5), rng=rng()).queries),
    (
      "active_linear",
      sv.backend(lin),
      "labels",
      lambda o: active_linear.extract(o, Box(-3, 5, 5), active_linear.Config(epsilon=1e-4), rng()).queries,
    ),
    (
      "equation_solving",
      sv.backend(lr3),
      "probabilities",
      lambda o: equation_solving.solve_logistic(o, Box(0, 1, 4), rng()).queries,
    ),
    ("retraining", sv.backend(lr3), "labels", lambda o: equation_solving.retrain(o, Box(0, 1, 4), 50, rng()).queries),
    (
      "mlp_fit",
      TwoLayerBackend(*net),
      "probabilities",
      lambda o: equation_solving.fit_two_layer(o, Box(0, 1, 6), 5, 40, rng(), max_iter=20)[1],
    ),
    ("path_finding", sv.TreeBackend(tree), "leaf", lambda o: path_finding.extract(o, Box(0, 1, 4), rng=rng()).queries),
    (
      "gradient_recovery",
      TwoLayerBackend(*net),
      "gradients",
      lambda o: milli.extract(o, Box(0, 1, 6), rng=rng()).queries,
    ),
  ]


@pytest.mark.parametrize("case", _attacks(), ids=lambda c: c[0])
def test_every_attack_is_refused_the_query_that_passes_its_budget(case):
  _, backend, output, attack = case
  oracle, counting = _oracle(backend, output)
  needed = attack(oracle)
  assert needed == counting.count > 0
  oracle, counting = _oracle(backend, output, budget=needed)
  assert attack(oracle) == needed and counting.count == needed  # exactly the budget: it finishes
  oracle, counting = _oracle(backend, output, budget=needed - 1)
  with pytest.raises(BudgetExceeded):
    attack(oracle)
  assert counting.count <= needed - 1  # nothing past the budget was answered


def test_tree_build_refuses_boxes_that_do_not_tile_and_handles_a_single_leaf():
  inf = np.inf
  lo = np.array([[-inf, -inf], [0.5, -inf], [0.2, 0.5]])  # the third box overlaps the first two
  hi = np.array([[0.5, inf], [inf, inf], [0.8, inf]])
  with pytest.raises(ExtractionError, match="admit no common split"):
    tree_build.build(lo, hi, np.eye(3), tolerance=1e-9)
  single = tree_build.build(np.full((1, 2), -inf), np.full((1, 2), inf), np.array([[0.25, 0.75]]), 1e-9)
  est = tree_build.to_sklearn(single, 2, regression=False)
  np.testing.assert_allclose(est.predict_proba(np.zeros((3, 2))), [[0.25, 0.75]] * 3)
