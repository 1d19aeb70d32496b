"""`dfal`: Pal et al., *ActiveThief*, AAAI 2020, with DeepFool-based active learning (DFAL) of Ducoffe & Precioso,
*Adversarial Active Learning for Deep Networks: a Margin Based Approach*, 2018.

Round 0 asks a random seed set of the attacker's pool. Every later round runs DeepFool (Moosavi-Dezfooli, Fawzi,
Frossard, CVPR 2016) on the current student for each candidate and asks the inputs with the smallest perturbation
that changes the student's label: those nearest its decision boundary. DeepFool linearises every class at each
iteration (the full Jacobian of the logits) and stops when the label changes or after `max_iter` iterations (the
norm reached then is kept: a lower bound, ranked among the farthest). Norms are in the float input units of the
models ([-1, 1]); the perturbations are never asked, only the natural inputs they rank. With `candidates` > 0 the
choice is among a random subset of that many unasked inputs per round (DeepFool costs C backward passes per
iteration).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.datasets import to_float
from extraction.strategies import gradients
from extraction.strategies.base import RankCandidates, Round


def deepfool_norms(model, variables, x: np.ndarray, max_iter: int = 10, overshoot: float = 0.02) -> np.ndarray:
  """L2 norm of DeepFool's perturbation of each float input x (N, ...) against the model (see module docstring)."""
  x = np.asarray(x, np.float32)
  norms = np.zeros(len(x))
  for start in range(0, len(x), gradients.CHUNK):
    x0 = x[start : start + gradients.CHUNK]
    flat = lambda a, nd=x0.ndim: a.reshape(a.shape[: -nd + 1] + (-1,))  # (..., B, D)
    r_tot = np.zeros((len(x0), flat(x0).shape[-1]))
    logits, jac = gradients.logits_and_jacobian(model, variables, x0)
    k0 = np.argmax(logits, -1)
    active = np.ones(len(x0), bool)
    rows = np.arange(len(x0))
    for _ in range(max_iter):
      active &= np.argmax(logits, -1) == k0
      if not active.any():
        break
      f = (logits - logits[rows, k0][:, None]).T  # (C, B): f_k - f_k0
      w = flat(jac).astype(np.float64) - flat(jac)[k0, rows][None].astype(np.float64)  # (C, B, D)
      w_norm = np.linalg.norm(w, axis=-1) + 1e-12
      ratio = np.abs(f) / w_norm
      ratio[k0, rows] = np.inf
      best = np.argmin(ratio, 0)
      step = ((np.abs(f[best, rows]) + 1e-4) / w_norm[best, rows] ** 2)[:, None] * w[best, rows]
      r_tot[active] += step[active]
      logits, jac = gradients.logits_and_jacobian(
        model, variables, (flat(x0) + (1 + overshoot) * r_tot).astype(np.float32).reshape(x0.shape)
      )
    norms[start : start + len(x0)] = (1 + overshoot) * np.linalg.norm(r_tot, axis=-1)
  return norms


@dataclasses.dataclass(frozen=True)
class DFAL(RankCandidates):
  max_iter: int = 10
  overshoot: float = 0.02

  def rank(self, rnd: Round, indices: np.ndarray, n: int) -> np.ndarray:
    student = rnd.trained_student()
    norms = deepfool_norms(
      student.model, student.variables, to_float(rnd.natural[indices]), self.max_iter, self.overshoot
    )
    return np.argsort(norms, kind="stable")[:n]


def make(candidates: int = 0, dfal_max_iter: int = 10, **_) -> DFAL:
  return DFAL(candidates=candidates, max_iter=dfal_max_iter)
