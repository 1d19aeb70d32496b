"""Rotation self-supervision (Gidaris et al. 2018) as used with MixMatch in S4L (Zhai et al. 2019): every image of
the batch is shown in all four rotations (0/90/180/270 degrees) and the model's 4-way `rotation` head predicts
which. `make_rotation_loss` builds the extra loss that the step factories take (FS + Rot, MM + Rot, FixMatch + Rot).
Precision: float32.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import optax

from extraction import augment as aug
from extraction.datasets import to_float


def all_rotations(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Every image (N, H, H, C) in its four rotations: ((4N, H, H, C) images, (4N,) labels in {0, 1, 2, 3}); the
  first N are the images themselves, the next N turned 90 degrees counter-clockwise, and so on."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"rotation needs square images, got {images.shape[1:3]}")
  rotated = jnp.concatenate([pix.rot90(images, k) for k in range(4)])
  return rotated, jnp.repeat(jnp.arange(4), images.shape[0])


def rotation_loss(rotation_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of the 4-way rotation head."""
  return optax.softmax_cross_entropy_with_integer_labels(rotation_logits, labels).mean()


def make_rotation_loss(weight: float, flip: bool, shift: int, rotate_labeled: bool = False):
  """The S4L rotation loss as a step's extra loss: `extra(apply, params, batch, key) -> (weight * loss, metrics)`.

  Args:
    weight: the loss weight.
    flip, shift: augmentation of the images before rotating them.
    rotate_labeled: also rotate the labeled batch (S4L's option), not only `batch['unlabeled']`.
  """

  def extra(apply, params, batch, key):
    images = to_float(batch["unlabeled"])
    if rotate_labeled:
      images = jnp.concatenate([to_float(batch["images"]), images])
    images, labels = all_rotations(aug.augment(key, images, flip, shift))
    out = apply(params, images)
    if not isinstance(out, tuple):
      raise ValueError("the rotation loss needs a model built with rotation_head=True")
    loss = rotation_loss(out[1], labels)
    return weight * loss, {"loss_rot": loss}

  return extra
