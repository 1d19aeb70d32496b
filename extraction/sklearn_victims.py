"""Scikit-learn victims behind the `Oracle`: logistic regression, linear SVM and decision trees from joblib files.

  model = load_joblib("victim.joblib")            # the user's own fitted model (trusted input: joblib unpickles)
  oracle = Oracle(backend(model), output="probabilities")       # or "labels"; trees also "leaf"

Supported (`KINDS`): `LogisticRegression` (binary, or multinomial: its probabilities are the softmax of its
decision function), `LinearSVC` (labels only: its "logits" are the decision function), `DecisionTreeClassifier`
and `DecisionTreeRegressor` (one output). Anything else ends in a one-line `VictimError`.

Backends are batched float64 numpy functions x (N, d) -> logits (N, C), answering exactly as scikit-learn does:
  * linear, binary:      logits [0, z] with z = x @ coef + intercept (softmax = scikit-learn's predict_proba);
  * linear, k classes:   logits z (N, k) (softmax = predict_proba);
  * tree classifier:     log of the leaf's class distribution (softmax = predict_proba; -inf for absent classes);
  * tree regressor:      the leaf's value (N, 1).
A tree backend also answers the oracle's `leaf` mode: (N, 1 + v), the reached node's identifier (a secret random
relabelling of the node indices, so ids tell nothing about the tree's layout) and its value (class distribution,
or the regression value). Inputs may hold NaN for features left out, answered as a tree API does (`missing`):
'stop' returns the node where the traversal meets a missing feature (BigML, as in Tramer et al. 2016); 'majority'
follows the branch that more training samples took, down to a leaf. Like scikit-learn, trees compare the input
cast to float32 with their float64 thresholds.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

KINDS = {
  "LogisticRegression": "logistic_regression",
  "LinearSVC": "linear_svc",
  "DecisionTreeClassifier": "tree_classifier",
  "DecisionTreeRegressor": "tree_regressor",
}
MISSING = ("stop", "majority")


class VictimError(ValueError):
  """A victim file or model that cannot serve as a victim here (one-line message)."""


def kind(model: Any) -> str:
  """'logistic_regression', 'linear_svc', 'tree_classifier' or 'tree_regressor'; VictimError otherwise."""
  name = type(model).__name__
  if name not in KINDS or not type(model).__module__.startswith("sklearn."):
    raise VictimError(
      f"unsupported victim {type(model).__module__}.{name}; supported: {', '.join(KINDS)} "
      f"(scikit-learn), or a two-layer network as .npz"
    )
  return KINDS[name]


def check_model(model: Any, source: str = "victim") -> Any:
  """Returns `model` if it is a fitted, supported scikit-learn model; VictimError (one line) otherwise."""
  k = kind(model)
  fitted = hasattr(model, "tree_") if k.startswith("tree") else hasattr(model, "coef_")
  if not fitted:
    raise VictimError(f"{source}: the {type(model).__name__} is not fitted")
  if k.startswith("tree") and model.n_outputs_ != 1:
    raise VictimError(f"{source}: trees with {model.n_outputs_} outputs are not supported (one output only)")
  if not k.startswith("tree"):
    arrays = (np.asarray(model.coef_), np.asarray(model.intercept_))
    if not all(np.all(np.isfinite(a)) for a in arrays):
      raise VictimError(f"{source}: coef_ or intercept_ holds NaN/inf")
  return model


def load_joblib(path) -> Any:
  """Loads and checks a fitted scikit-learn victim from a joblib file (trusted input: joblib unpickles code)."""
  import joblib

  path = pathlib.Path(path)
  if not path.is_file():
    raise VictimError(f"victim file {str(path)!r} does not exist")
  try:
    model = joblib.load(path)
  except Exception as e:  # truncated, not a pickle, a class that no longer exists...
    raise VictimError(f"{path}: not a readable joblib file ({type(e).__name__}: {str(e)[:120]})") from None
  return check_model(model, str(path))


def save_joblib(path, model) -> pathlib.Path:
  import joblib

  path = pathlib.Path(path)
  joblib.dump(model, path)
  return path


def num_features(model) -> int:
  return int(model.n_features_in_)


def num_classes(model) -> int:
  """Classes of a classifier (columns of its answers); 1 for a regressor."""
  return 1 if kind(model) == "tree_regressor" else len(model.classes_)


class LinearBackend:
  """Logits of a linear model (see module docstring): x (N, d) -> (N, 2) for binary, (N, k) otherwise."""

  def __init__(self, coef: np.ndarray, intercept: np.ndarray):
    self.coef = np.asarray(coef, np.float64).reshape(-1, np.shape(coef)[-1])
    self.intercept = np.asarray(intercept, np.float64).reshape(-1)

  def __call__(self, x) -> np.ndarray:
    z = np.asarray(x, np.float64).reshape(len(x), -1) @ self.coef.T + self.intercept
    return np.concatenate([np.zeros_like(z), z], axis=1) if z.shape[1] == 1 else z


class TreeBackend:
  """A fitted scikit-learn tree as a backend with a `leaf` answer (see module docstring).

  Args:
    model: DecisionTreeClassifier or DecisionTreeRegressor (one output).
    missing: 'stop' or 'majority', how inputs with NaN features are answered.
    id_seed: seed of the secret relabelling of node indices into leaf identifiers.
  """

  def __init__(self, model, missing: str = "stop", id_seed: int = 0):
    if missing not in MISSING:
      raise ValueError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    t = model.tree_
    self.regressor = kind(model) == "tree_regressor"
    self.left, self.right, self.feature = t.children_left, t.children_right, t.feature
    self.threshold, self.samples = t.threshold, t.weighted_n_node_samples
    value = np.asarray(t.value[:, 0, :], np.float64)
    self.value = value if self.regressor else value / value.sum(axis=1, keepdims=True)
    self.missing, self.max_depth = missing, int(t.max_depth)
    self.ids = np.random.default_rng(id_seed).permutation(t.node_count).astype(np.float64)

  def nodes(self, x) -> np.ndarray:
    """Index of the node each input (N, d) ends at (a leaf, or with 'stop' the node that tests a NaN feature)."""
    x32 = np.asarray(x, np.float64).reshape(len(x), -1).astype(np.float32).astype(np.float64)
    node = np.zeros(len(x32), np.int64)
    rows = np.arange(len(x32))
    for _ in range(self.max_depth):
      inner = self.left[node] >= 0
      v = x32[rows, np.where(inner, self.feature[node], 0)]
      absent = np.isnan(v)
      go_left = v <= self.threshold[node]
      if self.missing == "majority":
        go_left = np.where(absent, self.samples[self.left[node]] >= self.samples[self.right[node]], go_left)
      move = inner & ~(absent & (self.missing == "stop"))
      node = np.where(move, np.where(go_left, self.left[node], self.right[node]), node)
    return node

  def __call__(self, x) -> np.ndarray:
    v = self.value[self.nodes(x)]
    if self.regressor:
      return v
    with np.errstate(divide="ignore"):
      return np.log(v)

  def leaf(self, x) -> np.ndarray:
    node = self.nodes(x)
    return np.concatenate([self.ids[node][:, None], self.value[node]], axis=1)


def backend(model, missing: str = "stop", id_seed: int = 0):
  """The batched backend of a checked scikit-learn victim (see module docstring)."""
  k = kind(model)
  if k.startswith("tree"):
    return TreeBackend(model, missing, id_seed)
  return LinearBackend(model.coef_, model.intercept_)
