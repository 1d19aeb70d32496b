"""Tramer, Zhang, Juels, Reiter, Ristenpart 2016, "Stealing machine learning models via prediction APIs" (USENIX
Security), Sec. 4.1: equation-solving attacks, and retraining when the API answers labels only.

* `solve_logistic`: logistic regression from probabilities. Each answer p(x) gives k - 1 equations linear in the
  parameters, log p_i(x) - log p_0(x) = (w_i - w_0) . x + (b_i - b_0); d + 1 random points of the box give a
  square system in the (d + 1)(k - 1) identifiable unknowns (binary: d + 1 unknowns, d + 1 queries). Solved in
  float64 in box-normalised coordinates; exact up to the conditioning of the random points (about 1e-13
  relative on the scikit-learn datasets). A multinomial model is defined up to a common shift of every class's
  parameters: it is returned centred (sum over classes 0), as scikit-learn fits it. Answers that are exactly 0
  or 1 (a logit beyond float64 range) carry no equation: those points are redrawn nearer the least saturated
  point (more queries).
* `fit_two_layer`: a two-layer ReLU network (the MLP of Tramer et al., whose architecture the attacker is assumed
  to know) by minimising the cross-entropy to the answered probabilities over random box points with L-BFGS.
  Not exact: a fit of a non-convex model; its fidelity is a result.
* `retrain`: Tramer's uniform retraining, for a labels-only API: label random points of the box and fit a
  logistic regression (scikit-learn) to them; its fidelity is a result.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from functional_equivalence.simple_models.common import Asker, Box, UnsupportedAnswersError


@dataclasses.dataclass
class LinearResult:
  """coef (1, d) binary or (k, d), intercept (1,) or (k,): scikit-learn's convention; queries: inputs asked."""

  coef: np.ndarray
  intercept: np.ndarray
  queries: int
  stats: dict


def _probabilities(answers: np.ndarray, attack: str) -> np.ndarray:
  if answers.ndim != 2 or answers.shape[1] < 2:
    raise UnsupportedAnswersError(
      f"{attack} needs class probabilities of at least 2 classes, got answers of shape {answers.shape}"
    )
  if np.all(np.isin(answers, (0.0, 1.0))):
    raise UnsupportedAnswersError(
      f"{attack} needs probabilities but every answer is 0 or 1 (a labels API, or "
      f"probabilities saturated on all {len(answers)} points asked); use retraining "
      f"(labels) or lowd_meek"
    )
  return answers


def solve_logistic(oracle, box: Box, rng: np.random.Generator | None = None, redraws: int = 8) -> LinearResult:
  """Logistic regression (binary or multinomial) from d + 1 probability queries (see module docstring)."""
  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  n = box.dim + 1
  x = box.sample(rng, n)
  p = _probabilities(ask(x), "equation_solving")
  for r in range(redraws):  # saturated answers: redraw them nearer the least saturated point, halving the radius
    bad = ~np.all((p > 0) & (p < 1) & np.isfinite(p), axis=1)
    if not bad.any():
      break
    best = x[np.argmax(np.where(np.isfinite(p), p, 0).min(axis=1))]
    radius = 0.5 ** (r + 1) * box.width
    x[bad] = np.clip(best + rng.uniform(-radius, radius, size=(int(bad.sum()), box.dim)), box.low, box.high)
    p[bad] = _probabilities(ask(x[bad]), "equation_solving")
  if not np.all((p > 0) & (p < 1)):
    raise UnsupportedAnswersError(
      f"equation_solving: probabilities stay exactly 0 or 1 after {redraws} redraws "
      f"(logits beyond float64 range on the box)"
    )
  z = np.log(p[:, 1:]) - np.log(p[:, :1])  # (n, k - 1) logit differences
  half = 0.5 * box.width
  a = np.concatenate([(x - box.center) / half, np.ones((n, 1))], axis=1)  # normalised coordinates + bias column
  theta = np.linalg.solve(a, z)  # (d + 1, k - 1)
  w = theta[:-1] / half  # (d, k - 1)
  b = theta[-1] - box.center @ w
  if p.shape[1] == 2:
    coef, intercept = w.T, b
  else:
    coef = np.concatenate([np.zeros((1, box.dim)), w.T])
    intercept = np.concatenate([[0.0], b])
    coef, intercept = coef - coef.mean(axis=0), intercept - intercept.mean()
  return LinearResult(
    coef,
    intercept,
    ask.queries,
    dict(condition_number=float(np.linalg.cond(a)), classes=int(p.shape[1]), redrawn=ask.queries - n),
  )


def retrain(oracle, box: Box, queries: int, rng: np.random.Generator | None = None) -> LinearResult:
  """Uniform retraining (labels API): a logistic regression fitted to the labels of `queries` random box points."""
  from sklearn.linear_model import LogisticRegression

  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  x = box.sample(rng, queries)
  answers = ask(x)
  if answers.ndim != 2 or answers.shape[1] < 2:
    raise UnsupportedAnswersError(f"retraining needs class answers (N, k), got shape {answers.shape}")
  y = answers.argmax(axis=1)
  seen = np.unique(y)
  if len(seen) < 2:
    raise UnsupportedAnswersError(
      f"retraining: all {queries} random points of the box got class {seen[0]}; nothing to learn a boundary from"
    )
  model = LogisticRegression(C=1e3, max_iter=5000).fit(x, y)
  k = answers.shape[1]
  if k == 2:
    return LinearResult(model.coef_, model.intercept_, ask.queries, dict(classes_seen=len(seen)))
  coef, intercept = np.zeros((k, box.dim)), np.full(k, -1e3)  # classes never seen get a large negative score
  coef[seen], intercept[seen] = (
    (model.coef_, model.intercept_)
    if len(seen) > 2
    else (np.concatenate([-model.coef_, model.coef_]) / 2, np.concatenate([-model.intercept_, model.intercept_]) / 2)
  )
  return LinearResult(coef, intercept, ask.queries, dict(classes_seen=len(seen)))


def mlp_unknowns(d: int, hidden: int, k: int) -> int:
  """Parameters of a d-hidden-k two-layer network (Tramer et al.'s count of unknowns)."""
  return hidden * (d + 1) + k * (hidden + 1)


def fit_two_layer(
  oracle, box: Box, hidden: int, queries: int, rng: np.random.Generator | None = None, max_iter: int = 3000
):
  """A d-hidden-k ReLU network fitted to the probabilities of `queries` random box points (L-BFGS, float64).

  Returns (TwoLayerNet, queries asked, stats with the final cross-entropy gap)."""
  import jax
  import jax.numpy as jnp
  from scipy.optimize import minimize

  from functional_equivalence.victims import TwoLayerNet

  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  x = box.sample(rng, queries)
  p = _probabilities(ask(x), "equation_solving (two-layer fit)")
  d, k = box.dim, p.shape[1]
  half = 0.5 * box.width
  xn = (x - box.center) / half
  shapes = [(d, hidden), (hidden,), (hidden, k), (k,)]
  sizes = [math.prod(s) for s in shapes]
  with jax.enable_x64(True):
    xs, ps = jnp.asarray(xn), jnp.asarray(p)
    entropy = float(-jnp.sum(jnp.where(ps > 0, ps * jnp.log(jnp.where(ps > 0, ps, 1.0)), 0.0)) / len(p))

    def unpack(v):
      out, i = [], 0
      for s, n in zip(shapes, sizes):
        out.append(v[i : i + n].reshape(s))
        i += n
      return out

    @jax.jit
    def loss_and_grad(v):
      def loss(v):
        w0, b0, w1, b1 = unpack(v)
        logits = jax.nn.relu(xs @ w0 + b0) @ w1 + b1
        return -jnp.sum(ps * jax.nn.log_softmax(logits)) / len(p)

      return jax.value_and_grad(loss)(v)

    v0 = np.concatenate(
      [
        rng.normal(size=d * hidden) * np.sqrt(2.0 / d),
        np.zeros(hidden),
        rng.normal(size=hidden * k) / np.sqrt(hidden),
        np.zeros(k),
      ]
    )
    fun = lambda v: tuple(np.asarray(a, np.float64) for a in loss_and_grad(jnp.asarray(v)))
    opt = minimize(fun, v0, jac=True, method="L-BFGS-B", options=dict(maxiter=max_iter, maxfun=2 * max_iter))
  w0, b0, w1, b1 = (np.asarray(a) for a in unpack(opt.x))
  net = TwoLayerNet(w0 / half, b0 - (box.center / half) @ w0, w1, b1)  # back to the box's coordinates
  return net, ask.queries, dict(kl_gap=float(opt.fun - entropy), iterations=int(opt.nit))
