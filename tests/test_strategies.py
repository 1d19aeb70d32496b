"""Query strategies on tiny hand-made cases: each selection rule, the hard budget across rounds (counted at the
backend, not by the oracle), and the random strategy equal to the project's original choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extraction import models, rounds, strategies, supervised
from extraction.datasets import to_float
from extraction.oracle import Oracle, softmax
from extraction.strategies import (
  Asked,
  Round,
  RoundBudgetExceeded,
  Student,
  dfal,
  dfme,
  jbda,
  kcenter,
  knockoff,
  typiclust,
  uncertainty,
)
from tests.counting import CountingBackend

SHAPE = (4, 4, 1)


def _linear_student(num_classes=3, seed=0):
  """A linear softmax classifier on flattened inputs (an MLP without hidden layers)."""
  model = models.MLP(num_classes=num_classes, hidden=())
  variables = model.init(jax.random.key(seed), jnp.zeros((1,) + SHAPE))
  return Student(model, variables)


def _weights(student):
  p = student.variables["params"]["_Heads_0"]["classifier"]
  return np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)


def _round(natural, oracle, student=None, index=0, limit=10, asked=None, kinds=None, seed=0):
  return Round(
    natural,
    kinds,
    asked or Asked.empty(natural.shape[1:], 3),
    student,
    np.random.default_rng(seed),
    index,
    4,
    3,
    "probabilities",
    oracle,
    limit,
  )


def test_kcenter_picks_the_farthest_point_then_the_next_farthest():
  points = np.array([[0.0], [1.0], [2.0], [10.0], [9.5]])
  assert kcenter.kcenter_greedy(points, np.array([[0.0]]), 1).tolist() == [3]
  # after 10 is a center, 9.5 is 0.5 from it and 2 is 2 from the center 0: 2 is next
  assert kcenter.kcenter_greedy(points, np.array([[0.0]]), 2).tolist() == [3, 2]
  far = np.random.default_rng(0).normal(size=(200, 5)) * 100.0  # far from the origin as well
  pick = kcenter.kcenter_greedy(far, far[:3], 1)[0]
  d = ((far[:, None] - far[None, :3]) ** 2).sum(-1).min(1)
  assert pick == np.argmax(d)


def test_uncertainty_picks_the_highest_entropy_answers():
  probs = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.8, 0.1, 0.1]])
  assert uncertainty.most_uncertain(probs, 2).tolist() == [1, 2]
  np.testing.assert_allclose(uncertainty.entropy(probs[1:2]), [np.log(3)])


def test_jbda_moves_along_the_sign_of_the_students_jacobian():
  student = _linear_student()
  w, b = _weights(student)
  rng = np.random.default_rng(1)
  x = rng.integers(60, 190, (5,) + SHAPE).astype(np.uint8)
  labels = np.array([0, 1, 2, 1, 0])
  out = jbda.jacobian_augment(student, x, labels, 0.1)
  z = to_float(x).reshape(5, -1).astype(np.float64)
  p = softmax(z @ w + b)
  for i, c in enumerate(labels):  # d p_c / dx = p_c (w_c - sum_k p_k w_k)
    grad = p[i, c] * (w[:, c] - w @ p[i])
    expected = np.clip(np.round(x[i].reshape(-1) + 25.5 * np.sign(grad)), 0, 255)
    np.testing.assert_array_equal(out[i].reshape(-1), expected)
  assert [jbda.step_size(0.1, 3, r) for r in range(1, 8)] == [0.1, 0.1, 0.1, -0.1, -0.1, -0.1, 0.1]


def test_deepfool_norm_is_the_distance_to_the_nearest_boundary_of_a_linear_student():
  student = _linear_student(seed=2)
  w, b = _weights(student)
  x = np.random.default_rng(3).uniform(-1, 1, (7,) + SHAPE).astype(np.float32)
  norms = dfal.deepfool_norms(student.model, student.variables, x, overshoot=0.0)
  z = x.reshape(7, -1).astype(np.float64)
  f = z @ w + b
  for i in range(7):
    k0 = np.argmax(f[i])
    dist = min(abs(f[i, k] - f[i, k0]) / np.linalg.norm(w[:, k] - w[:, k0]) for k in range(3) if k != k0)
    assert norms[i] == pytest.approx(dist, rel=1e-3, abs=1e-3)


def test_deepfool_on_the_top_classes_measures_the_distance_to_their_boundaries_only():
  """With `classes`=2 DeepFool linearises only each input's label and runner-up: on a linear student with 4 classes
  the norm is the distance to the boundary between those two (which may be farther than the nearest boundary), for
  inputs far from the origin as well, and a batch of 300 (a full chunk plus a padded bucket) gives what its parts
  give."""
  student = _linear_student(num_classes=4, seed=4)
  w, b = _weights(student)
  x = np.random.default_rng(5).uniform(-1, 1, (300,) + SHAPE).astype(np.float32) * np.float32(30.0)
  norms = dfal.deepfool_norms(student.model, student.variables, x, overshoot=0.0, classes=2)
  f = x.reshape(len(x), -1).astype(np.float64) @ w + b
  top = np.argsort(-f, axis=1)[:, :2]
  rows = np.arange(len(x))
  gap = f[rows, top[:, 0]] - f[rows, top[:, 1]]
  dist = gap / np.linalg.norm(w[:, top[:, 0]] - w[:, top[:, 1]], axis=0)
  np.testing.assert_allclose(norms, dist, rtol=1e-3, atol=1e-3)
  parts = dfal.deepfool_norms(student.model, student.variables, x[:13], overshoot=0.0, classes=2)
  np.testing.assert_allclose(parts, norms[:13], rtol=1e-5)


def test_gradient_bandit_moves_towards_the_rewarded_arm():
  h = np.zeros(3)
  probs = knockoff.softmax_available(h, np.ones(3, bool))
  h = knockoff.gradient_bandit_update(h, probs, 1, reward=1.0, baseline=0.0, lr=0.5)
  assert h[1] > 0 > h[0] and h[0] == h[2]
  h2 = knockoff.gradient_bandit_update(np.zeros(3), probs, 1, reward=-1.0, baseline=0.0, lr=0.5)
  assert h2[1] < 0 < h2[0]


def test_knockoff_adaptive_learns_which_kind_of_input_pays():
  """Two sources, each of two classes; only the inputs of leaf (1, 0) get confident answers: with the certainty
  reward the bandit ends up asking mostly there, and its preferences say so at both levels."""
  n = 800
  kinds = np.stack([np.repeat([0, 1], n // 2), np.tile(np.repeat([0, 1], n // 4), 2)], 1)
  natural = np.zeros((n,) + SHAPE, np.uint8)
  natural[..., 0] = ((kinds[:, 0] == 1) & (kinds[:, 1] == 0))[:, None, None] * 255
  natural[:, 0, 0, 0] = np.arange(n) % 200  # distinct inputs
  backend = lambda x: np.where(x.reshape(len(x), -1)[:, 1:].mean(-1, keepdims=True) > 100, [[8.0, 0, 0]], 0.0)
  strategy = knockoff.KnockoffAdaptive(reward="cert", lr=0.2, batch=4)
  rnd = _round(natural, Oracle(backend), limit=200, kinds=kinds)
  state = strategy.init(rnd)
  strategy.select(state, rnd, 200)
  late = rnd.asked.natural[-100:]
  assert np.mean((kinds[late, 0] == 1) & (kinds[late, 1] == 0)) > 0.7
  assert state.h[()][1] > state.h[()][0] and state.h[(1,)][0] > state.h[(1,)][1]


def test_zeroth_order_gradient_of_a_linear_loss():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 3, 3, 1)) * 50.0
  x = rng.normal(size=(2, 3, 3, 1))
  d = rng.choice([-0.01, 0.01], (4000, 2, 3, 3, 1))
  loss = lambda v: (v * a).reshape(v.shape[0], 2, -1).sum(-1) if v.ndim == 5 else (v * a).reshape(2, -1).sum(-1)
  losses = np.concatenate([loss(x)[None], loss(x[None] + d)])
  g = dfme.zeroth_order_gradient(losses, d)
  assert np.linalg.norm(g - a) / np.linalg.norm(a) < 0.1


def test_round_refuses_more_than_its_share():
  natural = np.zeros((20,) + SHAPE, np.uint8)
  rnd = _round(natural, Oracle(lambda x: np.zeros((len(x), 3))), limit=5)
  rnd.ask(indices=np.arange(3))
  with pytest.raises(RoundBudgetExceeded, match="may ask 5"):
    rnd.ask(indices=np.arange(3, 6))
  with pytest.raises(ValueError, match="uint8"):
    rnd.ask(inputs=np.zeros((1,) + SHAPE, np.float32))


@pytest.mark.parametrize("name", sorted(strategies.STRATEGIES))
def test_every_strategy_asks_exactly_its_budget_across_rounds(name):
  """Counted at the backend: each round asks its share, the total is the budget, and a natural input is never
  asked twice. The student between rounds is an untrained linear model (the rule, not its quality, is tested)."""
  rng = np.random.default_rng(5)
  natural = rng.integers(0, 256, (120,) + SHAPE, dtype=np.uint8)
  kinds = np.stack([rng.integers(0, 2, 120), rng.integers(0, 3, 120)], 1)
  counted = []
  backend = lambda x: (counted.append(len(x)), to_float(np.asarray(x)).reshape(len(x), -1)[:, :3] * 3.0)[1]
  strategy = strategies.make(name, candidates=50, dfme_batch=4, knockoff_batch=3, dfal_max_iter=3)
  budget, n_rounds = 37, 3
  oracle = Oracle(backend, "probabilities", budget=budget)
  e = rounds.Extraction(oracle, budget, seed=7, asked=Asked.empty(SHAPE, 3))
  source = natural if strategy.source != "none" else natural[:0]
  total = 0
  for r in range(rounds.num_rounds(strategy, n_rounds)):
    before = sum(counted)
    asked = rounds.ask_round(
      strategy, e, r, n_rounds, source, kinds, _linear_student() if r else None, 3, "probabilities"
    )
    assert sum(counted) - before == asked == rounds.round_sizes(budget, rounds.num_rounds(strategy, n_rounds))[r]
    total += asked
  assert total == budget == sum(counted) == oracle.used == len(e.asked)
  nat = e.asked.natural[e.asked.natural >= 0]
  assert len(set(nat.tolist())) == len(nat)
  np.testing.assert_array_equal(e.asked.inputs[e.asked.natural >= 0], source[nat])


def test_random_strategy_is_the_original_choice():
  natural = np.zeros((500,) + SHAPE, np.uint8)
  natural[:, 0, 0, 0] = np.arange(500) % 256
  natural[:, 0, 1, 0] = np.arange(500) // 256
  for q in (1, 37, 500):
    e = rounds.Extraction(Oracle(lambda x: np.zeros((len(x), 3))), q, seed=11, asked=Asked.empty(SHAPE, 3))
    rounds.ask_round(strategies.make("random"), e, 0, 4, natural, None, None, 3, "probabilities")
    np.testing.assert_array_equal(e.asked.natural, supervised.choose_queries(11, 500, q))


def test_training_data_keeps_synthesised_inputs_out_of_the_unlabeled_pool():
  natural = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  a = Asked(np.array([[[[3]]], [[[200]]], [[[5]]]], np.uint8), np.array([3, -1, 5]), np.eye(3)[[0, 1, 2]])
  b = Asked(np.array([[[[201]]]], np.uint8), np.array([-1]), np.eye(3)[[2]] * 0.7 + 0.1)
  data, specs = rounds.training_data(natural, [a, b], "probabilities", labels_only=True, unlabeled=True)
  assert data[10, 0, 0, 0] == 200 and data[11, 0, 0, 0] == 201 and len(data) == 12
  (la, ta, ua), (lb, tb, ub) = specs
  assert la.tolist() == [3, 10, 5] and lb.tolist() == [11]
  assert set(ua.tolist()) == set(range(10)) - {3, 5} and ub.tolist() == list(range(10))
  np.testing.assert_array_equal(tb, [[0, 0, 1]])  # labels only: one-hot of the top class


def test_typicality_is_highest_in_the_densest_place_far_from_the_origin_too():
  points = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [3.0, 0.0]])
  for offset in (0.0, 1e7):
    t = typiclust.typicality(points + offset, 2)
    # the inner points have both neighbours 0.1 away; the outlier's nearest are 2.7 and 2.8 away
    np.testing.assert_allclose(t, [1 / 0.15, 1 / 0.1, 1 / 0.1, 1 / 0.15, 1 / 2.75], rtol=1e-6)
  assert typiclust.typicality(points[:1], 20).tolist() == [1.0]


def test_typiclust_visits_clusters_largest_first_and_those_already_asked_last():
  """Clusters A (4 points, one asked), B (3), C (2): B, C, then A, then B again; each visit the most typical unasked
  member (k = 1 here: mutual nearest neighbours tie, the first wins); more than the unasked inputs is a one-line
  error."""
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
  points = np.array([[0.0], [2.0], [2.5], [3.0], [10.0], [11.0], [11.3], [20.0], [22.0]])
  asked = np.zeros(9, bool)
  asked[3] = True
  assert typiclust.choose(labels, points, asked, 4, neighbours=20).tolist() == [5, 7, 1, 4]
  with pytest.raises(ValueError, match="only 8 are unasked"):
    typiclust.choose(labels, points, asked, 9, neighbours=20)


@pytest.mark.parametrize("dims", [0, 2])
def test_typiclust_asks_the_centre_of_each_blob(dims):
  """Three blobs of 4x4 images at pixel levels 40, 128, 220 with rare outliers: three queries, one from each blob,
  each a member of the blob's dense core, counted at the backend."""
  rng = np.random.default_rng(0)
  levels = np.repeat([40, 128, 220], [60, 30, 20])
  natural = np.clip(levels[:, None] + rng.normal(0, 3, (110, 16)), 0, 255)
  natural[::10] += rng.choice([-30.0, 30.0], (11, 16))  # outliers in each blob
  natural = np.clip(natural, 0, 255).astype(np.uint8).reshape((110,) + SHAPE)
  backend = CountingBackend(lambda x: np.zeros((len(x), 3)))
  e = rounds.Extraction(Oracle(backend), 3, seed=1, asked=Asked.empty(SHAPE, 3))
  rounds.ask_round(typiclust.TypiClust(dims=dims), e, 0, 1, natural, None, None, 3, "probabilities")
  assert backend.rows == 3
  picked = e.asked.natural
  assert sorted(levels[picked].tolist()) == [40, 128, 220]
  assert not np.any(picked % 10 == 0)
