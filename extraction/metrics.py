"""Accuracy and fidelity. Fidelity is top-1 agreement between student and victim (on any inputs: the evaluation
sets are in `extraction.evaluation`)."""

from __future__ import annotations

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
