"""Training state, optimizer, the supervised step factory and the training loop (checkpointed, resumable).

A step is a pure function `step(state, batch, rng) -> (state, metrics)`; `fit` jits it once with the state
donated, feeds it host batches prefetched to the device(s), logs progress (steps/s, ETA), saves orbax
checkpoints and resumes from the latest one. Batches are a pure function of (seed, step index), so a resumed
run sees exactly the batches an uninterrupted one would. Precision: float32 (models' default).
"""
from __future__ import annotations

import collections
import pathlib
import time
from typing import Any, Callable, Iterator, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from extraction import augment as aug
from extraction import parallel
from extraction.datasets import to_float
from semisup import rotation

Batch = dict[str, np.ndarray]
Step = Callable[[Any, Batch, jax.Array], tuple[Any, dict]]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any

  def variables(self, ema: bool = True) -> dict:
    """Variables for `model.apply`: EMA weights (default) or raw weights, with the batch-norm statistics."""
    v = {"params": self.ema_params if ema else self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v


def make_optimizer(lr: float, weight_decay: float, steps: int, schedule: str = "constant") -> optax.GradientTransformation:
  """Adam with decoupled weight decay on kernels only (MixMatch reference); `schedule` constant or cosine."""
  if schedule not in ("constant", "cosine"):
    raise ValueError(f"unknown lr schedule {schedule!r}; choose constant or cosine")
  lr_fn = optax.cosine_decay_schedule(lr, max(steps, 1)) if schedule == "cosine" else lr
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel", params)
  return optax.adamw(lr_fn, weight_decay=weight_decay, mask=kernels)


def create_state(model, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple) -> TrainState:
  variables = model.init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_c targets_c log softmax(logits)_c; targets are distributions (N, C)."""
  return -(targets * jax.nn.log_softmax(logits)).sum(-1).mean()


def apply_update(state: TrainState, tx, grads, batch_stats, ema_decay: float) -> TrainState:
  """One optimizer update plus the EMA of the weights; shared by every step factory."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # TF's ExponentialMovingAverage(num_updates=step): short runs are not dominated by the initial weights.
  step = state.step.astype(jnp.float32)
  decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
  ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - decay)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                       ema_params=ema)


def make_supervised_step(model, tx, *, ema_decay: float = 0.999, flip: bool = False, shift: int = 0,
                         rotation_weight: float = 0.0) -> Step:
  """Step on a batch {'images': uint8 (B,H,W,C), 'targets': (B,C) distributions[, 'unlabeled': uint8]}.

  Loss: soft cross-entropy to the targets, plus `rotation_weight` times the rotation loss on
  batch['unlabeled'] (FS + Rot; the model needs `rotation_head=True`).
  """
  def loss_fn(params, state, batch, rng):
    r_aug, r_rot, r_uaug = jax.random.split(rng, 3)
    x = aug.augment(r_aug, to_float(batch["images"]), flip, shift)
    n = x.shape[0]
    if rotation_weight:
      u = aug.augment(r_uaug, to_float(batch["unlabeled"]), flip, shift)
      u, rot_labels = rotation.rotation_batch(r_rot, u)
      x = jnp.concatenate([x, u])
    variables = {"params": params, "batch_stats": state.batch_stats}
    out, new_vars = model.apply(variables, x, train=True, mutable=["batch_stats"])
    logits, rot_logits = out if isinstance(out, tuple) else (out, None)
    loss_x = soft_cross_entropy(logits[:n], batch["targets"])
    metrics = {"loss_x": loss_x}
    loss = loss_x
    if rotation_weight:
      metrics["loss_rot"] = rotation.rotation_loss(rot_logits[n:], rot_labels)
      loss = loss + rotation_weight * metrics["loss_rot"]
    metrics["loss"] = loss
    return loss, (new_vars.get("batch_stats", {}), metrics)

  def step(state, batch, rng):
    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(state.params, state, batch, rng)
    return apply_update(state, tx, grads, batch_stats, ema_decay), metrics

  return step


def batch_indices(seed: int, step: int, n: int, batch_size: int, salt: int = 0) -> np.ndarray:
  """Indices of the examples in batch `step`: uniform with replacement, a pure function of its arguments."""
  return np.random.default_rng([seed, salt, step]).integers(0, n, batch_size)


def _prefetch(make_batch: Callable[[int], Batch], start: int, stop: int, put: Callable, size: int = 2) -> Iterator:
  """Yields device batches for steps start..stop-1 while the next `size` are already being copied."""
  queue = collections.deque()
  for i in range(start, stop):
    queue.append(put(make_batch(i)))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(),
                               options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def restore_latest(mngr: ocp.CheckpointManager, template: TrainState) -> tuple[TrainState, int]:
  """(latest checkpointed state, its step), or (template, 0) when there is none."""
  latest = mngr.latest_step()
  if latest is None:
    return template, 0
  return mngr.restore(latest, args=ocp.args.StandardRestore(template)), int(latest)


def fit(step_fn: Step, state: TrainState, make_batch: Callable[[int], Batch], num_steps: int, rng: jax.Array, *,
        checkpoint_dir: Optional[pathlib.Path] = None, checkpoint_every: int = 1000, log_every: int = 100,
        name: str = "train", mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Runs `step_fn` until `num_steps` total steps, resuming from the latest checkpoint in `checkpoint_dir`.

  Args:
    step_fn: pure step `(state, batch, rng) -> (state, metrics)`.
    state: the initial state (used as the restore template when a checkpoint exists).
    make_batch: step index -> host batch (dict of numpy arrays); must be a pure function of the index.
    num_steps: total number of steps of the run (not additional steps).
    rng: base key; step i uses `fold_in(rng, i)`.
    checkpoint_dir: orbax checkpoints (2 kept); a run whose final checkpoint exists returns it without training.
    mesh: data-parallel mesh (`extraction.parallel.make_mesh`); None runs on the default device.
  Returns:
    The state after `num_steps` steps.
  """
  mngr = None
  start = 0
  if checkpoint_dir is not None:
    mngr = checkpoint_manager(checkpoint_dir)
    state, start = restore_latest(mngr, state)
    if start:
      logging.info("%s: resumed from step %d in %s", name, start, checkpoint_dir)
  if start >= num_steps:
    if mngr is not None:
      mngr.close()
    return state
  state, put, jitted = parallel.place(step_fn, state, mesh)
  t0, last_t, last_i = time.time(), time.time(), start
  metrics = {}
  for i, batch in zip(range(start, num_steps), _prefetch(make_batch, start, num_steps, put)):
    state, metrics = jitted(state, batch, jax.random.fold_in(rng, i))
    done = i + 1
    if done % log_every == 0 or done == num_steps:
      metrics = jax.device_get(metrics)
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(f"{name}: loss is {metrics['loss']} at step {done}")
      now = time.time()
      rate = (done - last_i) / max(now - last_t, 1e-9)
      logging.info("%s: step %d/%d  %s  %.2f steps/s  ETA %.0fs", name, done, num_steps,
                   "  ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items())), rate,
                   (num_steps - done) / max(rate, 1e-9))
      last_t, last_i = now, done
    if mngr is not None and (done % checkpoint_every == 0 or done == num_steps):
      mngr.save(done, args=ocp.args.StandardSave(state))
  if mngr is not None:
    mngr.wait_until_finished()
    mngr.close()
  logging.info("%s: %d steps in %.1fs", name, num_steps - start, time.time() - t0)
  return state
