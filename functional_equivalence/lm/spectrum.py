"""Hidden-size detection from the singular values of stacked logit vectors (Carlini et al. 2024, Sec. 4).

n logit vectors y_i = W g_i (W: vocab x h) span at most h dimensions, so the singular values s_1 >= ... >= s_n of
the n x V matrix drop at index h from the signal's scale to the answers' rounding noise. The rule here: the
dimension is the index i of the largest ratio s_i / s_(i+1) (the largest multiplicative gap); it is accepted when
that ratio is at least `threshold` (1e3 by default, `DEFAULT_THRESHOLD`: float32 answers gave gaps of 2e3-6e5,
float64 ones 1e11 and more, while ratios between consecutive signal values stayed below ~30 on the victims of
benchmarks/results/lm_last_layer*.md) and at least `tail` singular values lie below the gap (so n >= dim + tail:
a square, merely ill-conditioned matrix does not pass). Exact zeros are clipped to the smallest positive float.

A final LayerNorm centres its input: its outputs g = gamma * z + beta (z orthogonal to the all-ones vector) fill
an (h-1)-dimensional affine subspace, so the logits have an (h-1)-dimensional affine hull (the gap of the
mean-centred vectors) and an h-dimensional linear span whose h-th direction is only the offset of that hull from
the origin -- after training often below float32's noise. `detect` therefore reads h as 1 + the affine dimension
under `final_norm='layernorm'` (GPT-2, Pythia, OPT and this codebase's victim), and as the linear dimension
under 'rmsnorm' (RMSNorm or no final norm: no centring). Both dimensions are reported. Precision: float64 SVD.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

DEFAULT_THRESHOLD = 1e3
FINAL_NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(frozen=True)
class Gap:
  """The largest multiplicative gap: `dim` singular values above it, ratio s_dim / s_(dim+1), `tail` below."""
  dim: int
  ratio: float
  tail: int

  def accepted(self, threshold: float, tail: int) -> bool:
    return self.ratio >= threshold and self.tail >= tail


def singular_values(vectors: np.ndarray) -> np.ndarray:
  """Singular values (descending, float64) of the n x V matrix of stacked vectors."""
  return np.linalg.svd(np.asarray(vectors, np.float64), compute_uv=False)


def largest_gap(values: np.ndarray) -> Optional[Gap]:
  """The largest ratio of consecutive singular values (None for fewer than 2 values or an all-zero spectrum)."""
  s = np.maximum(np.asarray(values, np.float64), np.finfo(np.float64).tiny)
  if len(s) < 2 or s[0] <= np.finfo(np.float64).tiny:
    return None
  ratios = s[:-1] / s[1:]
  i = int(np.argmax(ratios))
  return Gap(dim=i + 1, ratio=float(ratios[i]), tail=len(s) - i - 1)


@dataclasses.dataclass(frozen=True)
class Detection:
  """Outcome of `detect` on n vectors: hidden is None until the rule's gap is accepted.

  Attributes:
    hidden: the hidden size read under the final-norm assumption (None: not yet).
    linear, affine: largest gaps of the vectors and of the mean-centred vectors (the latter over n - 1 values:
      centring removes one dimension).
    notes: what the two dimensions say about the assumption (e.g. the offset direction below the noise).
  """
  hidden: Optional[int]
  linear: Optional[Gap]
  affine: Optional[Gap]
  values: np.ndarray
  notes: tuple = ()


def detect(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD, tail: int = 2,
           final_norm: str = "layernorm") -> Detection:
  """Hidden size from n stacked logit vectors (n x V) by the gap rule (module docstring)."""
  if final_norm not in FINAL_NORMS:
    raise ValueError(f"final_norm must be one of {', '.join(FINAL_NORMS)}, got {final_norm!r}")
  vectors = np.asarray(vectors, np.float64)
  values = singular_values(vectors)
  linear = largest_gap(values)
  affine = largest_gap(singular_values(vectors - vectors.mean(axis=0))[:len(vectors) - 1])
  lin_ok = linear is not None and linear.accepted(threshold, tail)
  aff_ok = affine is not None and affine.accepted(threshold, tail)
  notes = []
  if final_norm == "rmsnorm":
    hidden = linear.dim if lin_ok else None
  else:
    hidden = affine.dim + 1 if aff_ok else None
    if aff_ok and (not lin_ok or linear.dim == affine.dim):
      seen = f"span only {linear.dim} dimensions" if lin_ok else "show no accepted gap in their linear span"
      notes.append(f"the logits {seen}: the offset of their affine hull from the origin (a final LayerNorm's "
                   f"bias) is weak against the answers' noise, or zero; the h-th direction of W is then poorly "
                   f"determined")
    elif aff_ok and lin_ok and linear.dim != affine.dim + 1:
      notes.append(f"linear span {linear.dim} vs affine hull {affine.dim}: not the signature of a final LayerNorm "
                   f"(e.g. an unembedding bias adds a dimension)")
  return Detection(hidden, linear, affine, values, tuple(notes))
