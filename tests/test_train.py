import jax
import numpy as np
import pytest

from extraction import models, supervised, train


def _setup(digits, steps):
  model = models.create_model("mlp", 10)
  tx = train.make_optimizer(0.002, 0.02, steps)
  state = train.create_state(model, tx, jax.random.key(0), digits.image_shape)
  step = train.make_supervised_step(model, tx, shift=1)
  one_hot = np.eye(10, dtype=np.float32)

  def make_batch(i):
    idx = train.batch_indices(0, i, len(digits.train), 32)
    return {"images": digits.train.images[idx], "targets": one_hot[digits.train.labels[idx]]}
  return state, step, make_batch


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(digits, tmp_path):
  state, step, make_batch = _setup(digits, 20)
  full = train.fit(step, state, make_batch, 20, jax.random.key(1))
  state, step, make_batch = _setup(digits, 20)
  train.fit(step, state, make_batch, 10, jax.random.key(1), checkpoint_dir=tmp_path, checkpoint_every=5)
  state, step, make_batch = _setup(digits, 20)
  resumed = train.fit(step, state, make_batch, 20, jax.random.key(1), checkpoint_dir=tmp_path)
  assert int(resumed.step) == 20
  for a, b in zip(jax.tree.leaves(full.ema_params), jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_nan_loss_stops_training(digits):
  state, step, make_batch = _setup(digits, 5)
  bad = lambda i: {**make_batch(i), "targets": np.full((32, 10), np.nan, np.float32)}
  with pytest.raises(FloatingPointError, match="loss is nan"):
    train.fit(step, state, bad, 5, jax.random.key(0), log_every=1)


def test_top_k_targets_spread_the_missing_mass():
  answers = np.array([[0.6, 0.3, 0.0, 0.0, 0.0]])
  t = supervised.oracle_targets(answers, "top_k")
  np.testing.assert_allclose(t, [[0.6, 0.3, 0.1 / 3, 0.1 / 3, 0.1 / 3]], rtol=1e-6)
  np.testing.assert_allclose(supervised.oracle_targets(np.array([[2.0, 0.0]]), "logits").sum(), 1.0, rtol=1e-6)


def test_query_choice_is_seeded_and_nested():
  a, b = supervised.choose_queries(3, 100, 10), supervised.choose_queries(3, 100, 40)
  assert len(set(a)) == 10 and (b[:10] == a).all()
  with pytest.raises(ValueError, match="queries must be in 1..100"):
    supervised.choose_queries(0, 100, 101)
