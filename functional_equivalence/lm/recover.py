"""Recovery of the unembedding W (vocab x h) up to an h x h linear transform from n >= h logit vectors.

The vectors y_i = W g_i span W's column space, so any basis of their top-h subspace is W G for an invertible
h x h G (Carlini et al. 2024, Sec. 4.2). Under a final LayerNorm (see `spectrum`) the basis is built as the top
h-1 right singular vectors of the mean-centred vectors (the affine hull: the LayerNorm's directions) plus the mean
vector (the hull's offset): the h-th direction is then measured by averaging all n vectors, rather than left to
the h-th singular vector, which is only noise when the offset is below the answers' precision. Without a centring
norm it is the top-h right singular vectors. Columns are scaled to the logits' scale (singular value / sqrt(n)).
Precision: float64.
"""
from __future__ import annotations

import numpy as np


def recover_unembedding(vectors: np.ndarray, hidden: int, final_norm: str = "layernorm") -> np.ndarray:
  """A (vocab x hidden) basis W_rec of the logits' span with W_rec = W G (module docstring).

  Args:
    vectors: (n, V) logit vectors (or vocabulary-centred ones, for answers known up to a shift), n > hidden.
    hidden: the hidden size h (from `spectrum.detect`).
    final_norm: 'layernorm' or 'rmsnorm', as in `spectrum.detect`.
  """
  y = np.asarray(vectors, np.float64)
  n = len(y)
  if not 1 <= hidden < n:
    raise ValueError(f"need more vectors ({n}) than the hidden size ({hidden})")
  if final_norm == "layernorm":
    mean = y.mean(axis=0)
    _, s, vt = np.linalg.svd(y - mean, full_matrices=False)
    basis = vt[:hidden - 1].T * (s[:hidden - 1] / np.sqrt(n))
    return np.concatenate([basis, mean[:, None]], axis=1)
  _, s, vt = np.linalg.svd(y, full_matrices=False)
  return vt[:hidden].T * (s[:hidden] / np.sqrt(n))


def center_vocabulary(vectors: np.ndarray) -> np.ndarray:
  """Each vector minus its mean over the vocabulary: removes a per-vector shift (log-probabilities, or logits
  rebuilt relative to a reference token). The span becomes that of P W, P = I - 11^T / V."""
  y = np.asarray(vectors, np.float64)
  return y - y.mean(axis=-1, keepdims=True)
