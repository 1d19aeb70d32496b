"""Milli, Schmidt, Dragan, Hardt 2019, "Model reconstruction from model explanations" (FAT*): a two-layer ReLU
network f(x) = relu(x @ w0 + b0) @ w1 + b1 from input gradients (the oracle's `gradients` mode).

The gradient of a two-layer ReLU network is piecewise constant, and it jumps by a rank-one matrix a_i w_i^T (the
unit's output weights times its row) where a line crosses unit i's hyperplane w_i . x + b_i = 0. The attack:
  1. a random line p + t u through a random point of the box, t in [-reach, reach] box widths;
  2. bisection on gradient changes: every bracket whose two ends have different gradients is halved until it is
     narrower than epsilon box widths (one query per open bracket per level, all brackets batched): a query count
     of about h log2(reach / epsilon), independent of the input dimension d (each answer holds d numbers);
  3. per bracket, the jump G_b - G_a = alpha n^T (checked rank one) gives the unit's direction n and output
     weights alpha = a_i |w_i| (orientation-free); the kink is placed exactly where the two linear pieces of the
     answered logits meet (the API returns the logit beside its gradient), which makes the biases exact to
     rounding rather than to epsilon;
  4. which side of each hyperplane is active is not visible in the jumps (alpha relu(z) and alpha relu(-z) differ
     by a linear function): the gradient at a box point decides it, as the 0/1 solution of a linear system over
     the units' jumps (unique when the h jumps are independent, e.g. h <= k d; otherwise every 0/1 solution gives
     the same function, and one is taken); what no found unit explains (units whose hyperplanes miss the searched
     segment of the line, or no 0/1 solution) is a linear term, written as pairs of units relu(v.x) - relu(-v.x);
  5. b1 from the logit at p; then the recovered network's gradients and logits are checked at `checks` random
     box points, and another line is searched (units merged) while they disagree, up to `lines` lines.
Precision: float64. Units whose jump is below `tolerance` relative to the gradient are not seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from functional_equivalence.errors import ExtractionError
from functional_equivalence.simple_models.common import Asker, Box, UnsupportedAnswersError
from functional_equivalence.victims import TwoLayerNet


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the gradient attack (see module docstring)."""

  epsilon: float = 1e-10
  reach: float = 1e6
  lines: int = 4
  checks: int = 8
  tolerance: float = 1e-9


@dataclasses.dataclass
class Result:
  net: TwoLayerNet
  queries: int
  stats: dict


def _split(answers: np.ndarray, d: int):
  if answers.ndim != 3 or answers.shape[2] != d + 1:
    raise UnsupportedAnswersError(
      f"gradient recovery needs the oracle's 'gradients' answers (N, k, d + 1) with d = {d}, got shape {answers.shape}"
    )
  return answers[:, :, :d], answers[:, :, d]


def _differ(ga: np.ndarray, gb: np.ndarray, tol: float) -> np.ndarray:
  scale = np.maximum(np.abs(ga).max(axis=(1, 2)), np.abs(gb).max(axis=(1, 2)))
  return np.abs(ga - gb).max(axis=(1, 2)) > tol * np.maximum(scale, 1e-300)


def _kinks_on_line(ask, box: Box, p, u, cfg: Config):
  """Units (n, offset, alpha) whose hyperplanes cross the line p + t u within the reach; None if two kinks could
  not be told apart (closer than epsilon)."""
  d, reach, eps = box.dim, cfg.reach * box.width, cfg.epsilon * box.width
  t = np.array([-reach, 0.0, reach])
  g, f = _split(ask(p + t[:, None] * u), d)
  a, b, ga, gb, fa, fb = t[:2], t[1:], g[:2], g[1:], f[:2], f[1:]  # brackets, their ends' gradients, logits
  units = []
  while len(a):
    keep = _differ(ga, gb, cfg.tolerance)
    narrow, wide = keep & (b - a <= eps), keep & (b - a > eps)
    for i in np.flatnonzero(narrow):
      jump = gb[i] - ga[i]  # (k, d) = alpha n^T
      _, s, vt = np.linalg.svd(jump, full_matrices=False)
      if len(s) > 1 and s[1] > 1e-6 * s[0]:
        return None
      n = vt[0] * np.sign(vt[0] @ u)
      alpha = jump @ n
      sa, sb = ga[i] @ u, gb[i] @ u  # slopes of the logits along the line
      j = np.argmax(np.abs(sb - sa))
      tk = np.clip((fb[i, j] - fa[i, j] + sa[j] * a[i] - sb[j] * b[i]) / (sa[j] - sb[j]), a[i], b[i])
      units.append((n, -n @ (p + tk * u), alpha))
    a, b, ga, gb, fa, fb = (v[wide] for v in (a, b, ga, gb, fa, fb))
    if not len(a):
      break
    m = 0.5 * (a + b)
    gm, fm = _split(ask(p + m[:, None] * u), d)
    a, b = np.concatenate([a, m]), np.concatenate([m, b])
    ga, gb = np.concatenate([ga, gm]), np.concatenate([gm, gb])
    fa, fb = np.concatenate([fa, fm]), np.concatenate([fm, fb])
  return units


def _canonical(n, offset):
  s = np.sign(n[np.argmax(np.abs(n))])
  return n * s, offset * s


def _merge(units, new, tol=1e-7):
  for n, off, alpha in new:
    n, off = _canonical(n, off)
    if not any(abs(n @ m - 1) < tol and abs(off - o) <= tol * (1 + abs(o)) for m, o, _ in units):
      units.append((n, off, alpha))
  return units


def _flips(cols: np.ndarray, target: np.ndarray, max_free: int = 12):
  """beta in {0, 1}^h with cols @ beta = target, or None. When the units' jumps are linearly dependent (h > k d)
  the solutions form beta_p + null(cols) z: the free coordinates are enumerated (at most 2^max_free); every
  0/1 solution gives the same function (flips change the gradient by the same constant everywhere)."""
  beta = np.linalg.lstsq(cols, target, rcond=None)[0]
  ok = lambda b: np.abs(b - np.round(b)).max() <= 1e-6 and np.all(np.isin(np.round(b), (0, 1)))
  if ok(beta):
    return np.round(beta) == 1
  _, s, vt = np.linalg.svd(cols)
  rank = int(np.sum(s > 1e-10 * s[0]))
  null = vt[rank:].T  # (h, q)
  q = null.shape[1]
  if not 0 < q <= max_free:
    return None
  rows = _independent_rows(null)
  for bits in range(2**q):
    want = np.array([(bits >> i) & 1 for i in range(q)], np.float64)
    z = np.linalg.solve(null[rows], want - beta[rows])
    cand = beta + null @ z
    if ok(cand) and np.abs(cols @ np.round(cand) - target).max() <= 1e-8 * max(np.abs(target).max(), 1.0):
      return np.round(cand) == 1
  return None


def _independent_rows(a: np.ndarray) -> np.ndarray:
  """Indices of a.shape[1] linearly independent rows of a (greedy)."""
  rows: list[int] = []
  basis = np.zeros((0, a.shape[1]))
  for i in range(len(a)):
    trial = np.vstack([basis, a[i]])
    if np.linalg.matrix_rank(trial, tol=1e-9) > len(basis):
      rows, basis = rows + [i], trial
    if len(rows) == a.shape[1]:
      break
  return np.array(rows)


def _assemble(units, d, k, x0, g0, f0, tol):
  """The network of the found units with each unit's active side chosen to fit the gradient g0 at x0, a linear
  term (pairs of units) for what they do not explain, and b1 from the logits f0 at x0."""
  if units:
    n = np.stack([u[0] for u in units], axis=1)  # (d, h)
    off = np.array([u[1] for u in units])
    alpha = np.stack([u[2] for u in units])  # (h, k)
  else:
    n, off, alpha = np.zeros((d, 0)), np.zeros(0), np.zeros((0, k))
  on = (x0 @ n + off > 0).astype(np.float64)
  residual = (alpha * on[:, None]).T @ n.T - g0  # (k, d): sum of alpha_i n_i^T over flips
  cols = (
    np.stack([np.outer(alpha[i], n[:, i]).ravel() for i in range(len(off))], axis=1)
    if len(off)
    else np.zeros((k * d, 0))
  )
  flip = _flips(cols, residual.ravel()) if len(off) else np.zeros(0, bool)
  if flip is None:
    flip = np.zeros(len(off), bool)  # undecidable: all into the linear term
  sign = np.where(flip, -1.0, 1.0)
  w0, b0, w1 = n * sign, off * sign, alpha
  lin = g0 - (w1 * (x0 @ w0 + b0 > 0)[:, None]).T @ w0.T  # (k, d) not explained by the units
  extra = 0
  if np.abs(lin).max() > tol * max(np.abs(g0).max(), 1e-300):
    uu, s, vt = np.linalg.svd(lin, full_matrices=False)
    r = int(np.sum(s > 1e-12 * s[0]))
    v, out = vt[:r].T, (uu[:, :r] * s[:r]).T  # lin = out^T v^T
    w0 = np.concatenate([w0, v, -v], axis=1)
    b0 = np.concatenate([b0, np.zeros(2 * r)])
    w1 = np.concatenate([w1, out, -out])
    extra = 2 * r
  b1 = f0 - np.maximum(x0 @ w0 + b0, 0) @ w1
  return TwoLayerNet(w0, b0, w1, b1), extra


def _agrees(net: TwoLayerNet, x, g, f, tol) -> bool:
  pre = x @ net.w0 + net.b0
  g_hat = np.einsum("nhk,dh->nkd", (pre > 0)[:, :, None] * net.w1, net.w0, optimize=True)
  f_hat = np.maximum(pre, 0) @ net.w1 + net.b1
  return bool(
    np.abs(g_hat - g).max() <= tol * max(np.abs(g).max(), 1e-300) * 10
    and np.abs(f_hat - f).max() <= 1e-6 * max(np.abs(f).max(), 1.0)
  )


def extract(oracle, box: Box, cfg: Config = Config(), rng: np.random.Generator | None = None) -> Result:
  """Recovers a two-layer ReLU network from its input gradients (see module docstring)."""
  rng = rng if rng is not None else np.random.default_rng(0)
  ask = Asker(oracle)
  d = box.dim
  x_check = box.sample(rng, cfg.checks)
  g_check, f_check = _split(ask(x_check), d)
  k = g_check.shape[1]
  units: list = []
  lines, failed = 0, 0
  for _ in range(cfg.lines):
    p = box.sample(rng, 1)[0]
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    found = _kinks_on_line(ask, box, p, u, cfg)
    lines += 1
    if found is None:
      failed += 1
      continue
    units = _merge(units, found)
    net, extra = _assemble(units, d, k, x_check[0], g_check[0], f_check[0], cfg.tolerance)
    if _agrees(net, x_check, g_check, f_check, cfg.tolerance):
      return Result(net, ask.queries, dict(lines=lines, units=len(units), linear_units=extra, failed_lines=failed))
  raise ExtractionError(
    f"gradient recovery: after {lines} lines ({failed} with kinks closer than epsilon) the "
    f"recovered network still disagrees with the answers at random box points; raise --epsilon "
    f"precision or the reach, or the victim is not a two-layer ReLU network"
  )
