"""Tabular datasets that ship with scikit-learn (offline), scaled to [0, 1], and the victims trained on them.

  data = load("breast_cancer", seed)              # x in [0, 1]^d: the attacker's box is [0, 1]
  model = train("breast_cancer", "logistic_regression", data, seed)

Every feature is min-max scaled over the whole dataset, so every input of the data lies in the box [0, 1]^d.
Splits: 75% train, 25% test, drawn with `seed`. `train` fits scikit-learn models: logistic regression
(multinomial for k > 2), LinearSVC, decision tree (a classifier, or a regressor on `diabetes`) of `tree_depth`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DATASETS = {
  "breast_cancer": "classification",
  "wine": "classification",
  "iris": "classification",
  "digits": "classification",
  "diabetes": "regression",
}
SKLEARN_MODELS = ("logistic_regression", "linear_svc", "tree")


class Tabular(NamedTuple):
  """A dataset in [0, 1]^d: train/test inputs (N, d) float64 and targets (class indices, or values)."""

  name: str
  task: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    return 1 if self.task == "regression" else int(max(self.y_train.max(), self.y_test.max()) + 1)


def load(name: str, seed: int = 0, test_fraction: float = 0.25) -> Tabular:
  """One of DATASETS, min-max scaled to [0, 1] per feature and split with `seed`."""
  import sklearn.datasets as skd

  if name not in DATASETS:
    raise ValueError(f"unknown tabular dataset {name!r}; choose one of {', '.join(DATASETS)}")
  x, y = getattr(skd, f"load_{name}")(return_X_y=True)
  x = np.asarray(x, np.float64)
  lo, span = x.min(axis=0), np.ptp(x, axis=0)
  x = (x - lo) / np.where(span > 0, span, 1.0)
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(test_fraction * len(x)))
  te, tr = perm[:n_test], perm[n_test:]
  y = np.asarray(y, np.float64 if DATASETS[name] == "regression" else np.int64)
  return Tabular(name, DATASETS[name], x[tr], y[tr], x[te], y[te])


def train(model: str, data: Tabular, seed: int = 0, tree_depth: int = 6):
  """A fitted scikit-learn victim of kind `model` (one of SKLEARN_MODELS) on data's training split."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.svm import LinearSVC
  from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

  if data.task == "regression" and model != "tree":
    raise ValueError(f"{data.name} is a regression dataset: only 'tree' (a regression tree) fits it")
  if model == "logistic_regression":
    est = LogisticRegression(C=10.0, max_iter=10_000)
  elif model == "linear_svc":
    est = LinearSVC(C=1.0, max_iter=100_000, random_state=seed)
  elif model == "tree":
    cls = DecisionTreeRegressor if data.task == "regression" else DecisionTreeClassifier
    est = cls(max_depth=tree_depth, random_state=seed)
  else:
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(SKLEARN_MODELS)}")
  return est.fit(data.x_train, data.y_train)
