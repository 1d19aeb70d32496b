"""Leaf boxes back into a binary decision tree, and that tree as a scikit-learn estimator.

`build` takes the boxes of a tree's leaves (they tile space) and splits them recursively: at each node some
(feature, threshold) has every box on one side (the true node's split always qualifies; any that qualifies gives
the same function). Box edges of the same threshold found from different leaves differ by up to the attack's
precision, so sides are compared with a `tolerance`. Nodes are numbered depth first, left before right, as in
scikit-learn; a split sends x[feature] <= threshold left.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from functional_equivalence.errors import ExtractionError


class Tree(NamedTuple):
  """Node arrays (scikit-learn's layout): children -1 at leaves, feature -2 at leaves, value (nodes, v)."""

  left: np.ndarray
  right: np.ndarray
  feature: np.ndarray
  threshold: np.ndarray
  value: np.ndarray

  @property
  def node_count(self) -> int:
    return len(self.left)

  def apply(self, x) -> np.ndarray:
    """Leaf index of each input (N, d) (float64 comparisons)."""
    x = np.asarray(x, np.float64)
    node = np.zeros(len(x), np.int64)
    rows = np.arange(len(x))
    while True:
      inner = self.left[node] >= 0
      if not inner.any():
        return node
      go_left = x[rows, np.where(inner, self.feature[node], 0)] <= self.threshold[node]
      node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)


def build(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, tolerance: float) -> Tree:
  """A tree whose leaves are the boxes (lo, hi] (n, d) with values (n, v); ExtractionError if they do not form
  a tree's partition (a leaf missing, or boxes that overlap)."""
  # per node, filled in by grow (None until then)
  left: list = []
  right: list = []
  feature: list = []
  threshold: list = []
  value: list = []

  def split_of(idx):
    for f in range(lo.shape[1]):
      for t in np.unique(hi[idx, f][np.isfinite(hi[idx, f])]):
        below = hi[idx, f] <= t + tolerance
        above = lo[idx, f] >= t - tolerance
        if np.all(below | above) and below.any() and above.any() and not np.any(below & above):
          return f, t, idx[below], idx[above]
    return None

  def grow(idx):
    node = len(left)
    for arr in (left, right, feature, threshold, value):
      arr.append(None)
    if len(idx) == 1:
      left[node], right[node], feature[node], threshold[node] = -1, -1, -2, -2.0
      value[node] = values[idx[0]]
      return node
    found = split_of(idx)
    if found is None:
      raise ExtractionError(
        f"path finding: {len(idx)} leaf boxes admit no common split; the leaves found do not "
        f"tile the box (a leaf narrower than epsilon was missed, or the victim is not a tree)"
      )
    f, t, below, above = found
    feature[node], threshold[node] = f, t
    value[node] = values[idx].mean(axis=0)
    left[node] = grow(below)
    right[node] = grow(above)
    return node

  grow(np.arange(len(lo)))
  return Tree(
    np.array(left, np.int64),
    np.array(right, np.int64),
    np.array(feature, np.int64),
    np.array(threshold, np.float64),
    np.stack(value).astype(np.float64),
  )


def to_sklearn(tree: Tree, n_features: int, regression: bool):
  """The tree as a fitted DecisionTreeClassifier (classes 0..v-1, value = class distribution) or
  DecisionTreeRegressor (value (nodes, 1)), built through scikit-learn's own Tree state."""
  from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
  from sklearn.tree._tree import NODE_DTYPE
  from sklearn.tree._tree import Tree as SkTree

  v = tree.value.shape[1]
  n_classes = np.array([1 if regression else v], np.intp)
  sk = SkTree(n_features, n_classes, 1)
  nodes = np.zeros(tree.node_count, dtype=NODE_DTYPE)
  nodes["left_child"], nodes["right_child"] = tree.left, tree.right
  nodes["feature"], nodes["threshold"] = tree.feature, tree.threshold
  nodes["n_node_samples"], nodes["weighted_n_node_samples"] = 1, 1.0
  depth = np.zeros(tree.node_count, np.int64)
  for i in range(tree.node_count):  # parents precede children (depth-first numbering)
    for c in (tree.left[i], tree.right[i]):
      if c >= 0:
        depth[c] = depth[i] + 1
  sk.__setstate__(
    dict(max_depth=int(depth.max()), node_count=tree.node_count, nodes=nodes, values=tree.value[:, None, :].copy())
  )
  est = DecisionTreeRegressor() if regression else DecisionTreeClassifier()
  est.tree_, est.n_features_in_, est.n_outputs_, est.max_features_ = sk, n_features, 1, n_features
  if not regression:
    est.classes_, est.n_classes_ = np.arange(v), v
  return est
