"""Input gradients of a student, batched and jitted (float32): the Jacobian row of one class per input (JBDA) and
the full Jacobian of the logits (DeepFool). Inputs are float images in [-1, 1] (`extraction.datasets.to_float`);
evaluation mode, so the examples of a batch are independent and one backward pass of a summed output gives every
example's own gradient. The classes are vmapped over the cotangent, never over the weights (no grouped
convolutions on XLA:CPU), and nothing runs inside a loop primitive."""

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
def _logits_and_jacobian(model):
  def run(variables, x):
    f = lambda x: _first(model.apply(variables, x, train=False))
    logits, vjp = jax.vjp(f, x)
    c = logits.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=logits.dtype)[:, None, :], (c,) + logits.shape)
    return logits, jax.vmap(lambda e: vjp(e)[0])(eye)  # (C, B, ...)

  return jax.jit(run)


def _chunked(fn, n: int, *arrays) -> list:
  """fn over chunks of CHUNK along the leading axis, the last one padded (one compilation); outputs unpadded."""
  outs = []
  for i in range(0, n, CHUNK):
    parts = [a[i : i + CHUNK] for a in arrays]
    keep = len(parts[0])
    if n > CHUNK and keep < CHUNK:
      parts = [np.concatenate([p, np.repeat(p[:1], CHUNK - keep, 0)]) for p in parts]
    out = jax.device_get(fn(*parts))
    outs.append((out[0][:keep], out[1][:, :keep]) if isinstance(out, tuple) else out[:keep])
  return outs


def class_probability_gradient(model, variables, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """d softmax(f(x_i))[labels_i] / d x_i for every i; x float (N, ...) in [-1, 1]. Returns (N, ...) float32."""
  fn = _class_probability_gradient(model)
  outs = _chunked(lambda x, y: fn(variables, x, y), len(x), np.asarray(x, np.float32), np.asarray(labels, np.int32))
  return np.concatenate(outs) if outs else np.zeros_like(x, np.float32)


def logits_and_jacobian(model, variables, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(logits (N, C), Jacobian (C, N, ...)) of the model at float inputs x (N, ...)."""
  fn = _logits_and_jacobian(model)
  outs = _chunked(lambda x: fn(variables, x), len(x), np.asarray(x, np.float32))
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs], axis=1)
