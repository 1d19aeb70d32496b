"""MixMatch (Berthelot et al. 2019) as small pure pieces plus one step factory, after google-research/mixmatch.

One step, on a labeled batch x (queried inputs with the oracle's answers as soft targets) and an unlabeled
batch u:
  1. augment x once and u K times (flip / shift, `extraction.augment`);
  2. guess labels for u: average the student's softmax over the K augmentations, sharpen with temperature T
     (no gradient through the guess; batch norm in training mode, its statistics not kept, as in the reference);
  3. MixUp the concatenation [x, u_1..u_K] (targets [y, q..q]) with a shuffled copy of itself,
     lambda ~ Beta(alpha, alpha) per example, lambda' = max(lambda, 1 - lambda) (reference mode 'xxy.yxy');
  4. one forward pass on the whole mixed batch (batch norm over labeled and unlabeled together: the JAX
     equivalent of the reference's interleaving), soft cross-entropy on the labeled part plus
     lambda_u * ramp-up * mean squared error between softmax and targets on the unlabeled part;
  5. optionally an extra loss (MM + Rot: `semisup.rotation.make_rotation_loss`).
Losses and the ramp-up come from optax. Precision: float32 throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from extraction import augment as aug
from extraction.datasets import to_float
from extraction.train import Step, forward, gradient_step, soft_cross_entropy, split_heads, training_apply


def sharpen(probs: jax.Array, temperature: float) -> jax.Array:
  """Sharpens distributions: p_c^(1/T) / sum_c' p_c'^(1/T), computed in log space (stable for small T).

  Args:
    probs: float32 (..., C) distributions (entries >= 0 summing to 1 along the last axis).
    temperature: T > 0; T < 1 sharpens, T = 1 is the identity.
  Returns:
    float32 (..., C) sharpened distributions.
  """
  return jax.nn.softmax(jnp.log(probs) / temperature, axis=-1)


def guess_labels(probs: jax.Array, temperature: float) -> jax.Array:
  """MixMatch label guess: the mean of the predictions over the K augmentations, sharpened.

  Args:
    probs: float32 (K, U, C) softmax predictions of the student for K augmentations of U unlabeled inputs.
    temperature: sharpening temperature T.
  Returns:
    float32 (U, C) guessed target distributions.
  """
  return sharpen(probs.mean(axis=0), temperature)


def mixup_params(rng: jax.Array, n: int, alpha: float) -> tuple[jax.Array, jax.Array]:
  """Draws the MixUp coefficients and partner indices for a batch of n examples.

  Args:
    rng: key.
    n: batch size.
    alpha: Beta(alpha, alpha) parameter.
  Returns:
    (lam float32 (n,) with lam = max(l, 1 - l) in [0.5, 1], perm int32 (n,) a permutation of range(n)).
  """
  r_lam, r_perm = jax.random.split(rng)
  lam = jax.random.beta(r_lam, alpha, alpha, (n,), dtype=jnp.float32)
  return jnp.maximum(lam, 1.0 - lam), jax.random.permutation(r_perm, n)


def mixup(inputs: jax.Array, targets: jax.Array, lam: jax.Array, perm: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mixes each example with the one `perm` points at: lam * a + (1 - lam) * a[perm], inputs and targets alike.

  Args:
    inputs: float32 (N, ...) inputs.
    targets: float32 (N, C) target distributions.
    lam: float32 (N,) weights of the example itself.
    perm: int (N,) index of each example's partner.
  Returns:
    (mixed inputs float32 (N, ...), mixed targets float32 (N, C)).
  """

  def mix(a):
    w = lam.reshape((-1,) + (1,) * (a.ndim - 1))
    return w * a + (1.0 - w) * a[perm]

  return mix(inputs), mix(targets)


def mixmatch_loss(
  logits_x: jax.Array, targets_x: jax.Array, logits_u: jax.Array, targets_u: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The two MixMatch losses (unweighted).

  Args:
    logits_x: float32 (N, C) logits of the mixed labeled part.
    targets_x: float32 (N, C) its mixed targets.
    logits_u: float32 (M, C) logits of the mixed unlabeled part.
    targets_u: float32 (M, C) its mixed targets.
  Returns:
    (loss_x: mean soft cross-entropy, loss_u: mean over all M*C entries of (softmax(logits_u) - targets_u)^2),
    float32 scalars.
  """
  loss_u = optax.squared_error(jax.nn.softmax(logits_u), targets_u).mean()
  return soft_cross_entropy(logits_x, targets_x), loss_u


def rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
  """Linear ramp-up of the unlabeled weight: clip(step / rampup_steps, 0, 1) (1 when rampup_steps <= 0).

  Args:
    step: int or float32 scalar, the number of updates done.
    rampup_steps: steps to reach the full weight.
  Returns:
    float32 scalar in [0, 1].
  """
  if rampup_steps <= 0:
    return jnp.ones((), jnp.float32)
  return optax.linear_schedule(0.0, 1.0, rampup_steps)(step)


def make_mixmatch_step(
  model,
  *,
  lambda_u: float,
  rampup_steps: int,
  temperature: float = 0.5,
  alpha: float = 0.75,
  k: int = 2,
  ema_decay: float = 0.999,
  flip: bool,
  shift: int,
  extra_loss=None,
) -> Step:
  """Builds the MixMatch step `step(state, batch) -> (state, metrics)` (jit it with the state donated).

  Args:
    model: Flax module from `extraction.models.create_model` (the state, from `extraction.train.create_state`,
      carries the optimizer, e.g. `make_optimizer(0.002, 0.02, steps)`: Adam, decoupled weight decay).
    lambda_u: weight of the unlabeled L2 loss at the end of the ramp-up (75 CIFAR-10, 250 SVHN).
    rampup_steps: steps over which that weight grows linearly from 0.
    temperature: sharpening temperature T.
    alpha: MixUp Beta(alpha, alpha) parameter.
    k: augmentations of each unlabeled batch.
    ema_decay: decay of the EMA of the weights.
    flip, shift: augmentation (`extraction.augment.augment`).
    extra_loss: optional `extra_loss(apply, params, batch, key) -> (loss, metrics)` added to the loss (see
      `extraction.train.make_supervised_step`).
  Returns:
    The step `step(state, batch) -> (state, metrics)`. batch = {'images': uint8 (B,H,W,C), 'targets': float (B,C)
    distributions, 'unlabeled': uint8 (U,H,W,C)}; metrics = float32 scalars 'loss', 'loss_x', 'loss_u', 'w_u' (the
    current unlabeled weight) and the extra loss's.
  """

  def predict(params, batch_stats, images):
    return jax.nn.softmax(split_heads(training_apply(model, batch_stats)(params, images))[0])

  def step(state, batch):
    r_x, r_u, r_mix, r_extra = jax.random.split(state.step_key(), 4)
    x = aug.augment(r_x, to_float(batch["images"]), flip, shift)
    u = to_float(batch["unlabeled"])
    u_aug = [aug.augment(r, u, flip, shift) for r in jax.random.split(r_u, k)]
    guess = jax.lax.stop_gradient(
      guess_labels(jnp.stack([predict(state.params, state.batch_stats, ui) for ui in u_aug]), temperature)
    )
    inputs = jnp.concatenate([x] + u_aug)
    targets = jnp.concatenate([batch["targets"].astype(jnp.float32)] + [guess] * k)
    mixed, mixed_targets = mixup(inputs, targets, *mixup_params(r_mix, inputs.shape[0], alpha))
    n = x.shape[0]
    w_u = lambda_u * rampup(state.step, rampup_steps)

    def loss_fn(params):
      logits, batch_stats = forward(model, params, state.batch_stats, mixed)
      loss_x, loss_u = mixmatch_loss(logits[:n], mixed_targets[:n], logits[n:], mixed_targets[n:])
      return loss_x + w_u * loss_u, (batch_stats, {"loss_x": loss_x, "loss_u": loss_u, "w_u": w_u})

    return gradient_step(model, state, loss_fn, ema_decay, extra_loss, batch, r_extra)

  return step
