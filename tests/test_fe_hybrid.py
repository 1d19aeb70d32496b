"""Hybrid FE + learning (functional_equivalence/deep/hybrid.py, the `hybrid` experiment): the first layer is the
recovered one (frozen: unchanged by training; init: trained from it), every query is counted against one total
budget (a backend that counts its own rows), the first layer attack's answers are kept and fitted, a budget below
the first layer's queries is refused, and the experiment writes rows per method and their means."""

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from extraction.oracle import Oracle
from functional_equivalence import align
from functional_equivalence.deep import hybrid, network
from launch import experiments
from launch import hybrid as hybrid_launch  # defines the --hybrid_* flags, registers the experiment
from tests.counting import CountingBackend

FLAGS = flags.FLAGS


@pytest.fixture(scope="module")
def victim():
  net = network.random_net(2, (8, 6, 6, 3))
  counter = CountingBackend(network.backend(net))
  first = hybrid.first_layer(Oracle(counter, output="logits", record_inputs=False), 8, seed=5)
  assert first[2] == counter.rows and first[0].shape == (8, 6)
  return net, first


def test_first_layer_is_the_victims_up_to_scale(victim):
  net, first = victim
  w, b = first.w, first.b
  true = np.vstack([net.weights[0], net.biases[0]])
  rec = np.vstack([w, b])
  cos = (true / np.linalg.norm(true, axis=0)).T @ (rec / np.linalg.norm(rec, axis=0))
  assert np.all(np.max(cos, axis=1) > 1 - 1e-12)  # every unit, with its sign


@pytest.mark.parametrize("method", hybrid.METHODS)
def test_students_spend_the_budget_and_keep_or_train_the_first_layer(victim, method):
  net, first = victim
  pool = np.random.default_rng(0).uniform(size=(300, 8))
  counter = CountingBackend(network.backend(net))
  total = first[2] + 400
  student, counts = hybrid.run(
    Oracle(counter, output="logits", record_inputs=False), pool, [6, 6], total, method, seed=1, steps=50, first=first
  )
  assert counts["queries"] == total and counter.rows == counts["learning_queries"] == total - counts["fe_queries"]
  assert counts["fe_queries"] == (0 if method == "pure" else first[2])
  if method == "frozen":
    np.testing.assert_array_equal(student.weights[0], first[0])
  else:
    assert not np.allclose(student.weights[0], first[0])


def test_a_budget_below_the_first_layer_is_refused(victim):
  net, first = victim
  oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
  with pytest.raises(ValueError, match="the whole budget is"):
    hybrid.run(oracle, np.zeros((5, 8)), [6], first[2] - 1, "frozen", 0, 10, first)


def test_an_unknown_schedule_is_refused_before_any_query(victim):
  net, first = victim
  counter = CountingBackend(network.backend(net))
  oracle = Oracle(counter, output="logits", record_inputs=False)
  with pytest.raises(ValueError, match="unknown learning rate schedule 'linear'.*constant, cosine"):
    hybrid.run(oracle, np.zeros((5, 8)), [6], first.queries + 10, "frozen", 0, 10, first, schedule="linear")
  assert counter.rows == 0


def test_a_cosine_schedule_decays_adams_rate_to_nothing_and_fits(monkeypatch):
  import optax

  rates = []
  adam = optax.adam
  monkeypatch.setattr(optax, "adam", lambda rate, *a, **k: rates.append(rate) or adam(rate, *a, **k))
  teacher = network.random_net(3, (5, 4, 2))
  x = np.random.default_rng(0).normal(size=(512, 5))
  y = network.logits(teacher, x)
  start = hybrid.init_student([5, 8, 2], np.random.default_rng(1))
  fits = {}
  for schedule in hybrid.SCHEDULES:
    student = hybrid.distill(start, x, y, 3000, seed=2, frozen_first=False, learning_rate=1e-2, schedule=schedule)
    fits[schedule] = np.abs(network.logits(student, x) - y).mean() / np.abs(y).mean()
  assert rates[0] == 1e-2 and float(rates[1](0)) == pytest.approx(1e-2) and float(rates[1](1500)) == pytest.approx(5e-3)
  assert abs(float(rates[1](3000))) < 1e-9
  assert max(fits.values()) < 0.02, fits


def test_experiment_rows_and_means(tmp_path):
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(
    hybrid_victim_hidden=["4", "4"],
    hybrid_extra_queries=["200"],
    hybrid_steps=["20", "30"],
    hybrid_noise=["0", "0.1"],
    hybrid_seeds=1,
    hybrid_box_inputs=100,
    hybrid_schedule="cosine",
  ):
    rows = experiments.EXPERIMENTS["hybrid"](tmp_path)
  runs = [r for r in rows if "seed" in r]
  assert all(r["schedule"] == "cosine" for r in runs)
  assert len(runs) == 6 and {(r["method"], r["steps"]) for r in runs} == {
    (m, s) for m in hybrid.METHODS for s in (20, 30)
  }
  assert all(r["queries"] == r["fe_queries"] + r["learning_queries"] for r in runs)
  # noise of std 0 leaves the test images as they were: the same agreement as on the test split
  assert all(r["noise_0_fidelity"] == r["fidelity"] for r in runs)
  assert all(r["noise_0_logit_error"] == pytest.approx(r["logit_error"], rel=1e-12) for r in runs)
  # the frozen student's first layer is exact but the rest learned in 20-30 steps: its logits are not the victim's
  assert all(r["logit_error"] > 1e-6 and r["box_logit_error"] > 1e-6 for r in runs)
  means = [r for r in rows if "mean of 1" in r["method"]]
  assert len(means) == 6 and all(0.0 <= r["noise_0.1_fidelity"] <= 1.0 for r in means)
  assert all(r["box_logit_error_std"] == 0.0 for r in means)  # one seed: no spread
  assert (tmp_path / "victim.npz").exists() and (tmp_path / "fidelity_by_distance.png").exists()


def test_noisy_copies_are_clipped_copies_of_each_row():
  x = np.array([[0.0, 1.0], [0.5, 0.5]])
  noisy = hybrid_launch.noisy_copies(x, [0.0, 0.3], seed=0)
  assert noisy[0.0].shape == (2 * hybrid_launch.NOISE_COPIES, 2)
  np.testing.assert_array_equal(noisy[0.0], np.repeat(x, hybrid_launch.NOISE_COPIES, axis=0))
  assert noisy[0.3].min() >= 0.0 and noisy[0.3].max() <= 1.0 and not np.array_equal(noisy[0.3], noisy[0.0])


@pytest.mark.parametrize(
  "name, value, message",
  [
    ("hybrid_steps", ["100", "-5"], "positive integers"),
    ("hybrid_noise", ["0.1", "x"], "non-negative numbers"),
    ("hybrid_reuse_share", 1.0, "strictly between 0 and 1"),
    ("hybrid_learning_rate", 0.0, "a positive number"),
  ],
)
def test_bad_flags_are_refused_on_assignment(name, value, message):
  with flagsaver.flagsaver(), pytest.raises(flags.IllegalFlagValueError, match=message):
    setattr(FLAGS, name, value)


def test_through_probabilities_the_logit_differences_are_fitted():
  net = network.random_net(2, (8, 6, 6, 3))
  counter = CountingBackend(network.backend(net))
  oracle = Oracle(counter, output="probabilities", record_inputs=False)
  first = hybrid.first_layer(oracle, 8, seed=5)
  assert first[2] == counter.rows and first[0].shape == (8, 6)
  pool = np.random.default_rng(0).uniform(size=(300, 8))
  z = network.logits(net, pool)
  np.testing.assert_allclose(hybrid.targets(oracle, pool), z[:, 1:] - z[:, :1], rtol=0, atol=1e-12)
  before = counter.rows
  student, counts = hybrid.run(oracle, pool, [6, 6], first[2] + 400, "frozen", seed=1, steps=1500, first=first)
  assert counter.rows - before == counts["learning_queries"] == 400 and student.sizes == (8, 6, 6, 3)
  np.testing.assert_array_equal(student.weights[0], first[0])
  agree = np.mean(network.logits(student, pool).argmax(1) == z.argmax(1))
  assert agree >= 0.95, agree


def test_the_first_layer_attacks_answers_are_kept_as_given(victim):
  net, first = victim
  assert len(first.asked) == len(first.answers) == first.queries  # under KEPT_ANSWERS: every one
  truth = network.logits(net, first.asked)  # the oracle answered in batches: equal to rounding
  np.testing.assert_allclose(first.answers, truth, rtol=1e-12, atol=1e-12 * np.abs(truth).max())
  far = np.linalg.norm(first.asked, axis=1)
  assert far.max() > 100 * np.median(far)  # the attack's lines reach far from where it starts
  few = hybrid.first_layer(Oracle(network.backend(net), output="logits", record_inputs=False), 8, seed=5, keep=500)
  assert len(few.asked) == 500 and few.queries == first.queries
  truth = network.logits(net, few.asked)
  np.testing.assert_allclose(few.answers, truth, rtol=1e-12, atol=1e-12 * np.abs(truth).max())


def test_the_kept_answers_are_a_uniform_sample_in_bounded_memory():
  class Echo:  # answers each input with itself
    output, used = "logits", 0

    def __call__(self, x):
      return x

  keeping = hybrid._Keeping(Echo(), 500, np.random.default_rng(0))
  for batch in range(20):
    keeping(np.arange(1000 * batch, 1000 * (batch + 1), dtype=np.float64)[:, None])
    assert sum(len(a) for a in keeping.asked) <= 2 * 500 + 1000  # never more than twice the sample and a batch
  asked, answers = keeping.sample(1)
  np.testing.assert_array_equal(asked, answers)
  assert len(asked) == 500 and len(np.unique(asked)) == 500 and np.all(np.diff(asked[:, 0]) > 0)  # in order
  per_batch = np.bincount((asked[:, 0] // 1000).astype(int), minlength=20)
  assert per_batch.min() >= 10 and per_batch.max() <= 45, per_batch  # 25 expected from every part of the stream
  few = hybrid._Keeping(Echo(), 500, np.random.default_rng(0))
  few(np.arange(300, dtype=np.float64)[:, None])
  np.testing.assert_array_equal(few.sample(1)[0][:, 0], np.arange(300))  # fewer than `keep`: every one, in order


def test_kept_answers_weigh_far_errors_relatively():
  pool = np.random.default_rng(0).uniform(size=(200, 3))
  centre, r0 = pool.mean(0), np.median(np.linalg.norm(pool - pool.mean(0), axis=1))
  asked = centre + np.array([[0.5, 0, 0], [0, 10.0, 0], [0, 0, -1000.0]]) * r0
  answers = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
  first = hybrid.FirstLayer(np.zeros((3, 2)), np.zeros(2), 3, asked, answers)
  x, y, weights = hybrid.kept_answers(first, pool, "logits")
  np.testing.assert_array_equal(y, answers)
  np.testing.assert_allclose(weights, [1.0, 1e-2, 1e-6], rtol=1e-12)
  # through probabilities: the logit differences, a row that underflowed left out
  probabilities = np.array([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]])
  x, y, weights = hybrid.kept_answers(first._replace(answers=probabilities), pool, "probabilities")
  np.testing.assert_allclose(y, [[np.log(3.0)], [0.0]], atol=1e-15)
  np.testing.assert_array_equal(x, asked[[0, 2]])
  np.testing.assert_allclose(weights, [1.0, 1e-6], rtol=1e-12)


def test_fitting_the_kept_answers_makes_the_student_closer_off_the_pool(victim):
  net, first = victim
  pool = np.random.default_rng(0).uniform(size=(300, 8))
  wider = np.random.default_rng(1).uniform(-3.0, 3.0, size=(5000, 8))  # the pool is in [0, 1]^8
  errors = {}
  for reuse in (False, True):
    oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
    student, counts = hybrid.run(oracle, pool, [6, 6], first.queries + 300, "frozen", 1, 800, first, reuse=reuse)
    assert counts["fe_answers_fitted"] == (len(first.asked) if reuse else 0) and oracle.used == 300
    errors[reuse] = np.mean(align.centered_logit_error(net, student, wider))
  assert errors[True] < 0.75 * errors[False], errors  # measured 0.196 against 0.335
