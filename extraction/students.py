"""Training students: several at once, stacked and vmapped.

Every student of a group shares the method (the step), the architecture and the step budget, and differs in its
task: which pool inputs it queried (and the oracle's answers, as targets), which it may use unlabeled, and its
own seed (initialisation, data order, augmentation: `extraction.seeds` stream 'student'). The group trains as
one stacked state through `jax.vmap` of the step, one jitted call per step for all of them; each student draws
exactly what it would draw alone. Inputs stay in one pool; tasks hold indices into it (no copies of the pool).

Periodic evaluation (`evaluate`) gives each student a learning curve, kept in `history.json` beside the group's
checkpoints so that a resumed run keeps it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from extraction import models, parallel, seeds, train
from extraction.predict import predict_logits


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  """What every student of a group shares."""

  model: str = "small_cnn"
  steps: int = 1000
  batch_size: int = 64
  unlabeled_batch_size: int = 64  # per augmentation (MixMatch), or mu * batch_size (FixMatch)
  lr: float = 0.002
  weight_decay: float = 0.02
  ema: float = 0.999
  optimizer: str = "adam"
  schedule: str = "constant"
  rotation_head: bool = False
  conv: str = "xla"  # how the convolutions are computed (extraction.conv.CONVS)


@dataclasses.dataclass(frozen=True)
class StudentTask:
  """One student's data: indices into the pool, the targets of the labeled ones, and its seed."""

  labeled: np.ndarray  # int (q,) pool indices of the queried inputs
  targets: np.ndarray  # float32 (q, C) training targets from the oracle's answers
  unlabeled: np.ndarray  # int (u,) pool indices never sent to the oracle (may be empty)
  seed: int


def make_batches(
  pool: np.ndarray, tasks: list[StudentTask], cfg: StudentConfig, unlabeled: bool
) -> Callable[[int], dict]:
  """`make_batch(step)`: the stacked batch of every task (leading axis: the student), a pure function of the
  step. Each student samples its own labeled (and unlabeled) indices with replacement from its own stream."""

  def make_batch(i):
    out: dict[str, list] = {"images": [], "targets": [], "unlabeled": []}
    for t in tasks:
      idx = train.batch_indices(t.seed, i, len(t.labeled), cfg.batch_size, salt=seeds.salt("student"))
      out["images"].append(pool[t.labeled[idx]])
      out["targets"].append(t.targets[idx])
      if unlabeled:
        u = train.batch_indices(t.seed, i, len(t.unlabeled), cfg.unlabeled_batch_size, salt=seeds.salt("student") + 1)
        out["unlabeled"].append(pool[t.unlabeled[u]])
    return {k: np.stack(v) for k, v in out.items() if v}

  return make_batch


def _load_history(path: pathlib.Path, n: int) -> list[dict]:
  """Per student: step -> metrics, from a previous (interrupted) run of the same group."""
  if path.exists():
    saved = json.loads(path.read_text())
    if len(saved) == n:
      return [{int(k): v for k, v in h.items()} for h in saved]
  return [{} for _ in range(n)]


def train_students(
  pool: np.ndarray,
  tasks: list[StudentTask],
  num_classes: int,
  cfg: StudentConfig,
  make_step: Callable,
  *,
  needs_unlabeled: bool = False,
  evaluate: Callable[..., dict] | None = None,
  eval_every: int = 0,
  full_evals: int = 0,
  checkpoint_dir: pathlib.Path | None = None,
  mesh=None,
  name: str = "students",
  steps_per_call: int = 1,
  stack: str = "auto",
  stop: int | None = None,
) -> tuple:
  """Trains one student per task, stacked; returns (model, [EMA variables per task], [history per task]).

  Args:
    pool: uint8 (N, H, W, C) the attacker's inputs (task indices point into it).
    tasks: the students.
    num_classes: classes of the victim.
    cfg: what the students share.
    make_step: `make_step(model) -> step(state, batch) -> (state, metrics)` for one student.
    needs_unlabeled: the step reads batch['unlabeled'] (every task must then have unlabeled inputs).
    evaluate: `evaluate(predict, full) -> metrics` of one student, where predict maps uint8 images to logits;
      called every `eval_every` steps and at the end, on the EMA weights; `full` is True for the last
      `full_evals` evaluations (all of them when 0) and False before (a cheaper evaluation for the curve).
    checkpoint_dir: orbax checkpoints and history.json of the group; a finished group is restored, not retrained.
    stack: 'vmap' or 'unroll' (`extraction.parallel.stack_step`); 'auto' unrolls on a CPU backend for models
      with convolutions and vmaps otherwise.
    stop: train only up to this step of the `cfg.steps`-step run (rounds of chosen queries fine-tune the same
      students between rounds: the next call, with more data, resumes from this step's checkpoint).
  Returns:
    (model, variables, histories): histories[i] is a list of {'step': s, **metrics} sorted by step.
  """
  if needs_unlabeled and any(len(t.unlabeled) == 0 for t in tasks):
    raise ValueError("a student has no unlabeled inputs, but its method needs some")
  model = models.create_model(cfg.model, num_classes, rotation_head=cfg.rotation_head, conv=cfg.conv)
  tx = train.make_optimizer(cfg.lr, cfg.weight_decay, cfg.steps, cfg.schedule, cfg.optimizer)
  keys = jax.numpy.stack([seeds.key(t.seed, "student") for t in tasks])
  state = jax.jit(jax.vmap(lambda k: train.create_state(model, tx, k, pool.shape[1:])))(keys)
  if stack == "auto":
    stack = "unroll" if jax.default_backend() == "cpu" and cfg.model not in models.DENSE_MODELS else "vmap"
  step = parallel.stack_step(make_step(model), stack, mesh, len(tasks))
  history_path = pathlib.Path(checkpoint_dir) / "history.json" if checkpoint_dir else None
  histories = _load_history(history_path, len(tasks)) if history_path else [{} for _ in tasks]

  def callback(done, st):
    if evaluate is None:
      return
    full = not full_evals or not eval_every or done > cfg.steps - full_evals * eval_every
    for h, variables in zip(histories, train.unstack(st.variables(ema=True), len(tasks))):
      h[done] = evaluate(lambda x, v=variables: predict_logits(model, v, x), full)
    if history_path:
      history_path.write_text(json.dumps(histories))

  end = cfg.steps if stop is None else min(stop, cfg.steps)
  state = train.fit(
    step,
    state,
    make_batches(pool, tasks, cfg, needs_unlabeled),
    end,
    checkpoint_dir=checkpoint_dir,
    name=name,
    mesh=mesh,
    batch_axis=1,
    stacked=True,
    steps_per_call=steps_per_call,
    callback=callback,
    callback_every=eval_every,
  )
  if evaluate is not None and end == cfg.steps and any(cfg.steps not in h for h in histories):
    callback(cfg.steps, state)  # restored a finished group whose history was not kept
  variables = train.unstack(state.variables(ema=True), len(tasks))
  return model, variables, [[{"step": s, **h[s]} for s in sorted(h)] for h in histories]
