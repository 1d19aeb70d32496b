"""Precision improvement: every weight of a recovered network refined at once from the oracle's answers.

Once the whole network passes the final check (logits right to ~1e-8 relative), a point whose pre-activations are
all clearly away from 0 has the same activation pattern in the victim and in the recovered network. There the logits
are a polynomial of the weights (linear in each layer's) with a Jacobian known from the recovered network, so
Gauss-Newton on the answers at fresh points converges in one to three steps to near the precision of float64: on
the CME-trained 40-20-10-10-1 whose peeling left 3.1e-8 in its third layer (weights read from Jacobian jumps at the
few points where a rarely active feature was on) to 2.8e-15 (attack seed 2, benchmarks/results/fe_deep_40_seeds.md),
on random nets from ~1e-11 to ~1e-15 (fe_deep.md), for ~5 P / m queries (P parameters, m outputs). Where the
layer-by-layer recovery reads each unit from its own critical points, this step uses every answer for every weight
(CME 2020 refine each unit's critical points instead).

Each step is a maximum a posteriori estimate: answers with their expected rounding as noise (`answer_noise`), and a
Gaussian prior on each parameter's change of `PolishConfig.prior` times its unit's weight norm. Weights the
answers determine well move to the answers' precision; weights they barely see (a unit active on 0.15% of the
domain, a feature on at one of its points) stay where the peeling put them instead of absorbing the rounding
divided by a tiny feature (without the prior: 1.4e-9 -> 4.5e-8 on random 20-10-10-1 seed 0). The system is solved
matrix-free (scipy's LSQR, block-Jacobi-preconditioned: one block per unit), so networks with tens of thousands of
weights fit in memory.
Each hidden unit's positive scale, which the answers do not fix, is held (`keep_scales`). A step is kept only if it
divides the root-mean-square relative error on held-out points, drawn apart from the fit's, by `gain` without
raising their largest; otherwise the network comes back as it was. Float64 numpy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsqr

from functional_equivalence.deep import network


@dataclasses.dataclass(frozen=True)
class PolishConfig:
  """points_per_parameter: fit points per parameter and output (rows of the least squares per unknown);
  held_out: fraction of that many points drawn apart to accept or refuse each step; margin: a point is used only
  if every pre-activation is above margin times its scale (|h| |w| + |b|), so its pattern is the victim's;
  steps: most Gauss-Newton steps; gain: a step is kept only if it divides the held-out error's root mean square by
  at least this, and its max does not grow;
  max_iterations, tolerance: LSQR's iteration limit and stopping tolerance (atol and btol) a step; prior: the
  standard deviation of a parameter's change, relative to its unit's weight norm."""

  points_per_parameter: float = 4.0
  held_out: float = 0.25
  margin: float = 1e-6
  steps: int = 3
  gain: float = 2.0
  max_iterations: int = 4000
  tolerance: float = 1e-12
  prior: float = 1e-10


def flat(net: network.DeepNet) -> np.ndarray:
  """Every weight and bias of `net` in one vector (w0, b0, w1, b1, ...)."""
  return np.concatenate([a.ravel() for w, b in zip(net.weights, net.biases) for a in (w, b)])


def unflat(like: network.DeepNet, theta: np.ndarray) -> network.DeepNet:
  """The network of `like`'s shape holding the parameter vector `theta` (inverse of `flat`)."""
  ws, bs, i = [], [], 0
  for w, b in zip(like.weights, like.biases):
    ws.append(theta[i : i + w.size].reshape(w.shape))
    i += w.size
    bs.append(theta[i : i + b.size])
    i += b.size
  return network.DeepNet(tuple(ws), tuple(bs))


def clear_of_surfaces(net: network.DeepNet, x: np.ndarray, margin: float) -> np.ndarray:
  """Mask of the points whose every hidden pre-activation is above `margin` times its scale |h| |w_j| + |b_j|."""
  keep, h = np.ones(len(x), bool), x
  for w, b in zip(net.weights[:-1], net.biases[:-1]):
    p = h @ w + b
    size = np.linalg.norm(h, axis=1, keepdims=True) * np.linalg.norm(w, axis=0) + np.abs(b)
    keep &= np.all(np.abs(p) > margin * size, axis=1)
    h = np.maximum(p, 0)
  return keep


def _backprop(net: network.DeepNet, x: np.ndarray, differences: bool):
  """The features entering every layer (hs[l] (n, n_in)), the derivative of the outputs with respect to every
  layer's pre-activations (grads[l] (n, m, n_out), the output layer's the identity) and the outputs, at the points'
  own activation patterns; with `differences` the outputs are the logits minus class 0's."""
  hs, masks, h = [x], [], x
  for w, b in zip(net.weights[:-1], net.biases[:-1]):
    p = h @ w + b
    masks.append(p > 0)
    h = np.maximum(p, 0)
    hs.append(h)
  y = h @ net.weights[-1] + net.biases[-1]
  eye = np.eye(y.shape[1])
  if differences:
    y, eye = y[:, 1:] - y[:, :1], eye[1:] - eye[:1]
  grads = [np.broadcast_to(eye, (len(x),) + eye.shape)]
  for layer in range(net.depth, 0, -1):
    grads.insert(0, np.einsum("nkj,ij->nki", grads[0], net.weights[layer]) * masks[layer - 1][:, None, :])
  return hs, grads, y


def _inverse_factors(normal: np.ndarray) -> np.ndarray:
  """Per block of `normal` (b, k, k), each S + I with S positive semidefinite, a matrix M with M^T N M = I: the
  inverse transposed Cholesky factor L^-T, or, where rounding has left a block not positive definite (entries near
  1e16 beside the damping's 1: a unit's features at points far out, several of them never on, random 10-8-6-1 seed
  3 with a second-layer unit on at 0.03% of the ball), V diag(lam^-1/2) from its eigendecomposition with the
  eigenvalues clipped at 1, the floor the damping sets."""
  try:
    return np.linalg.inv(np.swapaxes(np.linalg.cholesky(normal), 1, 2))
  except np.linalg.LinAlgError:
    lam, v = np.linalg.eigh(normal)
    return v / np.sqrt(np.maximum(lam, 1.0))[:, None, :]


def jacobian_operator(net: network.DeepNet, hs, grads, rows: np.ndarray, cols: np.ndarray, block: int = 257):
  """The damped, preconditioned system of one step as a matrix-free operator: [A; I] P, with A = diag(1 / rows) J
  diag(cols) (J the Jacobian of the outputs, rows point-major and output-minor, with respect to `flat(net)`; rows (n, m)
  the answers' noise, cols the parameters' prior scales) and P block-Jacobi: for each unit (its incoming weights and
  bias) of a layer with at most `block` of them, the inverse transposed Cholesky factor of that block of [A; I]'s normal
  matrix (`_inverse_factors`); for a wider layer (784 inputs) the inverse norms of its columns. A unit active at few
  points sees features that are nearly collinear there, which column scaling leaves ill-conditioned: on digits
  64-64-64-10 one step of 4,000 (even 20,000) LSQR iterations left a second-layer unit active on 0.03% of the domain at
  2e-9 where its own block was full rank. Without any preconditioning one step on 784-32-32-10 ran over 5 minutes
  unfinished. Returns the operator, the map from LSQR's solution to the step (times cols) and the mask of the parameters
  the answers depend on at these points (a nonzero column of J)."""
  n, m = grads[0].shape[:2]
  shapes = [w.shape for w in net.weights]
  cuts = np.cumsum([s for shape in shapes for s in (shape[0] * shape[1], shape[1])])[:-1]
  col_parts = np.split(cols, cuts)
  norms: list[np.ndarray] = []  # squared column norms of diag(1 / rows) J
  factors: list[np.ndarray | None] = []  # per layer P's blocks (n_out, k, k), or None: the diagonal
  for layer, (h, g) in enumerate(zip(hs, grads)):
    g2 = np.einsum("nkj,nk->nj", g**2, 1 / rows**2)
    norms += [np.einsum("ni,nj->ij", h**2, g2).ravel(), np.sum(g2, axis=0)]
    if h.shape[1] + 1 > block:
      factors.append(None)
      continue
    hx = np.concatenate([h, np.ones((n, 1))], axis=1)
    scale = col_parts[2 * layer + 1]  # the prior scale, shared by a unit's weights and bias
    normal = np.stack([(hx * g2[:, j : j + 1]).T @ hx for j in range(g2.shape[1])])
    normal = normal * scale[:, None, None] ** 2 + np.eye(hx.shape[1])
    factors.append(_inverse_factors(normal))
  diagonal = 1 / np.sqrt(np.concatenate(norms) * cols**2 + 1)

  def apply(z, transpose: bool):
    """P z (or P^T z) on a parameter vector."""
    parts, raw = np.split(z * diagonal, cuts), np.split(z, cuts)
    for layer, inv in enumerate(factors):
      if inv is None:
        continue
      w, b = raw[2 * layer].reshape(shapes[layer]), raw[2 * layer + 1]
      blocks = np.concatenate([w, b[None]]).T  # (n_out, n_in + 1)
      out = np.einsum("jba,jb->ja" if transpose else "jab,jb->ja", inv, blocks).T
      parts[2 * layer], parts[2 * layer + 1] = out[:-1].ravel(), out[-1]
    return np.concatenate(parts)

  def matvec(v):
    z = apply(np.ravel(v), False)
    parts = np.split(z * cols, cuts)
    out = np.zeros((n, m))
    for layer, (h, g) in enumerate(zip(hs, grads)):
      dp = h @ parts[2 * layer].reshape(shapes[layer]) + parts[2 * layer + 1]
      out += np.einsum("nkj,nj->nk", g, dp)
    return np.concatenate([(out / rows).ravel(), z])

  def rmatvec(r):
    r = np.ravel(r)
    data = np.reshape(r[: n * m], (n, m)) / rows
    out = []
    for h, g in zip(hs, grads):
      rg = np.einsum("nk,nkj->nj", data, g)
      out += [(h.T @ rg).ravel(), rg.sum(axis=0)]
    return apply(np.concatenate(out) * cols + r[n * m :], True)

  op = LinearOperator((n * m + len(cols), len(cols)), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
  return op, lambda solution: apply(solution, False), np.concatenate(norms) > 0


def prior_scale(net: network.DeepNet, tau: float) -> np.ndarray:
  """Per parameter of `flat(net)`: tau times the norm of its unit's incoming weights and bias (the same for every
  parameter of a unit; the output layer's per output)."""
  out = []
  for w, b in zip(net.weights, net.biases):
    size = tau * np.sqrt(np.sum(w**2, axis=0) + b**2)
    out += [np.broadcast_to(size, w.shape).ravel(), size]
  return np.concatenate(out)


def answer_noise(net: network.DeepNet, hs, differences: bool) -> np.ndarray:
  """(n, m): the rounding expected in each answer, 4 eps times 1 plus the sum of the magnitudes of the terms it adds
  up (the last layer's |h_j w_jk| and |b_k|): a trained net's logit can be a small sum of large terms; the 1 for
  the log of a probability."""
  w, b = net.weights[-1], net.biases[-1]
  terms = np.abs(hs[-1]) @ np.abs(w) + np.abs(b)
  if differences:
    terms = terms[:, 1:] + terms[:, :1]
  return 4 * np.finfo(float).eps * (terms + 1.0)


def keep_scales(net: network.DeepNet, step: np.ndarray, seen: np.ndarray) -> np.ndarray:
  """The step moved along the network's scale symmetries so that no hidden unit's incoming weights change norm
  (to first order). The answers fix the product of a unit's incoming and outgoing scales, not each; the least
  norm step shares a change between them, and a weight the points never reach (a unit never active there) would
  keep the old scale while its neighbours take the new one, an inconsistency of the size of that drift. Along a
  symmetry the answers do not change, so this is a solution as good as `step`, one whose scales are the old
  ones. Only `seen` parameters take the outgoing compensation (the others are not part of the solved system)."""
  parts = unflat(net, step)
  seen_parts = unflat(net, seen.astype(float))
  ws, bs = [np.array(w) for w in parts.weights], [np.array(b) for b in parts.biases]
  for layer in range(net.depth):
    w, b = net.weights[layer], net.biases[layer]
    alpha = (np.sum(ws[layer] * w, axis=0) + bs[layer] * b) / (np.sum(w**2, axis=0) + b**2 + 1e-300)
    ws[layer] = ws[layer] - alpha * w
    bs[layer] = bs[layer] - alpha * b
    ws[layer + 1] = ws[layer + 1] + alpha[:, None] * net.weights[layer + 1] * seen_parts.weights[layer + 1]
  return flat(network.DeepNet(tuple(ws), tuple(bs)))


def relative_error(net: network.DeepNet, x: np.ndarray, g: np.ndarray, differences: bool) -> tuple[float, float]:
  """(max, root mean square) over the points of |outputs of net - g| / max |g|."""
  rel = np.abs(network.answers(net, x, differences) - g) / (np.max(np.abs(g)) + 1e-300)
  return float(np.max(rel)), float(np.sqrt(np.mean(rel**2)))


def around(points: np.ndarray, center: np.ndarray, scale: float, count: int, rng) -> np.ndarray:
  """`count` random points near each of `points`, at distances log-uniform in [1e-3, 1e-1] times
  (|point - center| + scale): a unit active on a small part of the domain is active at some of them."""
  if not len(points):
    return points
  x = np.repeat(points, count, axis=0)
  v = rng.normal(size=x.shape)
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  r = 10.0 ** rng.uniform(-3, -1, size=(len(x), 1)) * (np.linalg.norm(x - center, axis=1, keepdims=True) + scale)
  return x + r * v


def sample(dom, d: int, count: int, scale: float, rng) -> np.ndarray:
  """Half near the domain's center (scale N(0, I)), half over the domain."""
  near = count // 2
  return np.concatenate([dom.center(d) + scale * rng.normal(size=(near, d)), dom.check_points(rng, d, count - near)])


def polish(q, net: network.DeepNet, dom, scale: float, rng, differences: bool, extra=None, cfg=PolishConfig()):
  """Gauss-Newton refinement of every parameter of `net` on the oracle's answers (module docstring).

  Args:
    q: the Querier (stage "polish"); net: a recovered network that passed the final check; dom, scale: the
      attack's domain and scale; rng: numpy Generator; differences: the oracle answers logit differences to class
      0 (probabilities); extra: more fit points (e.g. beside every unit's surface), or None.
  Returns:
    (the refined network, or `net` if no step lowered the held-out error; stats: polish_steps kept, the held-out
    relative error before and after (polish_error_*: max, polish_rms_*: root mean square), polish_points used,
    polish_iterations of LSQR).
  """
  d, m = net.sizes[0], net.sizes[-1] - (1 if differences else 0)
  params = flat(net).size
  count = max(64, math.ceil(cfg.points_per_parameter * params / m))
  fit = sample(dom, d, count, scale, rng)
  if extra is not None and len(extra):
    fit = np.concatenate([fit, extra])
  held = sample(dom, d, max(64, math.ceil(cfg.held_out * count)), scale, rng)
  g_fit, g_held = q(fit, "polish", underflow_ok=True), q(held, "polish", underflow_ok=True)
  use = np.all(np.isfinite(g_fit), axis=1)
  held_use = np.all(np.isfinite(g_held), axis=1)
  best = net
  err = before = relative_error(net, held[held_use], g_held[held_use], differences)  # (max, rms)
  kept = iterations = 0
  for _ in range(cfg.steps):
    q.check("polish")
    mask = use & clear_of_surfaces(best, fit, cfg.margin)
    hs, grads, y = _backprop(best, fit[mask], differences)
    rows, cols = answer_noise(best, hs, differences), prior_scale(best, cfg.prior)
    op, unprecondition, seen = jacobian_operator(best, hs, grads, rows, cols)
    r = np.concatenate([((g_fit[mask] - y) / rows).ravel(), np.zeros(len(cols))])
    solved = lsqr(op, r, atol=cfg.tolerance, btol=cfg.tolerance, iter_lim=cfg.max_iterations)
    iterations += solved[2]
    step = cols * unprecondition(solved[0])
    trial = unflat(best, flat(best) + keep_scales(best, step, seen))
    if differences:  # class 0's column and bias back to 0 (the shift shared by all logits is not determined)
      w, b = trial.weights[-1], trial.biases[-1]
      trial = network.DeepNet(trial.weights[:-1] + (w - w[:, :1],), trial.biases[:-1] + (b - b[:1],))
    new = relative_error(trial, held[held_use], g_held[held_use], differences)
    # kept if the typical error drops by `gain` and the worst does not grow (a unit seen at few points, held by the
    # prior, can keep the worst held-out point where it was)
    if not (new[1] * cfg.gain <= err[1] and new[0] <= err[0]):
      break
    best, err, kept = trial, new, kept + 1
    if err[1] <= 8 * np.finfo(float).eps:  # at float64's rounding: another step would only cost time
      break
  return best, dict(
    polish_steps=kept,
    polish_error_before=before[0],
    polish_error_after=err[0],
    polish_rms_before=before[1],
    polish_rms_after=err[1],
    polish_points=int(len(fit) + len(held)),
    polish_iterations=int(iterations),
  )
