"""Batched, jitted inference of a Flax model on uint8 images (float32)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from extraction.datasets import to_float


@functools.cache
def _forward(model) -> Callable:
  return jax.jit(lambda variables, images: _first(model.apply(variables, to_float(images), train=False)))


def _first(out):
  return out[0] if isinstance(out, tuple) else out


def predict_logits(model, variables: dict, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
  """Logits (N, C) of a model on uint8 images, in fixed-size jitted batches (the last one padded)."""
  n = len(images)
  size = min(batch_size, 1 << max(n - 1, 0).bit_length())
  pad = (-n) % size
  if pad:
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  fwd = _forward(model)
  outs = [fwd(variables, images[i : i + size]) for i in range(0, len(images), size)]
  return np.asarray(jnp.concatenate(outs))[:n]
