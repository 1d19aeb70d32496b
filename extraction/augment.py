"""Batched, jittable image augmentation driven by explicit keys: random horizontal flip and random shift.

Shift is the MixMatch reference's: reflect-pad by `shift` pixels and crop back at a random offset.
Inputs are float images (N, H, W, C); every function is pure and safe under jit/vmap.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def random_shift(rng: jax.Array, images: jax.Array, shift: int) -> jax.Array:
  """Translates each image by up to `shift` pixels in each direction (reflect padding)."""
  if shift <= 0:
    return images
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def augment(rng: jax.Array, images: jax.Array, flip: bool, shift: int) -> jax.Array:
  """Flip (if `flip`) then shift (if `shift` > 0); the identity when both are off."""
  flip_rng, shift_rng = jax.random.split(rng)
  if flip:
    images = random_flip(flip_rng, images)
  return random_shift(shift_rng, images, shift)


def default_augmentation(dataset: str) -> tuple[bool, int]:
  """(flip, shift) used for each dataset: no flips for digits (SVHN, digits), 4-pixel shifts at 32x32."""
  return {"cifar10": (True, 4), "svhn_cropped": (False, 4), "digits": (False, 1)}.get(dataset, (False, 2))
