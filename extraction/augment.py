"""Batched, jittable image augmentation driven by explicit keys (dm-pix per image, vmapped over the batch).

Weak augmentation (MixMatch, FS, FixMatch's weak branch): random horizontal flip and random shift, the latter the
MixMatch reference's: reflect-pad by `shift` pixels and crop back at a random offset.
Inputs are float images (N, H, W, C); every function is pure and safe under jit/vmap.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  return jax.vmap(pix.random_flip_left_right)(jax.random.split(key, images.shape[0]), images)


def random_shift(key: jax.Array, images: jax.Array, shift: int) -> jax.Array:
  """Translates each image by up to `shift` pixels in each direction (reflect padding)."""
  if shift <= 0:
    return images
  padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  crop = lambda k, img: pix.random_crop(k, img, images.shape[1:])
  return jax.vmap(crop)(jax.random.split(key, images.shape[0]), padded)


def augment(key: jax.Array, images: jax.Array, flip: bool, shift: int) -> jax.Array:
  """Flip (if `flip`) then shift (if `shift` > 0); the identity when both are off."""
  flip_key, shift_key = jax.random.split(key)
  if flip:
    images = random_flip(flip_key, images)
  return random_shift(shift_key, images, shift)


def default_augmentation(dataset: str) -> tuple[bool, int]:
  """(flip, shift) used for each dataset: no flips for digits (SVHN, digits), 4-pixel shifts at 32x32."""
  return {"cifar10": (True, 4), "svhn_cropped": (False, 4), "digits": (False, 1)}.get(dataset, (False, 2))
