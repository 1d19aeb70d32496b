"""Evaluation points of the deep-attack tests: where a recovered network is compared with its victim."""

import numpy as np

from functional_equivalence import domain


def eval_points(d, seed=5, count=10_000):
  """N(0, I) points and points on spheres of radii 1 .. 1000 (the default domain's radius)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([rng.normal(size=(count, d)), domain.Ball(1000.0).check_points(rng, d, count)])
