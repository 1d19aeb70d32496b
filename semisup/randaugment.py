"""Strong augmentation for FixMatch: RandAugment with random magnitudes, then Cutout (Sohn et al. 2020, Sec. 2.3
and their appendix's list of operations), jittable and per image.

Each image gets `num_ops` operations drawn uniformly from OPS, each with a magnitude m ~ U(0, 1) mapped to the
operation's range, then a Cutout square of side up to half the image filled with grey. Operations follow PIL's
definitions on [0, 1] pixels, through dm-pix where it has them (contrast, saturation, rotation, affine maps,
solarize, blur). Not included: Equalize (a per-image histogram equalisation, no jittable equivalent here).
Inputs and outputs are float images (N, H, W, C) in [-1, 1] (`extraction.datasets.to_float`). Precision: float32.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

GREY = 0.5


def _factor(m):
  """Enhancement factor of PIL's ImageEnhance ops: [0.05, 0.95]."""
  return 0.05 + 0.9 * m


def _signed(m, limit):
  """A magnitude in [-limit, limit]: m in [0, 1] maps linearly, so both directions are drawn."""
  return (2.0 * m - 1.0) * limit


def _affine(img, matrix, offset):
  return pix.affine_transform(img, matrix, offset=offset, order=1, mode="constant", cval=GREY)


def identity(img, m):
  return img


def autocontrast(img, m):
  lo, hi = img.min(axis=(0, 1), keepdims=True), img.max(axis=(0, 1), keepdims=True)
  return jnp.where(hi > lo, (img - lo) / jnp.maximum(hi - lo, 1e-6), img)


def brightness(img, m):
  return jnp.clip(img * _factor(m), 0.0, 1.0)


def color(img, m):
  if img.shape[-1] != 3:
    return img
  return jnp.clip(pix.adjust_saturation(img, _factor(m)), 0.0, 1.0)


def contrast(img, m):
  return jnp.clip(pix.adjust_contrast(img, _factor(m)), 0.0, 1.0)


def posterize(img, m):
  bits = jnp.round(4.0 + 4.0 * m)
  q = 2.0 ** (8.0 - bits)
  return jnp.floor(img * 255.0 / q) * q / 255.0


def rotate(img, m):
  angle = jnp.deg2rad(_signed(m, 30.0))
  return pix.rotate(img, angle, order=1, mode="constant", cval=GREY)  # type: ignore[arg-type]  # traced angle


def sharpness(img, m):
  blurred = pix.gaussian_blur(img, sigma=1.0, kernel_size=3)
  return jnp.clip(blurred + _factor(m) * (img - blurred), 0.0, 1.0)


def shear_x(img, m):
  s, h = _signed(m, 0.3), img.shape[0]
  return _affine(
    img, jnp.array([[1.0, 0.0, 0.0], [s, 1.0, 0.0], [0.0, 0.0, 1.0]]), jnp.array([0.0, -s * (h - 1) / 2.0, 0.0])
  )


def shear_y(img, m):
  s, w = _signed(m, 0.3), img.shape[1]
  return _affine(
    img, jnp.array([[1.0, s, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), jnp.array([-s * (w - 1) / 2.0, 0.0, 0.0])
  )


def solarize(img, m):
  return pix.solarize(img, m)


def translate_x(img, m):
  return _affine(img, jnp.eye(3), jnp.array([0.0, _signed(m, 0.3) * img.shape[1], 0.0]))


def translate_y(img, m):
  return _affine(img, jnp.eye(3), jnp.array([_signed(m, 0.3) * img.shape[0], 0.0, 0.0]))


OPS = (
  identity,
  autocontrast,
  brightness,
  color,
  contrast,
  posterize,
  rotate,
  sharpness,
  shear_x,
  shear_y,
  solarize,
  translate_x,
  translate_y,
)


def cutout(img, key, max_fraction: float = 0.5):
  """Fills a square of side U(0, max_fraction) * height, centred at a uniform pixel, with grey."""
  h, w = img.shape[:2]
  k_size, k_y, k_x = jax.random.split(key, 3)
  half = jax.random.uniform(k_size) * max_fraction * h / 2.0
  cy, cx = jax.random.uniform(k_y) * h, jax.random.uniform(k_x) * w
  ys, xs = jnp.arange(h)[:, None] + 0.5, jnp.arange(w)[None, :] + 0.5
  inside = (jnp.abs(ys - cy) < half) & (jnp.abs(xs - cx) < half)
  return jnp.where(inside[..., None], GREY, img)


def _one(img, key, num_ops: int):
  k_ops, k_mag, k_cut = jax.random.split(key, 3)
  ops = jax.random.randint(k_ops, (num_ops,), 0, len(OPS))
  mags = jax.random.uniform(k_mag, (num_ops,))
  for i in range(num_ops):
    img = jax.lax.switch(ops[i], OPS, img, mags[i])
  return cutout(img, k_cut)


def rand_augment(key: jax.Array, images: jax.Array, num_ops: int = 2) -> jax.Array:
  """RandAugment (random ops and magnitudes, per image) then Cutout, on float images in [-1, 1]."""
  x = (images + 1.0) / 2.0
  out = jax.vmap(lambda img, k: _one(img, k, num_ops))(x, jax.random.split(key, images.shape[0]))
  return out * 2.0 - 1.0
