"""Input gradients of a student, batched and jitted (float32): the Jacobian row of one class per input (JBDA) and the
Jacobian rows of chosen classes per input (DeepFool). Inputs are float images in [-1, 1]
(`extraction.datasets.to_float`); evaluation mode, so the examples of a batch are independent and one backward pass of
a summed output gives every example's own gradient. The classes are vmapped over the cotangent, never over the weights
(no grouped convolutions on XLA:CPU), and nothing runs inside a loop primitive."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 256


def _first(out):
  return out[0] if isinstance(out, tuple) else out


@functools.cache
def _class_probability_gradient(model):
  def prob(variables, x, labels):
    p = jax.nn.softmax(_first(model.apply(variables, x, train=False)))
    return jnp.take_along_axis(p, labels[:, None], axis=1).sum()

  return jax.jit(jax.grad(prob, argnums=1))


@functools.cache
def _logits(model):
  return jax.jit(lambda variables, x: _first(model.apply(variables, x, train=False)))


@functools.cache
def _logits_and_class_jacobian(model):
  def run(variables, x, classes):
    f = lambda x: _first(model.apply(variables, x, train=False))
    logits, vjp = jax.vjp(f, x)
    cotangents = jax.nn.one_hot(classes.T, logits.shape[-1], dtype=logits.dtype)  # (K, B, C)
    return logits, jax.vmap(lambda e: vjp(e)[0])(cotangents)  # (K, B, ...)

  return jax.jit(run)


def _bucket(n: int) -> int:
  """The padded size of a last chunk of n < CHUNK inputs: the next power of two (at least 8), so that shrinking
  sets of inputs (DeepFool's unconverged ones) compile a handful of shapes, not one per size."""
  return min(CHUNK, max(8, 1 << (n - 1).bit_length()))


def _chunked(fn, n: int, *arrays) -> list:
  """fn over chunks of CHUNK along the leading axis, a short chunk padded to `_bucket` of its size; outputs
  unpadded (a tuple output's second part is batched along axis 1)."""
  outs = []
  for i in range(0, n, CHUNK):
    parts = [a[i : i + CHUNK] for a in arrays]
    keep = len(parts[0])
    size = CHUNK if n > CHUNK else _bucket(keep)
    if keep < size:
      parts = [np.concatenate([p, np.repeat(p[:1], size - keep, 0)]) for p in parts]
    out = jax.device_get(fn(*parts))
    outs.append((out[0][:keep], out[1][:, :keep]) if isinstance(out, tuple) else out[:keep])
  return outs


def logits(model, variables, x: np.ndarray) -> np.ndarray:
  """The model's logits (N, C) at float inputs x (N, ...)."""
  fn = _logits(model)
  outs = _chunked(lambda x: fn(variables, x), len(x), np.asarray(x, np.float32))
  return np.concatenate(outs)


def class_probability_gradient(model, variables, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """d softmax(f(x_i))[labels_i] / d x_i for every i; x float (N, ...) in [-1, 1]. Returns (N, ...) float32."""
  fn = _class_probability_gradient(model)
  outs = _chunked(lambda x, y: fn(variables, x, y), len(x), np.asarray(x, np.float32), np.asarray(labels, np.int32))
  return np.concatenate(outs) if outs else np.zeros_like(x, np.float32)


def logits_and_class_jacobian(model, variables, x: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(logits (N, C), Jacobian rows (K, N, ...)) of the model at float inputs x (N, ...): row k of input i is
  d logit_{classes[i, k]} / d x_i, for integer classes (N, K)."""
  fn = _logits_and_class_jacobian(model)
  outs = _chunked(lambda x, c: fn(variables, x, c), len(x), np.asarray(x, np.float32), np.asarray(classes, np.int32))
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs], axis=1)
