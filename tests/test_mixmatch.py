"""MixMatch: each pure piece on hand-computed cases and the jitted step (the unlabeled pool never reaching the
oracle is tested at the launcher, tests/test_protocol.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extraction import models, train
from semisup import mixmatch, rotation


def test_sharpen_known_distribution():
  # [.6, .3, .1] ** 2 = [.36, .09, .01], sum .46
  out = mixmatch.sharpen(jnp.array([[0.6, 0.3, 0.1]]), 0.5)
  np.testing.assert_allclose(out, [[0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46]], rtol=1e-5)
  np.testing.assert_allclose(mixmatch.sharpen(jnp.array([0.6, 0.3, 0.1]), 1.0), [0.6, 0.3, 0.1], rtol=1e-5)
  np.testing.assert_allclose(mixmatch.sharpen(jnp.array([0.5, 0.5, 0.0]), 0.5), [0.5, 0.5, 0.0], atol=1e-7)


def test_guess_labels_averages_then_sharpens():
  probs = jnp.array(
    [
      [[0.8, 0.2], [0.5, 0.5]],  # augmentation 1
      [[0.4, 0.6], [0.1, 0.9]],
    ]
  )  # augmentation 2
  # means [.6, .4] and [.3, .7]; squared and renormalised
  expected = [[0.36 / 0.52, 0.16 / 0.52], [0.09 / 0.58, 0.49 / 0.58]]
  np.testing.assert_allclose(mixmatch.guess_labels(probs, 0.5), expected, rtol=1e-5)


def test_mixup_fixed_lambda_and_permutation():
  x = jnp.arange(3.0).reshape(3, 1, 1, 1)
  y = jnp.eye(3)
  lam, perm = jnp.array([1.0, 0.75, 0.5]), jnp.array([2, 0, 1])
  mx, my = mixmatch.mixup(x, y, lam, perm)
  np.testing.assert_allclose(mx.ravel(), [0.0, 0.75, 1.5])
  np.testing.assert_allclose(my, [[1, 0, 0], [0.25, 0.75, 0], [0, 0.5, 0.5]])


def test_mixup_params_range_and_permutation():
  lam, perm = jax.jit(mixmatch.mixup_params, static_argnums=(1, 2))(jax.random.key(0), 1000, 0.75)
  assert lam.shape == (1000,) and lam.dtype == jnp.float32
  assert float(lam.min()) >= 0.5 and float(lam.max()) <= 1.0
  assert 0.7 < float(lam.mean()) < 0.9  # E[max(l, 1-l)] for Beta(.75, .75) is about 0.80
  np.testing.assert_array_equal(np.sort(perm), np.arange(1000))


def test_mixmatch_loss_tiny_known_inputs():
  logits_x = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  targets_x = jnp.array([[1.0, 0.0, 0.0]])
  logits_u = jnp.zeros((2, 2))  # softmax = [.5, .5]
  targets_u = jnp.array([[1.0, 0.0], [0.5, 0.5]])
  loss_x, loss_u = jax.jit(mixmatch.mixmatch_loss)(logits_x, targets_x, logits_u, targets_u)
  np.testing.assert_allclose(loss_x, np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(loss_u, (0.25 + 0.25 + 0 + 0) / 4, rtol=1e-6)


def test_rampup():
  np.testing.assert_allclose([mixmatch.rampup(s, 100) for s in (0, 25, 100, 500)], [0, 0.25, 1, 1])
  assert float(mixmatch.rampup(7, 0)) == 1.0


def _batch(rng, b, u, shape, classes=10):
  r = np.random.default_rng(rng)
  return {
    "images": r.integers(0, 256, (b,) + shape, dtype=np.uint8),
    "targets": r.dirichlet(np.ones(classes), b).astype(np.float32),
    "unlabeled": r.integers(0, 256, (u,) + shape, dtype=np.uint8),
  }


@pytest.mark.parametrize("name,rotation_weight", [("mlp", 0.0), ("small_cnn", 0.5)])
def test_step_jitted_changes_params(name, rotation_weight):
  model = models.create_model(name, 10, rotation_head=rotation_weight > 0)
  tx = train.make_optimizer(0.002, 0.02, 10)
  state = train.create_state(model, tx, jax.random.key(0), (8, 8, 1))
  before = jax.tree_util.tree_map(np.array, (state.params, state.batch_stats))
  extra = rotation.make_rotation_loss(rotation_weight, True, 1) if rotation_weight else None
  step = jax.jit(
    mixmatch.make_mixmatch_step(model, lambda_u=75.0, rampup_steps=4, flip=True, shift=1, extra_loss=extra),
    donate_argnums=0,
  )
  for i in range(3):
    state, metrics = step(state, _batch(i, 8, 8, (8, 8, 1)))
  metrics = jax.device_get(metrics)
  expected = {"loss", "loss_x", "loss_u", "w_u"} | ({"loss_rot"} if rotation_weight else set())
  assert expected <= set(metrics) and all(np.isfinite(v) for v in metrics.values())
  np.testing.assert_allclose(metrics["w_u"], 75.0 * 2 / 4)  # the third step sees state.step == 2
  assert int(state.step) == 3
  moved = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), before[0], jax.device_get(state.params))
  assert all(jax.tree_util.tree_leaves(moved))
  if name == "small_cnn":
    stats = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), before[1], jax.device_get(state.batch_stats))
    )
    assert stats and all(stats)
