"""FixMatch and its strong augmentation: pieces on hand-computed cases, the weak/strong pairing, a short run that
learns; the S4L rotation batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extraction import datasets, students
from semisup import fixmatch, randaugment, rotation


def test_pseudo_labels_threshold_mask():
  probs = jnp.array([[0.96, 0.04], [0.5, 0.5], [0.05, 0.95], [0.3, 0.7]])
  labels, mask = fixmatch.pseudo_labels(probs, 0.95)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])
  np.testing.assert_array_equal(mask, [1, 0, 1, 0])  # the threshold itself counts as confident


def test_unlabeled_loss_hand_computed():
  logits_strong = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]))
  probs_weak = jnp.array([[0.99, 0.01], [0.2, 0.8], [0.02, 0.98]])
  loss, frac = fixmatch.unlabeled_loss(logits_strong, probs_weak, 0.95)
  # confident: rows 0 (class 0) and 2 (class 1); row 1 masked out but still counted in the mean
  np.testing.assert_allclose(loss, (-np.log(0.5) + 0.0 - np.log(0.1)) / 3, rtol=1e-5)
  np.testing.assert_allclose(frac, 2 / 3)


def test_gradient_flows_only_through_the_strong_branch():
  grad_w = jax.grad(lambda w: fixmatch.unlabeled_loss(jnp.zeros((1, 2)), jax.nn.softmax(w), 0.0)[0])(
    jnp.array([[3.0, 0.0]])
  )
  np.testing.assert_array_equal(grad_w, 0.0)


def test_weak_and_strong_views_keep_the_pairing():
  """Row i of both views comes from input i: constant images of distinct grey levels stay constant under flips
  and reflect-padded shifts, and Cutout (no other op: num_ops=0) greys at most a quarter of the pixels, so most
  pixels of row i of each view keep level i."""
  levels = jnp.linspace(-0.9, 0.9, 16)
  u = jnp.broadcast_to(levels[:, None, None, None], (16, 8, 8, 1))
  weak, strong = jax.jit(fixmatch.views, static_argnums=(2, 3, 4))(jax.random.key(0), u, True, 2, 0)
  for view, least in ((weak, 1.0), (strong, 0.74)):
    same = np.isclose(np.asarray(view), np.asarray(levels)[:, None, None, None], atol=1e-5).mean(axis=(1, 2, 3))
    assert (same >= least).all(), same
  assert (np.asarray(strong) == randaugment.GREY * 2 - 1).any()  # Cutout did happen


def test_rand_augment_changes_images_within_range():
  u = jax.random.uniform(jax.random.key(3), (32, 8, 8, 3), minval=-1, maxval=1)
  out = jax.jit(randaugment.rand_augment, static_argnums=2)(jax.random.key(0), u, 2)
  assert out.shape == u.shape and float(out.min()) >= -1 - 1e-5 and float(out.max()) <= 1 + 1e-5
  assert (np.abs(np.asarray(out) - np.asarray(u)).max(axis=(1, 2, 3)) > 1e-3).all()


@pytest.mark.parametrize("op", randaugment.OPS, ids=lambda f: f.__name__)
def test_each_operation_is_jittable_and_in_range(op):
  img = jax.random.uniform(jax.random.key(1), (8, 8, 3))
  for m in (0.0, 0.5, 1.0):
    out = jax.jit(op)(img, m)
    assert out.shape == img.shape and float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


def test_rotation_all_four_rotations_of_each_image():
  x = jnp.arange(2 * 3 * 3, dtype=jnp.float32).reshape(2, 3, 3, 1)
  rotated, labels = rotation.all_rotations(x)
  assert rotated.shape == (8, 3, 3, 1)
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2, 3, 3])
  for k in range(4):
    for i in range(2):
      np.testing.assert_array_equal(rotated[2 * k + i], jnp.rot90(x[i], k, axes=(0, 1)))


def test_fixmatch_run_learns_from_few_labels():
  """30 labeled digits (one-hot labels, as a labels-only oracle answers) and the rest unlabeled: FixMatch's
  students beat chance by far and their confident fraction grows."""
  data = datasets.load_digits()
  y = np.eye(10, dtype=np.float32)[data.train.labels]
  order = np.random.default_rng(0).permutation(len(y))
  tasks = [students.StudentTask(order[:30], y[order[:30]], order[30:], s) for s in (0, 1)]
  cfg = students.StudentConfig(
    model="mlp",
    steps=300,
    batch_size=32,
    unlabeled_batch_size=64,
    lr=0.03,
    weight_decay=5e-4,
    optimizer="sgd",
    schedule="fixmatch_cosine",
  )
  make = lambda m: fixmatch.make_fixmatch_step(m, threshold=0.95, flip=False, shift=1)
  acc = lambda p, full=True: {"accuracy": float(np.mean(p(data.test.images).argmax(-1) == data.test.labels))}
  _, _, hist = students.train_students(
    data.train.images, tasks, 10, cfg, make, needs_unlabeled=True, evaluate=acc, eval_every=300, steps_per_call=10
  )
  assert all(h[-1]["accuracy"] > 0.6 for h in hist), hist  # chance 0.1
