"""Accuracy and fidelity. Fidelity is top-1 agreement between student and victim: on the test split, and off
the data distribution (uniform-noise images), since a faithful copy agrees on every input."""
from __future__ import annotations

from typing import Callable

import numpy as np


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of inputs whose arg-max is the label."""
  return float(np.mean(np.argmax(logits, -1) == labels))


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
  """Fraction of inputs whose label is among the k highest logits."""
  topk = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return float(np.mean((topk == labels[:, None]).any(-1)))


def fidelity(student_logits: np.ndarray, victim_logits: np.ndarray) -> float:
  """Top-1 agreement: fraction of inputs where student and victim predict the same class."""
  return top1_accuracy(student_logits, np.argmax(victim_logits, -1))


def topk_fidelity(student_logits: np.ndarray, victim_logits: np.ndarray, k: int = 5) -> float:
  """Fraction of inputs where the victim's top-1 class is among the student's top k."""
  return topk_accuracy(student_logits, np.argmax(victim_logits, -1), k)


def noise_images(seed: int, n: int, shape: tuple) -> np.ndarray:
  """Uniform uint8 noise images, a fixed off-distribution probe set."""
  return np.random.default_rng([seed, 7]).integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)


def evaluate(student: Callable[[np.ndarray], np.ndarray], victim_test_logits: np.ndarray, test_images: np.ndarray,
             test_labels: np.ndarray, victim_noise_logits: np.ndarray, noise: np.ndarray) -> dict:
  """All metrics of one extracted model. `student` maps uint8 images to logits; victim logits are precomputed
  by the evaluator (never through the attacker's oracle)."""
  s_test = student(test_images)
  out = {"accuracy": top1_accuracy(s_test, test_labels), "fidelity": fidelity(s_test, victim_test_logits),
         "noise_fidelity": fidelity(student(noise), victim_noise_logits)}
  if s_test.shape[-1] > 5:
    out["top5_accuracy"] = topk_accuracy(s_test, test_labels)
    out["top5_fidelity"] = topk_fidelity(s_test, victim_test_logits)
  return out
