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

import numpy as np

from extraction import augment, seeds, students, train
from extraction.oracle import Oracle, softmax
from extraction.students import StudentConfig  # noqa: F401  (the config of `extract`)


def choose_queries(seed: int, pool_size: int, queries: int) -> np.ndarray:
  """Indices of the inputs to query: the first `queries` of a permutation drawn from the query stream of `seed`,
  so that budgets nest."""
  if not 0 < queries <= pool_size:
    raise ValueError(f"queries must be in 1..{pool_size} (pool size), got {queries}")
  return seeds.rng(seed, "query").permutation(pool_size)[:queries]


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


def fs_step_factory(dataset_name: str, ema: float, extra_loss=None):
  """`make_step(model)` for FS students with the dataset's default augmentation (see `extraction.students`)."""
  flip, shift = augment.default_augmentation(dataset_name)
  return lambda model: train.make_supervised_step(model, ema_decay=ema, flip=flip, shift=shift, extra_loss=extra_loss)


def extract(
  oracle: Oracle,
  pool: np.ndarray,
  queries: int,
  num_classes: int,
  cfg: students.StudentConfig,
  dataset_name: str,
  *,
  query_seed: int = 0,
  student_seed: int = 0,
  **kwargs,
):
  """FS extraction end to end for one student: query `queries` pool inputs through `oracle`, train on the answers.

  Returns (model, variables, query indices).
  """
  idx = choose_queries(query_seed, len(pool), queries)
  task = students.StudentTask(idx, oracle_targets(oracle(pool[idx]), oracle.output), np.zeros(0, int), student_seed)
  model, variables, _ = students.train_students(
    pool, [task], num_classes, cfg, fs_step_factory(dataset_name, cfg.ema), **kwargs
  )
  return model, variables[0], idx
