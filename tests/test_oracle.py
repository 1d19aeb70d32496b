import numpy as np
import pytest

from extraction import oracle as oracle_lib
from extraction.oracle import BudgetExceeded, Oracle

LOGITS = np.array([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 1.0]])


def backend(x):
  return LOGITS[np.asarray(x, int).reshape(-1)]


def test_logits_and_probabilities():
  x = np.array([0, 1])
  np.testing.assert_array_equal(Oracle(backend, "logits")(x), LOGITS)
  p = Oracle(backend, "probabilities")(x)
  np.testing.assert_allclose(p.sum(-1), 1.0)
  np.testing.assert_allclose(p[0, 0] / p[0, 1], np.exp(2.0))


def test_top_k_keeps_k_largest_and_zeroes_the_rest():
  p = Oracle(backend, "top_k", top_k=2)(np.array([0, 1]))
  full = oracle_lib.softmax(LOGITS)
  np.testing.assert_allclose(p[0], [full[0, 0], full[0, 1], 0, 0])
  np.testing.assert_allclose(p[1], [0, 0, full[1, 2], full[1, 3]])


def test_labels_are_one_hot_argmax():
  np.testing.assert_array_equal(Oracle(backend, "labels")(np.array([0, 1])), [[1, 0, 0, 0], [0, 0, 1, 0]])


def test_float64_preserved():
  out = Oracle(lambda x: np.asarray(x, np.float64) * (1 + 1e-12), "logits")(np.ones((2, 3)))
  assert out.dtype == np.float64 and out[0, 0] != 1.0


def test_budget_exact_edge_and_refusal():
  o = Oracle(backend, "labels", budget=3)
  o(np.array([0, 1]))
  o(np.array([1]))  # exactly the budget: answered
  assert (o.used, o.remaining) == (3, 0)
  with pytest.raises(BudgetExceeded, match="budget of 3"):
    o(np.array([0]))
  assert o.used == 3 and len(o.asked) == 3


def test_over_budget_query_answers_nothing():
  calls = []
  o = Oracle(lambda x: calls.append(len(x)) or backend(x), budget=2)
  with pytest.raises(BudgetExceeded):
    o(np.array([0, 1, 0]))
  assert calls == [] and o.used == 0 and len(o.asked) == 0


def test_record_and_batching():
  sizes = []
  o = Oracle(lambda x: sizes.append(len(x)) or backend(x), batch_size=2)
  out = o(np.array([0, 1, 0, 1, 1]))
  assert sizes == [2, 2, 1] and out.shape == (5, 4)
  np.testing.assert_array_equal(o.asked, [0, 1, 0, 1, 1])
  o2 = Oracle(backend, record_inputs=False)
  o2(np.array([0]))
  assert o2.used == 1 and len(o2.asked) == 0


@pytest.mark.parametrize(
  "output,k,match",
  [("scores", None, "unknown oracle output"), ("top_k", None, "top_k >= 1"), ("top_k", 0, "top_k >= 1")],
)
def test_bad_modes(output, k, match):
  with pytest.raises(ValueError, match=match):
    Oracle(backend, output, top_k=k)


def test_top_k_must_be_below_classes():
  with pytest.raises(ValueError, match="smaller than the number of classes"):
    oracle_lib.validate_output_mode("top_k", 10, 10)


def test_model_backend_matches_apply(digits):
  import jax

  from extraction import models
  from extraction.datasets import to_float

  model = models.create_model("mlp", 10)
  variables = model.init(jax.random.key(0), to_float(digits.test.images[:1]))
  b = oracle_lib.model_backend(model, variables, batch_size=64)
  x = digits.test.images[:100]  # 64 + a padded 36
  np.testing.assert_allclose(b(x), model.apply(variables, to_float(x)), rtol=1e-5, atol=1e-5)
