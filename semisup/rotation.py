"""Rotation self-supervision (Gidaris et al. 2018, as used with MixMatch in S4L): predict which of
0/90/180/270 degrees an unlabeled image was rotated by, through the model's 4-way `rotation` head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def rotate(images: jax.Array, quarter_turns: jax.Array) -> jax.Array:
  """Rotates each square image (N, H, H, C) by its own number of quarter turns (N,) in {0, 1, 2, 3}."""
  def one(img, k):
    return jax.lax.switch(k, [lambda x, r=r: jnp.rot90(x, r, axes=(0, 1)) for r in range(4)], img)
  return jax.vmap(one)(images, quarter_turns)


def rotation_batch(rng: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rotates every image by a random multiple of 90 degrees; returns (rotated images, rotation labels)."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"rotation needs square images, got {images.shape[1:3]}")
  labels = jax.random.randint(rng, (images.shape[0],), 0, 4)
  return rotate(images, labels), labels


def rotation_loss(rotation_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean cross-entropy of the 4-way rotation head."""
  return optax.softmax_cross_entropy_with_integer_labels(rotation_logits, labels).mean()
