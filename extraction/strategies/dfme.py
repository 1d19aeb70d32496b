"""`dfme`: Truong, Maini, Walls, Papernot, *Data-Free Model Extraction*, CVPR 2021 (after MAZE, Kariyappa, Prakash,
Qureshi, CVPR 2021).

No natural input at all: a generator G(z) synthesises every query. It is trained to maximise the disagreement
between the victim and the current student, the L1 distance of their logits (the victim's recovered from its
answers as log-probabilities minus their mean, as in the paper). The victim is a black box, so the gradient of the
disagreement at each generated image x is estimated by forward differences along m random directions:

    grad L(x) ~= (d / m) sum_j (L(x + a_j) - L(x)) a_j / |a_j|^2,

where a_j is the exact perturbation sent (random signs times `epsilon` pixel levels, rounded and clipped: the API
takes uint8 images, so the paper's epsilon = 1e-3 would vanish in rounding). Each generator step asks B (m + 1)
inputs (counted like any query); the gradient flows into G through the straight-through rounding of x. Every
answered input, the probes too, joins the students' labeled data. The paper alternates one generator step with
five student steps on the answers of fresh generated batches; here the student is the one trained between rounds
(`--rounds`): within a round the generator chases a fixed student. Round 0 asks samples of the untrained generator.

The paper's budgets are 2e7 queries (CIFAR-10): at a few thousand queries the generator makes a handful of steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from extraction.strategies.base import Round


class Generator(nn.Module):
  """z (B, nz) -> images (B, H, W, C) in [-1, 1]: dense to a quarter-size map, two nearest-neighbour upsamplings
  with 3x3 convolutions (leaky ReLU), tanh."""

  shape: tuple
  width: int = 64

  @nn.compact
  def __call__(self, z):
    h, w, c = self.shape
    h0, w0 = max(h // 4, 1), max(w // 4, 1)
    x = nn.leaky_relu(nn.Dense(h0 * w0 * 2 * self.width)(z).reshape(-1, h0, w0, 2 * self.width), 0.2)
    x = jax.image.resize(x, (x.shape[0], 2 * h0, 2 * w0, x.shape[-1]), "nearest")
    x = nn.leaky_relu(nn.Conv(self.width, (3, 3))(x), 0.2)
    x = jax.image.resize(x, (x.shape[0], h, w, x.shape[-1]), "nearest")
    return jnp.tanh(nn.Conv(c, (3, 3))(x))


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def centred_log(probs: np.ndarray) -> np.ndarray:
  """DFME's logits from probabilities: log p minus its mean over classes."""
  logp = np.log(np.clip(probs, 1e-6, 1.0))
  return logp - logp.mean(-1, keepdims=True)


def zeroth_order_gradient(losses: np.ndarray, perturbations: np.ndarray) -> np.ndarray:
  """Forward-difference gradient of the loss at each input from m perturbations.

  Args:
    losses: (m + 1, B): the loss at the inputs (row 0) and at each perturbed copy (rows 1..m).
    perturbations: (m, B, ...) the exact perturbations a_j.
  Returns:
    (B, ...) the estimate (d / m) sum_j (L(x + a_j) - L(x)) a_j / |a_j|^2.
  """
  m = len(perturbations)
  flat = perturbations.reshape(m, perturbations.shape[1], -1)
  d = flat.shape[-1]
  norm2 = np.maximum((flat**2).sum(-1), 1e-12)  # (m, B)
  coef = (losses[1:] - losses[0][None]) / norm2
  return (d / m * (coef[..., None] * flat).sum(0)).reshape(perturbations.shape[1:])


@functools.cache
def _generator_fns(shape: tuple, lr: float):
  """(generator, optimizer, jitted apply, jitted update(params, opt_state, z, cotangent of the images))."""
  gen, tx = Generator(tuple(shape)), optax.adam(lr)
  apply = jax.jit(gen.apply)

  @jax.jit
  def update(params, opt_state, z, cotangent):
    _, vjp = jax.vjp(lambda p: gen.apply(p, z), params)
    grads = vjp(cotangent)[0]
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return gen, tx, apply, update


@dataclasses.dataclass
class DFMEState:
  params: Any
  opt_state: Any
  steps: int = 0


@dataclasses.dataclass(frozen=True)
class DFME:
  batch: int = 64
  directions: int = 1
  epsilon: float = 2.0
  lr: float = 5e-4
  nz: int = 128
  source: str = "none"
  labels_only: bool = False
  adaptive: bool = True

  def init(self, rnd: Round) -> DFMEState:
    gen, tx, _, _ = _generator_fns(rnd.asked.inputs.shape[1:], self.lr)
    key = jax.random.key(int(rnd.rng.integers(2**31)))
    params = gen.init(key, jnp.zeros((1, self.nz)))
    return DFMEState(params, tx.init(params))

  def _z(self, rnd: Round, b: int) -> np.ndarray:
    return rnd.rng.standard_normal((b, self.nz)).astype(np.float32)

  def select(self, state: DFMEState, rnd: Round, n: int) -> DFMEState:
    from extraction.supervised import oracle_targets

    shape = rnd.asked.inputs.shape[1:]
    _, _, apply, update = _generator_fns(shape, self.lr)
    m, done = self.directions, 0
    b = min(self.batch, n // (m + 1))
    while rnd.student is not None and b > 0 and n - done >= b * (m + 1):
      z = self._z(rnd, b)
      x = to_uint8(apply(state.params, z))
      signs = rnd.rng.choice(np.array([-1.0, 1.0]), (m,) + x.shape)
      probes = np.clip(np.round(x[None].astype(np.float64) + self.epsilon * signs), 0, 255).astype(np.uint8)
      asked = np.concatenate([x[None], probes]).reshape((-1,) + shape)
      victim = centred_log(oracle_targets(rnd.ask(inputs=asked), rnd.output))
      student = rnd.student.logits(asked)
      student = student - student.mean(-1, keepdims=True)
      losses = np.abs(victim - student).mean(-1).reshape(m + 1, b)
      perturbations = (probes.astype(np.float64) - x[None]) / 127.5  # in the generator's [-1, 1] units
      grad = zeroth_order_gradient(losses, perturbations)
      state.params, state.opt_state = update(state.params, state.opt_state, z, jnp.asarray(-grad, jnp.float32))
      state.steps += 1
      done += len(asked)
    if n > done:  # the rest of the round (all of round 0): samples of the generator as it is
      rnd.ask(inputs=to_uint8(apply(state.params, self._z(rnd, n - done))))
    return state


def make(dfme_batch: int = 64, dfme_directions: int = 1, dfme_epsilon: float = 2.0, dfme_lr: float = 5e-4, **_) -> DFME:
  return DFME(batch=dfme_batch, directions=dfme_directions, epsilon=dfme_epsilon, lr=dfme_lr)
