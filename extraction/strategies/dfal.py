"""`dfal`: Pal et al., *ActiveThief*, AAAI 2020, with DeepFool-based active learning (DFAL) of Ducoffe & Precioso,
*Adversarial Active Learning for Deep Networks: a Margin Based Approach*, 2018.

Round 0 asks a random seed set of the attacker's pool. Every later round runs DeepFool (Moosavi-Dezfooli, Fawzi,
Frossard, CVPR 2016) on the current student for each candidate and asks the inputs with the smallest perturbation
that changes the student's label: those nearest its decision boundary. DeepFool linearises the classes at each
iteration (every class, or the top `classes` of the starting logits, as in its reference code) and stops when the
label changes or after `max_iter` iterations (the norm reached then is kept: a lower bound, ranked among the
farthest). Norms are in the float input units of the models ([-1, 1]); the perturbations are never asked, only the
natural inputs they rank. With `candidates` > 0 the choice is among a random subset of that many unasked inputs per
round (DeepFool costs one backward pass per linearised class and iteration of each unconverged input).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from extraction.datasets import to_float
from extraction.strategies import gradients
from extraction.strategies.base import RankCandidates, Round


def deepfool_norms(
  model, variables, x: np.ndarray, max_iter: int = 10, overshoot: float = 0.02, classes: int = 0
) -> np.ndarray:
  """L2 norm of DeepFool's perturbation of each float input x (N, ...) against the model (see module docstring).

  `classes` > 0 linearises only the top `classes` classes of each input's starting logits (its label included),
  as DeepFool's reference code and ART's `nb_grads` do; 0: every class. Each iteration differentiates only the
  inputs whose label has not changed yet. Jacobians in float32, the step arithmetic in float64."""
  x = np.asarray(x, np.float32)
  n = len(x)
  if n == 0:
    return np.zeros(0)
  flat_x = x.reshape(n, -1).astype(np.float64)
  logits0 = gradients.logits(model, variables, x)
  k = logits0.shape[-1] if classes <= 0 else min(classes, logits0.shape[-1])
  ranked = np.argsort(-logits0, axis=-1, kind="stable")[:, :k]  # column 0: the starting label
  r_tot = np.zeros_like(flat_x)
  active = np.arange(n)
  for _ in range(max_iter):
    point = (flat_x[active] + (1 + overshoot) * r_tot[active]).astype(np.float32).reshape((-1,) + x.shape[1:])
    logits, jac = gradients.logits_and_class_jacobian(model, variables, point, ranked[active])
    same = np.argmax(logits, -1) == ranked[active, 0]
    active, logits, jac = active[same], logits[same], jac[:, same]
    if not len(active):
      break
    f = np.take_along_axis(logits, ranked[active], 1).T.astype(np.float64)  # (K, M)
    f = f - f[:1]  # f_k - f_label
    w = jac.reshape(k, len(active), -1).astype(np.float64)
    w = w - w[:1]  # (K, M, D)
    w_norm = np.linalg.norm(w, axis=-1) + 1e-12
    ratio = np.abs(f) / w_norm
    ratio[0] = np.inf
    best = np.argmin(ratio, 0)
    cols = np.arange(len(active))
    r_tot[active] += ((np.abs(f[best, cols]) + 1e-4) / w_norm[best, cols] ** 2)[:, None] * w[best, cols]
  return (1 + overshoot) * np.linalg.norm(r_tot, axis=-1)


@dataclasses.dataclass(frozen=True)
class DFAL(RankCandidates):
  max_iter: int = 10
  overshoot: float = 0.02
  classes: int = 0

  def rank(self, rnd: Round, indices: np.ndarray, n: int) -> np.ndarray:
    student = rnd.trained_student()
    norms = deepfool_norms(
      student.model, student.variables, to_float(rnd.natural[indices]), self.max_iter, self.overshoot, self.classes
    )
    return np.argsort(norms, kind="stable")[:n]


def make(candidates: int = 0, dfal_max_iter: int = 10, dfal_classes: int = 0, **_) -> DFAL:
  return DFAL(candidates=candidates, max_iter=dfal_max_iter, classes=dfal_classes)
