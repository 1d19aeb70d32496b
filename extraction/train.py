"""Training state, optimizers, the supervised step factory and the training loop (checkpointed, resumable).

A step is a pure function `step(state, batch) -> (state, metrics)`. Its randomness comes from the state itself:
`state.step_key()` is `fold_in(state.rng, state.step)`, where `state.rng` is the run's own key (from its seed,
see `extraction.seeds`). So a stack of students (`jax.vmap` of the step over stacked states) gives each student
exactly the draws it would get alone, and a resumed run the draws of an uninterrupted one.

`fit` jits the step once with the state donated, runs `steps_per_call` steps per call (a `lax.scan`), feeds host
batches prefetched to the device(s), logs progress (steps/s, ETA), calls a callback (periodic evaluation), saves
orbax checkpoints and resumes from the latest one. Batches are a pure function of (seed, step index).
Precision: float32 (the models' default).
"""

from __future__ import annotations

import collections
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from extraction import augment as aug
from extraction import parallel
from extraction.datasets import to_float

if TYPE_CHECKING:
  import orbax.checkpoint as ocp

Batch = dict[str, np.ndarray]
Step = Callable[[Any, Batch], tuple[Any, dict]]
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "fixmatch_cosine")


class TrainState(train_state.TrainState):
  """flax's TrainState plus batch-norm statistics, an EMA of the weights and the run's own random key."""

  batch_stats: Any = None
  ema_params: Any = None
  rng: Any = None  # jax.Array: raw uint32 key data (checkpoint-friendly); see step_key

  def variables(self, ema: bool = True) -> dict:
    """Variables for `model.apply`: EMA weights (default) or raw weights, with the batch-norm statistics."""
    v = {"params": self.ema_params if ema else self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v

  def step_key(self) -> jax.Array:
    """The key of the current step: fold_in(run key, step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def apply_update(self, grads, batch_stats, ema_decay: float) -> TrainState:
    """One optimizer update, the new batch statistics and the EMA of the weights (TF's ExponentialMovingAverage
    with num_updates=step: the decay warms up, so short runs are not dominated by the initial weights)."""
    new = self.apply_gradients(grads=grads, batch_stats=batch_stats)
    step = jnp.asarray(self.step, jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    return new.replace(ema_params=optax.incremental_update(new.params, self.ema_params, step_size=1.0 - decay))


def make_optimizer(
  lr: float, weight_decay: float, steps: int, schedule: str = "constant", optimizer: str = "adam"
) -> optax.GradientTransformation:
  """The optimizer of a run; weight decay touches kernels only.

  Args:
    lr: peak learning rate.
    weight_decay: adam: decoupled (AdamW, times lr, the MixMatch reference); sgd: L2 added to the gradient
      (the FixMatch reference, with Nesterov momentum 0.9).
    steps: length of the run, for the schedule.
    schedule: 'constant'; 'cosine' (to 0 at `steps`); 'fixmatch_cosine' (lr * cos(7 pi t / (16 steps))).
    optimizer: 'adam' or 'sgd'.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
  steps = max(steps, 1)
  lr_fn = {
    "constant": optax.constant_schedule(lr),
    "cosine": optax.cosine_decay_schedule(lr, steps),
    "fixmatch_cosine": lambda t: lr * jnp.cos(7 * jnp.pi * t / (16 * steps)),
  }[schedule]
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel", params)
  if optimizer == "adam":
    return optax.adamw(lr_fn, weight_decay=weight_decay, mask=kernels)
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=kernels), optax.sgd(lr_fn, momentum=0.9, nesterov=True)
  )


def create_state(
  model, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple, data_key: jax.Array | None = None
) -> TrainState:
  """A fresh state: weights from `key`'s first half, the step stream from its second (vmappable over keys).

  With `data_key`, the step stream (augmentation draws and any other per-step randomness) is the one a state
  created from `data_key` would have: the weights of one seed with the draws of another.
  """
  init_key, step_key = jax.random.split(key)
  if data_key is not None:
    step_key = jax.random.split(data_key)[1]
  variables = model.init(init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables["params"]
  state = TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
    ema_params=jax.tree.map(jnp.copy, params),
    rng=jax.random.key_data(step_key),
  )
  return state.replace(step=jnp.zeros((), jnp.int32))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_c targets_c log softmax(logits)_c; targets are distributions (N, C)."""
  return optax.softmax_cross_entropy(logits, targets).mean()


def split_heads(out):
  """(class logits, rotation logits or None) from a model's output."""
  return out if isinstance(out, tuple) else (out, None)


def training_apply(model, batch_stats) -> Callable:
  """`apply(params, images)`: the model in training mode with these batch statistics, the updated statistics
  discarded (for label guesses and extra losses, whose forward passes must not move the running averages)."""
  return lambda params, images: model.apply(
    {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
  )[0]


def forward(model, params, batch_stats, images) -> tuple[jax.Array, Any]:
  """(class logits, updated batch statistics) of the model in training mode."""
  out, new_vars = model.apply(
    {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
  )
  return split_heads(out)[0], new_vars.get("batch_stats", {})


def gradient_step(
  model, state: TrainState, loss_fn, ema_decay: float, extra_loss=None, batch=None, extra_key=None
) -> tuple[TrainState, dict]:
  """One update of every step factory: the gradient of `loss_fn(params) -> (loss, (batch_stats, metrics))`
  plus, when given, `extra_loss(apply, params, batch, extra_key) -> (loss, metrics)` (e.g. the rotation loss);
  returns (new state, metrics with the total 'loss')."""

  def total(params):
    loss, (batch_stats, metrics) = loss_fn(params)
    if extra_loss is not None:
      extra, extra_metrics = extra_loss(training_apply(model, state.batch_stats), params, batch, extra_key)
      loss, metrics = loss + extra, {**metrics, **extra_metrics}
    return loss, (batch_stats, {**metrics, "loss": loss})

  grads, (batch_stats, metrics) = jax.grad(total, has_aux=True)(state.params)
  return state.apply_update(grads, batch_stats, ema_decay), metrics


def make_supervised_step(
  model, *, ema_decay: float = 0.999, flip: bool = False, shift: int = 0, extra_loss=None
) -> Step:
  """Step on a batch {'images': uint8 (B,H,W,C), 'targets': (B,C) distributions[, 'unlabeled': uint8]}.

  Loss: soft cross-entropy to the targets, plus `extra_loss` when given (e.g. the rotation loss of
  `semisup.rotation.make_rotation_loss`, FS + Rot): a pure `extra_loss(apply, params, batch, key) -> (loss,
  metrics)`, where `apply(params, images)` runs the model in training mode.
  """

  def step(state, batch):
    k_aug, k_extra = jax.random.split(state.step_key())
    x = aug.augment(k_aug, to_float(batch["images"]), flip, shift)

    def loss_fn(params):
      logits, batch_stats = forward(model, params, state.batch_stats, x)
      loss_x = soft_cross_entropy(logits, batch["targets"])
      return loss_x, (batch_stats, {"loss_x": loss_x})

    return gradient_step(model, state, loss_fn, ema_decay, extra_loss, batch, k_extra)

  return step


def batch_indices(seed: int, step: int, n: int, batch_size: int, salt: int = 0) -> np.ndarray:
  """Indices of the examples in batch `step`: uniform with replacement, a pure function of its arguments."""
  return np.random.default_rng([seed, salt, step]).integers(0, n, batch_size)


def stack(trees: list) -> Any:
  """Stacks pytrees of the same structure along a new leading axis (e.g. several students' states)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, n: int) -> list:
  """The inverse of `stack`: n pytrees from one with a leading axis of n (host numpy arrays)."""
  tree = jax.device_get(tree)
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def _prefetch(make_batch: Callable[[int], Batch], chunks: list, put: Callable, size: int = 2) -> Iterator:
  """Yields device batches for each chunk of steps (start, stop) while the next `size` are being copied; a chunk
  of several steps is one batch with a leading axis of its length. `put(host batch, steps)` places it."""

  def host(start, stop):
    if stop - start == 1:
      return make_batch(start)
    batches = [make_batch(i) for i in range(start, stop)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}

  queue: collections.deque = collections.deque()
  for start, stop in chunks:
    queue.append(put(host(start, stop), stop - start))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _chunks(start: int, stop: int, steps_per_call: int, boundaries: tuple) -> list:
  """Runs of at most `steps_per_call` steps from start to stop that end at every multiple of each boundary."""
  out, i = [], start
  while i < stop:
    j = min(i + steps_per_call, stop)
    for every in boundaries:
      if every:
        j = min(j, (i // every + 1) * every)
    out.append((i, j))
    i = j
  return out


def checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  import orbax.checkpoint as ocp  # here, not at import: orbax adds 0.4 s to every launch

  return ocp.CheckpointManager(
    pathlib.Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
  )


def restore_latest(mngr: ocp.CheckpointManager, template: TrainState) -> tuple[TrainState, int]:
  """(latest checkpointed state, its step), or (template, 0) when there is none."""
  latest = mngr.latest_step()
  if latest is None:
    return template, 0
  import orbax.checkpoint as ocp  # (see checkpoint_manager)

  return mngr.restore(latest, args=ocp.args.StandardRestore(template)), int(latest)


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  import orbax.checkpoint as ocp  # (see checkpoint_manager)

  mngr.save(step, args=ocp.args.StandardSave(state))


def _multi_step(step_fn: Step) -> Step:
  """Several steps in one call: scans `step_fn` over batches with a leading axis of steps; last metrics."""

  def run(state, batches):
    state, metrics = jax.lax.scan(step_fn, state, batches)
    return state, jax.tree.map(lambda m: m[-1], metrics)

  return run


def fit(
  step_fn: Step,
  state: TrainState,
  make_batch: Callable[[int], Batch],
  num_steps: int,
  *,
  checkpoint_dir: pathlib.Path | None = None,
  checkpoint_every: int = 1000,
  log_every: int = 100,
  name: str = "train",
  mesh: jax.sharding.Mesh | None = None,
  batch_axis: int = 0,
  steps_per_call: int = 1,
  callback: Callable[[int, TrainState], None] | None = None,
  callback_every: int = 0,
  stacked: bool = False,
) -> TrainState:
  """Runs `step_fn` until `num_steps` total steps, resuming from the latest checkpoint in `checkpoint_dir`.

  Args:
    step_fn: pure step `(state, batch) -> (state, metrics)`; metrics may be stacked (a vmapped step).
    state: the initial state (used as the restore template when a checkpoint exists).
    make_batch: step index -> host batch (dict of numpy arrays); must be a pure function of the index.
    num_steps: total number of steps of the run (not additional steps).
    checkpoint_dir: orbax checkpoints (2 kept); a run whose final checkpoint exists returns it without training.
    mesh: data-parallel mesh (`extraction.parallel.make_mesh`); None runs on the default device.
    batch_axis: the axis of a batch array that is the batch (1 for stacked students), split over the mesh.
    stacked: the state stacks several students (axis 0); they may be spread over the devices whole.
    steps_per_call: steps per jitted call (`lax.scan`); logging, callbacks and checkpoints still happen at their
      exact steps.
    callback: `callback(step, state)` after every `callback_every` steps and after the last one (evaluation).
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
  chunks = _chunks(
    start,
    num_steps,
    max(steps_per_call, 1),
    (log_every, checkpoint_every if mngr else 0, callback_every if callback else 0),
  )
  multi = steps_per_call > 1
  state, put_one, jitted_one = parallel.place(step_fn, state, mesh, batch_axis, stacked)
  _, put_many, jitted_many = (
    parallel.place(_multi_step(step_fn), state, mesh, batch_axis + 1, stacked) if multi else (None, put_one, jitted_one)
  )  # unused: every chunk is one step
  put = lambda batch, steps: put_many(batch) if steps > 1 else put_one(batch)
  t0, last_t, last_i = time.time(), time.time(), start
  one_in_flight = parallel.serialise_steps(mesh)
  for (begin, done), batch in zip(chunks, _prefetch(make_batch, chunks, put)):
    state, metrics = (jitted_many if done - begin > 1 else jitted_one)(state, batch)
    if one_in_flight:
      state = jax.block_until_ready(state)
    if done % log_every == 0 or done == num_steps:
      metrics = jax.device_get(metrics)
      if not all(np.all(np.isfinite(v)) for v in metrics.values()):
        raise FloatingPointError(f"{name}: loss is {metrics['loss']} at step {done}")
      now = time.time()
      rate = (done - last_i) / max(now - last_t, 1e-9)
      logging.info(
        "%s: step %d/%d  %s  %.2f steps/s  ETA %.0fs",
        name,
        done,
        num_steps,
        "  ".join(f"{k}={float(np.mean(v)):.4f}" for k, v in sorted(metrics.items())),
        rate,
        (num_steps - done) / max(rate, 1e-9),
      )
      last_t, last_i = now, done
    if callback is not None and (done == num_steps or (callback_every and done % callback_every == 0)):
      callback(done, state)
    if mngr is not None and (done % checkpoint_every == 0 or done == num_steps):
      save_checkpoint(mngr, done, state)
  if mngr is not None:
    mngr.wait_until_finished()
    mngr.close()
  logging.info("%s: %d steps in %.1fs", name, num_steps - start, time.time() - t0)
  return state
