"""`jbda`: Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, *Practical Black-Box Attacks against Machine
Learning*, AsiaCCS 2017: Jacobian-based dataset augmentation.

Round 0 asks a small seed set from the attacker's pool. Every later round grows the set synthetically: each new
input is an input already asked, moved by lambda along the sign of the student's Jacobian row of the class the
oracle gave it,

    x' = x + lambda_r * sign(d F_{O(x)}(x) / d x),   lambda_r = lambda * (-1)^floor((r - 1) / tau),

where F is the student's softmax and lambda is in units of the input range (0.1: 25.5 of 255 pixel levels); the
sign flips every `tau` rounds (the paper's periodic step size). The paper doubles the set each round; here each
round asks its share of the budget, from parents drawn without replacement among everything asked so far (the
paper's reservoir sampling). Synthesised inputs are rounded and clipped to uint8 images: the API takes images.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.datasets import to_float
from extraction.strategies import gradients
from extraction.strategies.base import FromSeedSet, Round, Student


def step_size(lam: float, tau: int, round_index: int) -> float:
  """lambda_r of augmentation round r >= 1: lambda, with its sign flipped every tau rounds."""
  return lam * (-1) ** ((round_index - 1) // max(tau, 1))


def jacobian_augment(student: Student, x: np.ndarray, labels: np.ndarray, lam: float) -> np.ndarray:
  """uint8 x moved by lam (input-range units) along sign(d softmax(student(x))[label] / dx), rounded, clipped."""
  g = gradients.class_probability_gradient(student.model, student.variables, to_float(x), labels)
  moved = x.astype(np.float64) + lam * 255.0 * np.sign(g)
  return np.clip(np.round(moved), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class JBDA(FromSeedSet):
  lam: float = 0.1
  tau: int = 3

  def grow(self, rnd: Round, n: int) -> None:
    m = len(rnd.asked)
    parents = rnd.rng.permutation(m)[:n]
    if n > m:  # more than everything asked so far: some inputs are moved twice
      parents = np.concatenate([parents, rnd.rng.integers(0, m, n - m)])
    labels = np.argmax(rnd.asked.answers[parents], axis=-1)
    lam = step_size(self.lam, self.tau, rnd.index)
    rnd.ask(inputs=jacobian_augment(rnd.trained_student(), rnd.asked.inputs[parents], labels, lam))


def make(jbda_lambda: float = 0.1, jbda_tau: int = 3, **_) -> JBDA:
  return JBDA(lam=jbda_lambda, tau=jbda_tau)
