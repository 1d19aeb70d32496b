"""How a directly recovered model compares with its victim: parameter errors, tree leaves and thresholds,
agreement on inputs. Evaluation only: it reads the victim, which no attack ever does. Float64."""

from __future__ import annotations

import numpy as np


def _identifiable(coef, intercept) -> np.ndarray:
  """A linear model's parameters as the API can reveal them: (w, b) for binary, differences to class 0 else."""
  theta = np.concatenate([np.atleast_2d(coef), np.reshape(intercept, (-1, 1))], axis=1)
  return theta[0] if len(theta) == 1 else (theta[1:] - theta[:1]).ravel()


def linear_error(true_coef, true_intercept, coef, intercept, scaled: bool) -> float:
  """Max |error| of the identifiable parameters relative to their largest true magnitude; with `scaled` (a labels
  API, which reveals them up to a positive scale) after the least-squares scale of the recovered ones."""
  t, r = _identifiable(true_coef, true_intercept), _identifiable(coef, intercept)
  if scaled:
    r = r * (t @ r) / max(r @ r, 1e-300)
  return float(np.max(np.abs(r - t)) / np.max(np.abs(t)))


def reachable_splits(tree, low: float, high: float):
  """(feature, threshold) of the internal nodes of a scikit-learn `tree_` that inputs of the box [low, high]^d
  reach, and the number of reachable leaves."""
  splits, leaves = [], 0
  stack = [(0, np.full(tree.n_features, float(low)), np.full(tree.n_features, float(high)))]
  while stack:
    node, lo, hi = stack.pop()
    if tree.children_left[node] < 0:
      leaves += 1
      continue
    f, t = tree.feature[node], tree.threshold[node]
    splits.append((f, t))
    if lo[f] <= t:
      h = hi.copy()
      h[f] = min(h[f], t)
      stack.append((tree.children_left[node], lo, h))
    if hi[f] > t:
      l = lo.copy()
      l[f] = max(l[f], t)
      stack.append((tree.children_right[node], l, hi))
  return splits, leaves


def threshold_error(splits, lo: np.ndarray, hi: np.ndarray) -> float:
  """Max over true splits of the distance to the nearest finite edge of a recovered leaf box on the same
  feature (inf when a split has none)."""
  worst = 0.0
  for f, t in splits:
    edges = np.concatenate([lo[:, f], hi[:, f]])
    edges = edges[np.isfinite(edges)]
    worst = max(worst, float(np.min(np.abs(edges - t))) if len(edges) else np.inf)
  return worst


def agreement(true_answers: np.ndarray, answers: np.ndarray, regression: bool) -> float:
  """Fraction of inputs with the same top-1 class, or (regression) the same value to 1e-9 relative."""
  if regression:
    t, a = true_answers.ravel(), answers.ravel()
    return float(np.mean(np.abs(t - a) <= 1e-9 * np.maximum(1.0, np.abs(t))))
  return float(np.mean(true_answers.argmax(axis=1) == answers.argmax(axis=1)))
