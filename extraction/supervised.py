"""Fully-supervised (FS) extraction: pick `queries` inputs from the attacker's pool (labels never read), ask the
oracle, and train a student on its answers with soft cross-entropy.

Targets by oracle output mode (`oracle_targets`):
  * probabilities: the returned distribution;
  * top_k: the k returned probabilities, the remaining mass 1 - sum spread evenly over the other classes;
  * labels: the one-hot label;
  * logits: softmax of the returned logits (distillation at temperature 1; matches the victim's posterior, which
    is what top-1 agreement needs, and is scale-safe where raw-logit regression is not).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from extraction import augment, models, train
from extraction.oracle import Oracle, softmax


@dataclasses.dataclass(frozen=True)
class StudentConfig:
  model: str = "small_cnn"
  steps: int = 1000
  batch_size: int = 64
  unlabeled_batch_size: int = 64  # per augmentation, for MixMatch and the rotation loss
  lr: float = 0.002
  weight_decay: float = 0.02
  ema: float = 0.999
  rotation_weight: float = 0.0
  seed: int = 0


def choose_queries(seed: int, pool_size: int, queries: int) -> np.ndarray:
  """Indices of the inputs to query: the first `queries` of a seeded permutation, so that budgets nest."""
  if not 0 < queries <= pool_size:
    raise ValueError(f"queries must be in 1..{pool_size} (pool size), got {queries}")
  return np.random.default_rng([seed, 11]).permutation(pool_size)[:queries]


def oracle_targets(answers: np.ndarray, output: str) -> np.ndarray:
  """Training targets (N, C) float32 distributions from the oracle's answers (see module docstring)."""
  answers = np.asarray(answers, np.float64)
  if output == "logits":
    return softmax(answers).astype(np.float32)
  if output == "top_k":
    missing = np.clip(1.0 - answers.sum(-1, keepdims=True), 0.0, 1.0)
    hidden = answers == 0
    spread = missing / np.maximum(hidden.sum(-1, keepdims=True), 1)
    return np.where(hidden, spread, answers).astype(np.float32)
  return answers.astype(np.float32)


def train_student(images: np.ndarray, targets: np.ndarray, unlabeled: Optional[np.ndarray], num_classes: int,
                  cfg: StudentConfig, dataset_name: str, step_factory=None, checkpoint_dir=None, mesh=None,
                  name: str = "student", **step_kwargs):
  """Trains a student on (images, targets) [+ unlabeled images]; returns (model, EMA variables).

  `step_factory(model, tx, ema_decay=, flip=, shift=, rotation_weight=, **step_kwargs)` builds the step;
  the default is the supervised step (FS, or FS + Rot when cfg.rotation_weight > 0).
  """
  model = models.create_model(cfg.model, num_classes, rotation_head=cfg.rotation_weight > 0)
  tx = train.make_optimizer(cfg.lr, cfg.weight_decay, cfg.steps)
  rng = jax.random.key(cfg.seed)
  state = train.create_state(model, tx, jax.random.fold_in(rng, 0), images.shape[1:])
  flip, shift = augment.default_augmentation(dataset_name)
  step_factory = step_factory or train.make_supervised_step
  step = step_factory(model, tx, ema_decay=cfg.ema, flip=flip, shift=shift, rotation_weight=cfg.rotation_weight,
                      **step_kwargs)
  needs_unlabeled = unlabeled is not None and (cfg.rotation_weight > 0 or step_factory is not train.make_supervised_step)

  def make_batch(i):
    idx = train.batch_indices(cfg.seed, i, len(images), cfg.batch_size)
    batch = {"images": images[idx], "targets": targets[idx]}
    if needs_unlabeled:
      batch["unlabeled"] = unlabeled[train.batch_indices(cfg.seed, i, len(unlabeled), cfg.unlabeled_batch_size, 1)]
    return batch

  state = train.fit(step, state, make_batch, cfg.steps, jax.random.fold_in(rng, 1), checkpoint_dir=checkpoint_dir,
                    name=name, mesh=mesh)
  return model, jax.device_get(state.variables(ema=True))


def extract(oracle: Oracle, pool: np.ndarray, queries: int, num_classes: int, cfg: StudentConfig,
            dataset_name: str, **kwargs):
  """FS extraction end to end: query `queries` pool inputs through `oracle`, train the student on the answers.

  Returns (model, variables, query indices).
  """
  idx = choose_queries(cfg.seed, len(pool), queries)
  targets = oracle_targets(oracle(pool[idx]), oracle.output)
  model, variables = train_student(pool[idx], targets, None, num_classes, cfg, dataset_name, **kwargs)
  return model, variables, idx
