"""A two-layer ReLU network f(x) = relu(x @ w0 + b0) @ w1 + b1 as an oracle backend that also explains itself.

Arrays as in the npz convention of functional_equivalence/victims.py: w0 (d, h), b0 (h,), w1 (h, k), b1 (k,).
Besides logits it answers the oracle's `gradients` mode (Milli et al. 2019's explanation API): (N, k, d + 1), the
input gradient of each logit (w0 diag(relu'(x @ w0 + b0)) w1, transposed) and the logit itself in the last column.
At a kink (a pre-activation exactly 0) the unit counts as inactive. Float64 numpy throughout.
"""

from __future__ import annotations

import numpy as np


class TwoLayerBackend:
  """Batched float64 backend: `__call__` gives logits (N, k), `gradients` (N, k, d + 1) (see module docstring)."""

  def __init__(self, w0, b0, w1, b1):
    self.w0, self.b0, self.w1, self.b1 = (np.asarray(a, np.float64) for a in (w0, b0, w1, b1))

  def _hidden(self, x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x, x @ self.w0 + self.b0

  def __call__(self, x) -> np.ndarray:
    _, pre = self._hidden(x)
    return np.maximum(pre, 0.0) @ self.w1 + self.b1

  def gradients(self, x) -> np.ndarray:
    x, pre = self._hidden(x)
    active = (pre > 0).astype(np.float64)  # (N, h)
    grads = np.einsum("nhk,dh->nkd", active[:, :, None] * self.w1, self.w0, optimize=True)  # (N, k, d)
    logits = np.maximum(pre, 0.0) @ self.w1 + self.b1
    return np.concatenate([grads, logits[:, :, None]], axis=2)
