"""`typiclust`: Hacohen, Dekel, Weinshall, *Active Learning on a Budget: Opposite Strategies Suit High and Low
Budgets*, ICML 2022 (TypiClust), the low-budget choice that their paper pairs with semi-supervised training.

One round, no oracle answers and no student needed: the attacker's pool is clustered by k-means into as many
clusters as inputs to ask (at most `max_clusters`); clusters are visited largest first (those already holding an
asked input last), round-robin until the budget is spent, and each visit asks the cluster's most *typical* unasked
input: the one of highest typicality 1 / (mean distance to its k nearest neighbours in the cluster), k =
min(`neighbours`, cluster size // 2). Features are the flattened inputs in [0, 1] projected on their first `dims`
principal components (0: the raw inputs). The paper embeds images with a self-supervised network (SimCLR);
pixels are a fair space for small digits and a weak one for natural photographs (see docs/strategies.md).

Randomness (the PCA's solver and k-means' initialisation) comes from the round's query stream. float64 numpy and
scikit-learn; for pools of tens of thousands of inputs use `dims` (default 32) to keep k-means cheap.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from extraction.strategies.base import OneRound, Round

_FULL_KMEANS = 50  # the paper's code: KMeans up to 50 clusters, MiniBatchKMeans above


def features(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
  """Flattened uint8 inputs scaled to [0, 1], on their first `dims` principal components (0 or >= the input's size:
  the flattened inputs themselves)."""
  flat = np.asarray(x, np.float64).reshape(len(x), -1) / 255.0
  if 0 < dims < min(flat.shape):
    flat = PCA(n_components=dims, random_state=seed).fit_transform(flat)
  return flat


def typicality(points: np.ndarray, neighbours: int) -> np.ndarray:
  """1 / (mean Euclidean distance of each point to its k nearest other points), k = min(`neighbours`, len // 2) as
  in the paper's code; a lone point gets 1.
  Exact nearest neighbours (scikit-learn) of the points centred on their mean, so that points far from the origin
  lose nothing to cancellation."""
  points = np.asarray(points, np.float64)
  k = min(neighbours, len(points) // 2)
  if k < 1:
    return np.ones(len(points))
  centred = points - points.mean(0)
  dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(centred).kneighbors(centred)
  return 1.0 / (dist[:, 1:].mean(1) + 1e-12)


def cluster(points: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
  """k-means cluster of each point (scikit-learn; mini-batch above 50 clusters, as the paper's code)."""
  num_clusters = max(1, min(num_clusters, len(points)))
  if num_clusters <= _FULL_KMEANS:
    km = KMeans(num_clusters, n_init=1, random_state=seed)
  else:
    km = MiniBatchKMeans(num_clusters, n_init=3, batch_size=max(1024, 3 * num_clusters), random_state=seed)
  return km.fit_predict(points)


def choose(labels: np.ndarray, points: np.ndarray, asked: np.ndarray, n: int, neighbours: int) -> np.ndarray:
  """Positions of n unasked points: clusters ordered by (asked inputs in them, -size), visited round-robin, each
  visit the cluster's most typical unasked point (typicality among its unasked points); exhausted clusters are
  skipped. `asked` is a boolean mask of the points asked before."""
  labels, asked = np.asarray(labels), np.asarray(asked, bool)
  free = ~asked
  if n > free.sum():
    raise ValueError(f"asked for {n} inputs, but only {int(free.sum())} are unasked")
  ids, sizes = np.unique(labels, return_counts=True)
  held = np.array([np.sum(asked & (labels == c)) for c in ids])
  order = ids[np.lexsort((-sizes, held))]
  chosen: list[int] = []
  while len(chosen) < n:
    for c in order:
      members = np.flatnonzero((labels == c) & free)
      if not len(members):
        continue
      pick = int(members[np.argmax(typicality(points[members], neighbours))])
      chosen.append(pick)
      free[pick] = False
      if len(chosen) == n:
        break
  return np.asarray(chosen, np.int64)


@dataclasses.dataclass(frozen=True)
class TypiClust(OneRound):
  dims: int = 32
  neighbours: int = 20
  max_clusters: int = 500

  def select(self, state, rnd: Round, n: int):
    seed = int(rnd.rng.integers(2**31 - 1))
    points = features(rnd.natural, self.dims, seed)
    asked = np.zeros(len(points), bool)
    asked[rnd.asked.natural[rnd.asked.natural >= 0]] = True
    labels = cluster(points, min(int(asked.sum()) + n, self.max_clusters), seed)
    rnd.ask(indices=choose(labels, points, asked, n, self.neighbours))
    return state


def make(typiclust_dims: int = 32, typiclust_neighbours: int = 20, typiclust_clusters: int = 500, **_) -> TypiClust:
  return TypiClust(dims=typiclust_dims, neighbours=typiclust_neighbours, max_clusters=typiclust_clusters)
