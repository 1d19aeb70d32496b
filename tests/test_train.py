import jax
import numpy as np
import pytest

from extraction import models, seeds, supervised, train


def _setup(digits, steps):
  model = models.create_model("mlp", 10)
  tx = train.make_optimizer(0.002, 0.02, steps)
  state = train.create_state(model, tx, jax.random.key(0), digits.image_shape)
  step = train.make_supervised_step(model, shift=1)
  one_hot = np.eye(10, dtype=np.float32)

  def make_batch(i):
    idx = train.batch_indices(0, i, len(digits.train), 32)
    return {"images": digits.train.images[idx], "targets": one_hot[digits.train.labels[idx]]}

  return state, step, make_batch


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(digits, tmp_path, steps_per_call):
  state, step, make_batch = _setup(digits, 20)
  full = train.fit(step, state, make_batch, 20)
  state, step, make_batch = _setup(digits, 20)
  train.fit(step, state, make_batch, 10, checkpoint_dir=tmp_path, checkpoint_every=5, steps_per_call=steps_per_call)
  state, step, make_batch = _setup(digits, 20)
  seen = []
  resumed = train.fit(
    step,
    state,
    make_batch,
    20,
    checkpoint_dir=tmp_path,
    steps_per_call=steps_per_call,
    callback=lambda i, s: seen.append(i),
    callback_every=4,
  )
  assert int(resumed.step) == 20 and seen == [12, 16, 20]  # callbacks at their exact steps, after the resume
  for a, b in zip(jax.tree.leaves(full.ema_params), jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_training(digits):
  state, step, make_batch = _setup(digits, 5)
  bad = lambda i: {**make_batch(i), "targets": np.full((32, 10), np.nan, np.float32)}
  with pytest.raises(FloatingPointError, match="loss is nan"):
    train.fit(step, state, bad, 5, log_every=1)


def test_top_k_targets_spread_the_missing_mass():
  answers = np.array([[0.6, 0.3, 0.0, 0.0, 0.0]])
  t = supervised.oracle_targets(answers, "top_k")
  np.testing.assert_allclose(t, [[0.6, 0.3, 0.1 / 3, 0.1 / 3, 0.1 / 3]], rtol=1e-6)
  np.testing.assert_allclose(supervised.oracle_targets(np.array([[2.0, 0.0]]), "logits").sum(), 1.0, rtol=1e-6)


def test_query_choice_is_seeded_and_nested():
  a, b = supervised.choose_queries(3, 100, 10), supervised.choose_queries(3, 100, 40)
  assert len(set(a)) == 10 and (b[:10] == a).all()
  assert not (supervised.choose_queries(4, 100, 10) == a).all()
  with pytest.raises(ValueError, match="queries must be in 1..100"):
    supervised.choose_queries(0, 100, 101)


@pytest.mark.parametrize("name", ["small_cnn", "mlp"])
def test_student_and_victim_start_apart_with_the_same_seed(name, digits):
  """The same architecture and the same seed value: the student's initial weights share nothing with the
  victim's (each from its own stream), and neither do their data orders."""
  model = models.create_model(name, 10)
  tx = train.make_optimizer(0.002, 0.02, 10)
  victim = train.create_state(model, tx, seeds.key(0, "victim"), digits.image_shape)
  student = train.create_state(model, tx, seeds.key(0, "student"), digits.image_shape)
  pairs = list(zip(jax.tree.leaves(victim.params), jax.tree.leaves(student.params)))
  assert pairs
  for v, s in pairs:
    v, s = np.asarray(v).ravel(), np.asarray(s).ravel()
    if np.ptp(v) > 0:  # randomly initialised arrays (biases start at 0 in both)
      assert not np.any(v == s) and abs(np.corrcoef(v, s)[0, 1]) < 0.1
  assert not np.array_equal(jax.random.key_data(victim.step_key()), jax.random.key_data(student.step_key()))
  v_order = train.batch_indices(0, 0, 1000, 64, salt=seeds.salt("victim"))
  s_order = train.batch_indices(0, 0, 1000, 64, salt=seeds.salt("student"))
  assert (v_order != s_order).mean() > 0.9


def test_streams_differ_and_are_reproducible():
  draws = {s: seeds.rng(0, s).integers(0, 2**31, 4).tolist() for s in seeds.STREAMS}
  assert len({tuple(d) for d in draws.values()}) == len(seeds.STREAMS)
  assert draws["query"] == seeds.rng(0, "query").integers(0, 2**31, 4).tolist()
  with pytest.raises(ValueError, match="unknown random stream 'nope'"):
    seeds.key(0, "nope")


def test_optimizers_and_schedules():
  params = {"kernel": np.ones(3, np.float32), "bias": np.ones(3, np.float32)}
  grads = {"kernel": np.zeros(3, np.float32), "bias": np.zeros(3, np.float32)}
  for opt in ("adam", "sgd"):
    tx = train.make_optimizer(0.1, 0.5, 10, "fixmatch_cosine", opt)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(np.abs(updates["kernel"]).max()) > 0 and float(np.abs(updates["bias"]).max()) == 0  # decay on kernels
  with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
    train.make_optimizer(0.1, 0.0, 10, "linear")
  with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
    train.make_optimizer(0.1, 0.0, 10, optimizer="rmsprop")
