"""Chandrasekaran, Chaudhuri, Giacomelli, Jha, Yan 2020, "Exploring connections between active learning and model
extraction" (USENIX Security): a linear classifier from labels by query-synthesis active learning.

Chandrasekaran et al. extract halfspaces with query-synthesis (QS) active learners, which build each query to
cut the version space (the classifiers consistent with every answer so far) through its middle; the one used
here tracks the version space with an ellipsoid, as the spectral QS algorithm of Alabdulmohsin, Gao and Zhang
(2015) does with the version space's covariance:
  * classifiers are theta = (w, b) on box-normalised inputs z in [-1, 1]^d, label [w . z + b > 0]; labels fix
    theta up to scale, so theta is taken on the slice w . u = 1, where u is the direction from a negative to a
    positive sign witness (w . u > 0 for the victim): theta = (u, 0) + B phi with phi in R^d;
  * the version space is kept inside an ellipsoid {phi: (phi - c)^T P^-1 (phi - c) <= 1}, at first a ball of
    `radius`; each query z is synthesised on the decision boundary of the centre classifier, with the cut it
    makes perpendicular to the ellipsoid's longest axis (tilted towards the bias direction when the query would
    lie beyond `reach` normalised units); the answer keeps one half, and the ellipsoid shrinks to the smallest one
    around that half (the ellipsoid method's central-cut update: volume times < exp(-1 / (2 (d + 1))) per query);
  * it stops when the longest axis is below epsilon (relative to |theta|), which bounds the direction error.
A central cut removes a constant fraction of the ellipsoid, not half the version space, so this learner needs
about 2 d (d + 1) ln(radius / epsilon) queries against Lowd-Meek's d log2(1 / epsilon): the comparison is in
benchmarks/results/table1_direct.md. A final check on `checks` random box points restarts with a 1000x larger
radius if the victim lay outside the first ball. Precision: float64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from threadpoolctl import threadpool_limits

from functional_equivalence.errors import ExtractionError, LimitReachedError
from functional_equivalence.simple_models.common import Asker, Box, Halfspace, labels
from functional_equivalence.simple_models.lowd_meek import sign_witnesses


@dataclasses.dataclass(frozen=True)
class Config:
  """epsilon: target direction precision; radius: initial ball (slice units); reach: farthest query (normalised
  units); witness_queries: random points for the sign witnesses; checks: random points for the final check;
  max_iterations: a guard on queries per attempt; attempts: radii tried (each 1000x the previous)."""

  epsilon: float = 1e-6
  radius: float = 1e4
  reach: float = 1e6
  witness_queries: int = 1024
  checks: int = 32
  max_iterations: int = 2_000_000
  attempts: int = 2


_TILTS = (0.0, *np.logspace(-8, 2, 21))


def _ellipsoid_search(label_of, theta0, basis, radius, cfg: Config):
  """Central-cut ellipsoid method over phi (see module docstring); returns (theta, iterations)."""
  n = basis.shape[1]
  phi, p = np.zeros(n), np.eye(n) * radius**2
  for it in range(cfg.max_iterations):
    lam, vecs = np.linalg.eigh(p)
    theta = theta0 + basis @ phi
    if np.sqrt(max(lam[-1], 0.0)) <= cfg.epsilon * np.linalg.norm(theta):
      return theta, it
    v, c = vecs[:, -1], basis[-1]  # the longest axis; c: the bias direction in phi
    for kappa in _TILTS:  # tilt the cut towards c until the query is within reach
      a = v + np.sign(v @ c or 1.0) * kappa * c
      v_cut = a / np.linalg.norm(a)
      zt = basis @ v_cut - (phi @ v_cut) * theta0
      if abs(zt[-1]) > 0 and np.abs(zt[:-1] / zt[-1]).max() <= cfg.reach:
        break
    else:
      raise ExtractionError("active_linear: every cut needs a query beyond reach; raise the reach")
    v = v_cut
    z, s = zt[:-1] / zt[-1], np.sign(zt[-1])
    y = 1.0 if label_of(z) == 1 else -1.0
    g = -y * s * v  # keep {phi: g . (phi - phi_c) <= 0}
    pg = p @ g
    bvec = pg / np.sqrt(g @ pg)
    if n == 1:
      phi, p = phi - bvec / 2, p / 4
    else:
      phi = phi - bvec / (n + 1)
      p = n * n / (n * n - 1.0) * (p - 2.0 / (n + 1) * np.outer(bvec, bvec))
      p = 0.5 * (p + p.T)
  raise LimitReachedError(f"active_linear: no convergence within {cfg.max_iterations} queries")


def extract(oracle, box: Box, cfg: Config = Config(), rng: np.random.Generator | None = None) -> Halfspace:
  """Recovers (w, b) of a binary linear classifier behind a labels oracle by QS active learning."""
  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  d, half, center = box.dim, 0.5 * box.width, box.center
  x_pos, x_neg, witnesses = sign_witnesses(ask, box, rng, cfg.witness_queries, "active_linear")
  u = (x_pos - x_neg) / half
  theta0 = np.concatenate([u / np.linalg.norm(u), [0.0]])
  basis = np.linalg.svd(theta0[None])[2][1:].T  # (d + 1, d), orthonormal, _|_ theta0
  label_of = lambda z: labels(ask((center + half * z)[None]), "active_linear")[0]
  x_check = box.sample(rng, cfg.checks)
  y_check = labels(ask(x_check), "active_linear")
  radius, iterations = cfg.radius, 0
  for attempt in range(cfg.attempts):
    with threadpool_limits(1):  # d x d eigendecompositions: threads only add overhead (10x on 2 cores)
      theta, its = _ellipsoid_search(label_of, theta0, basis, radius, cfg)
    iterations += its
    w, b = theta[:d] / half, theta[d] - center @ theta[:d] / half
    if np.all((x_check @ w + b > 0) == (y_check == 1)):
      norm = np.linalg.norm(w)
      return Halfspace(
        w / norm,
        b / norm,
        ask.queries,
        dict(witness_queries=witnesses, iterations=iterations, attempts=attempt + 1, radius=radius),
      )
    radius *= 1e3
  raise ExtractionError(
    f"active_linear: the learned classifier disagrees with the answers at random box points "
    f"after {cfg.attempts} radii (last {radius / 1e3:g}); is the victim linear?"
  )
