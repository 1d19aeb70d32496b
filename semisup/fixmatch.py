"""FixMatch (Sohn et al. 2020) as small pure pieces plus one step factory.

One step, on a labeled batch x (queried inputs, the oracle's answers as targets) and an unlabeled batch u of
mu times its size (inputs never sent to the oracle):
  1. weakly augment x and u (flip / shift), strongly augment the same u (RandAugment + Cutout,
     `semisup.randaugment`): u_weak[i] and u_strong[i] are views of the same input u[i];
  2. one forward pass on [x_weak, u_weak, u_strong] (batch norm over all of them, as the reference interleaves);
  3. soft cross-entropy of x_weak to the oracle's targets (any output mode: probabilities, top-k spread,
     one-hot labels, softmax of logits);
  4. pseudo-labels: the arg-max of the (stop-gradient) prediction on u_weak, kept where its probability is at
     least the threshold tau; cross-entropy of u_strong to them, averaged over the whole unlabeled batch (masked
     entries count as 0), weighted by lambda_u;
  5. optionally an extra loss (FixMatch + Rot, `semisup.rotation.make_rotation_loss`).
The reference trains with SGD (Nesterov momentum 0.9, lr 0.03, weight decay 5e-4) and the cosine decay
lr * cos(7 pi t / 16 T): `extraction.train.make_optimizer(..., schedule='fixmatch_cosine', optimizer='sgd')`.
Precision: float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from extraction import augment as aug
from extraction.datasets import to_float
from extraction.train import Step, forward, gradient_step, soft_cross_entropy
from semisup.randaugment import rand_augment


def pseudo_labels(probs: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """(arg-max class (U,) int32, mask (U,) float32: 1 where the max probability is >= threshold)."""
  return jnp.argmax(probs, -1).astype(jnp.int32), (jnp.max(probs, -1) >= threshold).astype(jnp.float32)


def unlabeled_loss(logits_strong: jax.Array, probs_weak: jax.Array, threshold: float) -> tuple[jax.Array, jax.Array]:
  """FixMatch's unlabeled loss and the fraction of confident pseudo-labels.

  Args:
    logits_strong: float32 (U, C) logits on the strongly augmented views.
    probs_weak: float32 (U, C) predictions on the weakly augmented views of the same inputs (no gradient).
    threshold: confidence threshold tau.
  Returns:
    (mean over all U of mask * cross-entropy(logits_strong, pseudo-label), mean mask), float32 scalars.
  """
  labels, mask = pseudo_labels(jax.lax.stop_gradient(probs_weak), threshold)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_strong, labels)
  return (ce * mask).mean(), mask.mean()


def views(key: jax.Array, u: jax.Array, flip: bool, shift: int, num_ops: int) -> tuple[jax.Array, jax.Array]:
  """(weak, strong) views of the unlabeled float images u: row i of both is a view of u[i]; the strong view is a
  fresh weak augmentation followed by RandAugment and Cutout."""
  k_weak, k_base, k_strong = jax.random.split(key, 3)
  return (aug.augment(k_weak, u, flip, shift), rand_augment(k_strong, aug.augment(k_base, u, flip, shift), num_ops))


def make_fixmatch_step(
  model,
  *,
  threshold: float = 0.95,
  lambda_u: float = 1.0,
  ema_decay: float = 0.999,
  flip: bool,
  shift: int,
  num_ops: int = 2,
  extra_loss=None,
) -> Step:
  """Builds the FixMatch step `step(state, batch) -> (state, metrics)` (jit it with the state donated).

  Args:
    model: Flax module from `extraction.models.create_model`.
    threshold: confidence threshold tau of the pseudo-labels (0.95 in the paper).
    lambda_u: weight of the unlabeled loss (1 in the paper).
    ema_decay: decay of the EMA of the weights.
    flip, shift: the weak augmentation (`extraction.augment.augment`).
    num_ops: RandAugment operations per strongly augmented image.
    extra_loss: optional `extra_loss(apply, params, batch, key) -> (loss, metrics)`.
  Returns:
    The step. batch = {'images': uint8 (B,H,W,C), 'targets': float (B,C) distributions, 'unlabeled': uint8
    (mu*B,H,W,C)}; metrics: 'loss', 'loss_x', 'loss_u', 'mask' (fraction of confident pseudo-labels).
  """

  def step(state, batch):
    k_x, k_u, k_extra = jax.random.split(state.step_key(), 3)
    x = aug.augment(k_x, to_float(batch["images"]), flip, shift)
    u_weak, u_strong = views(k_u, to_float(batch["unlabeled"]), flip, shift, num_ops)
    n, m = x.shape[0], u_weak.shape[0]
    inputs = jnp.concatenate([x, u_weak, u_strong])

    def loss_fn(params):
      logits, batch_stats = forward(model, params, state.batch_stats, inputs)
      loss_x = soft_cross_entropy(logits[:n], batch["targets"].astype(jnp.float32))
      loss_u, mask = unlabeled_loss(logits[n + m :], jax.nn.softmax(logits[n : n + m]), threshold)
      return loss_x + lambda_u * loss_u, (batch_stats, {"loss_x": loss_x, "loss_u": loss_u, "mask": mask})

    return gradient_step(model, state, loss_fn, ema_decay, extra_loss, batch, k_extra)

  return step
