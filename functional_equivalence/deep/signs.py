"""Signs of a recovered layer, in polynomial time, and the last layer by least squares.

A unit is recovered up to orientation: p_hat = s p with s = +-1 unknown (relu(p) and relu(-p) differ).

* The last hidden layer (`last_layer`): g(x) = sum_j v_j relu(s_j p_hat_j(x)) + b, and relu(-z) = relu(z) - z, so
  g = sum_j [a_j relu(p_hat_j) + e_j p_hat_j] + b with a_j = v_j and e_j = 0 (s_j = +1) or -v_j (s_j = -1):
  linear least squares on the features [relu(p_hat), p_hat, 1] at sampled points. For a deep network p_hat_j are
  piecewise linear functions of x and these features are independent even when the layer is wider than the
  input (not so for a two-layer network, where p_hat is affine in x: there the scalar flips of
  second_layer.flip_signs are used, with the measured output jumps c_j). A residual ~0 also says that this layer
  is the last hidden one; e_j neither 0 nor -a_j is a pair of units on one hyperplane (c relu(z) + q relu(-z)).
* A hidden layer followed by more layers (`hidden_signs`): at a point x on unit j's surface, a direction delta
  that changes p_hat_j by 1 and leaves every other unit l that may be active unchanged (delta . grad p_hat_l = 0)
  changes g only on the side where unit j is truly active: g(x + s delta) - g(x) is exactly 0 (to rounding) on
  the inactive side and not on the other, which gives s_j (3 queries; the "system of equations" idea of
  Canales-Martinez et al. 2024 for contractive layers). Such a delta exists while the constraints number less
  than the rank of d p_hat / dx at x (the layer is contractive there); units whose sign is already known and that
  are inactive at x need no constraint, so decided units make more points exact (bootstrap). Where no exact
  delta exists the test falls back to the neuron wiggle (ibid.): the least-squares delta concentrates the change
  on unit j, and the side with the larger change of g is taken as the active one, a statistical vote.
* Units left to votes (an expanding layer, wider than the rank its prefix leaves): on the first layer, the sparse
  live sets of g's gradient (support.py) decide the units they contain; then, on any layer, exact tests whose
  direction keeps still only the units *guessed* active (`_exact_by_guesses`): a verdict is sound whatever the
  guesses (a wrong one makes both sides move: no verdict), and decided units sharpen the next guesses.
Float64 numpy; every query through the Querier.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from functional_equivalence import second_layer
from functional_equivalence.deep import network, regions, support
from functional_equivalence.deep.layer import Unit, covered, near_anchors, surface_points
from functional_equivalence.errors import SignRecoveryError

EPS = np.finfo(np.float64).eps


def _lstsq(phi, y, cond=1e-12):
  """Column-normalised least squares (LAPACK gelsy): (solution, rank)."""
  norms = np.linalg.norm(phi, axis=0) + 1e-300
  sol, _, rank, _ = scipy.linalg.lstsq(phi / norms, y, cond=cond, lapack_driver="gelsy")
  return sol / (norms[:, None] if sol.ndim == 2 else norms), rank


def layer_arrays(units: list):
  """(W (n_in, n) with the units' w as columns, b (n,))."""
  return np.stack([u.w for u in units], axis=1), np.array([u.b for u in units])


def sample_points(
  prefix, units: list, count: int, scale: float, center, rng, dom=None, domain_count: int = 256
) -> np.ndarray:
  """Points on both sides of every unit's surface (its precise points moved along the surface normal by
  +-scale/16, alternately), `count` around the center and (given the domain) `domain_count` over the domain, for the
  least-squares fits: a unit active only in a small part of the domain leaves a residual only where it is."""
  d = len(center)
  pts = []
  for _j, u in enumerate(units):
    if not u.points:
      continue
    p = np.array(u.points)
    f = network.features(prefix, p)
    nrm = np.einsum("ndk,k->nd", f.jac, u.w)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-300
    step = 0.0625 * scale * rng.uniform(0.5, 1.5, size=len(p))
    side = np.where(np.arange(len(p)) % 2 == 0, 1.0, -1.0)
    pts.append(p + (side * step)[:, None] * nrm)
  pts.append(center + scale * rng.normal(size=(count, d)))
  if dom is not None:
    pts.append(dom.check_points(rng, d, domain_count))
  return np.concatenate(pts)


@dataclasses.dataclass
class LastLayer:
  """Signs s (n,), pair flags (n,) (a twin relu(-p_hat) with its own output weights), the output weights of the
  units (n, m) and of the twins (n_pairs, m), the output bias (m,), the relative residual of the fit and the
  points where the fit is off by more than rtol, worst first (on the active side of a missed unit, if the layer
  is the last hidden one); remainder_w (n_in, r) and remainder_out (r, m) where the fit has a linear remainder of
  the layer's input features h (`_with_remainder`): h L = (h remainder_w) remainder_out, built as pairs
  relu(u) - relu(-u)."""

  signs: np.ndarray
  pairs: np.ndarray
  w_out: np.ndarray
  w_twin: np.ndarray
  b_out: np.ndarray
  residual: float
  rank_deficient: bool = False
  misfit_points: np.ndarray | None = None
  remainder_w: np.ndarray | None = None
  remainder_out: np.ndarray | None = None

  @property
  def has_remainder(self) -> bool:
    return self.remainder_w is not None and self.remainder_w.shape[1] > 0

  def w_twin_full(self) -> np.ndarray:
    """The twins' output weights on the units' rows (n, m): 0 for a unit without a twin."""
    full = np.zeros_like(self.w_out)
    full[self.pairs] = self.w_twin
    return full


def last_layer(
  q, prefix, units: list, scale: float, center, rng, stats, rtol: float = 1e-8, tol: float = 1e-6, dom=None
) -> LastLayer:
  """Module docstring, first item: the fit, then the classification of each unit and a clean refit."""
  n = len(units)
  x, g = _answers(q, sample_points(prefix, units, max(16, 2 * n + 16), scale, center, rng, dom), stats)
  w, b = layer_arrays(units)
  h = network.features(prefix, x).h
  z = h @ w + b
  phi = np.concatenate([np.maximum(z, 0), z, np.ones((len(z), 1))], axis=1)
  sol, rank = _lstsq(phi, g)
  gmax = float(np.max(np.abs(g))) + 1e-300
  if rank < phi.shape[1]:
    # z affine in x over the samples (a two-layer network, or a prefix linear there): scalar flips with c
    c = np.stack([u.c for u in units])
    try:
      t = second_layer.flip_z(z, c, g, rtol)
    except SignRecoveryError as err:
      fit = LastLayer(
        np.ones(n),
        np.zeros(n, bool),
        np.zeros((n, g.shape[1])),
        np.zeros((0, g.shape[1])),
        np.zeros(g.shape[1]),
        np.inf,
        rank_deficient=str(err) != "",
      )
      if prefix.weights:  # more units than features (a dead or missed feature): z is rank deficient, h is not
        fit = _with_remainder(fit, h, z, g, gmax, rtol) or fit
      return fit
    signs, pairs = np.where(t, -1.0, 1.0), np.zeros(n, bool)
  else:
    a, e = sol[:n], sol[n : 2 * n]
    an = np.linalg.norm(a, axis=1) + 1e-300
    plus = np.linalg.norm(e, axis=1) <= tol * an
    minus = np.linalg.norm(e + a, axis=1) <= tol * an
    signs = np.where(minus & ~plus, -1.0, 1.0)
    pairs = ~plus & ~minus
  zs = z * signs
  feats = [np.maximum(zs, 0), np.maximum(-zs[:, pairs], 0), np.ones((len(z), 1))]
  phi = np.concatenate(feats, axis=1)
  sol, rank = _lstsq(phi, g)
  off = np.max(np.abs(phi @ sol - g), axis=1) / gmax
  residual = float(np.max(off))
  if rank < phi.shape[1]:
    residual = np.inf
  k = int(pairs.sum())
  worst = np.argsort(-off)
  fit = LastLayer(signs, pairs, sol[:n], sol[n : n + k], sol[-1], residual, misfit_points=x[worst[off[worst] > rtol]])
  if residual > rtol and prefix.weights:
    fit = _with_remainder(fit, h, z, g, gmax, rtol) or fit
  return fit


def remainder_fit(q, prefix, units: list, scale: float, center, rng, stats, rtol: float, dom=None) -> LastLayer | None:
  """The fit g = relu(z) A + h L + c (`_with_remainder`) alone, at `last_layer`'s sample points: where the units
  outnumber the features, [relu(z), z, 1] is exact with every unit paired with a twin (their z span h), and
  `last_layer` then never tries the remainder. Exact or None (random 10-8-8-8-3 seed 3: `attack._promote_in_repair`)."""
  n = len(units)
  x, g = _answers(q, sample_points(prefix, units, max(16, 2 * n + 16), scale, center, rng, dom), stats)
  w, b = layer_arrays(units)
  h = network.features(prefix, x).h
  m = g.shape[1]
  base = LastLayer(np.ones(n), np.zeros(n, bool), np.zeros((n, m)), np.zeros((0, m)), np.zeros(m), np.inf)
  return _with_remainder(base, h, h @ w + b, g, float(np.max(np.abs(g), initial=0.0)) + 1e-300, rtol)


def seen_only(prefix, units: list, x: np.ndarray) -> np.ndarray:
  """The points of x (offline) where no unit's feature it never saw on is on (`layer.covered`): there every unit's
  pre-activation is what its known weights predict, whatever its unread weights."""
  return covered(prefix, np.all([u.known for u in units], axis=0), x)


def _answers(q, x: np.ndarray, stats) -> tuple[np.ndarray, np.ndarray]:
  """The answers g at x for a last-layer fit (counted in stats["last_layer_queries"]), without the points where a
  probability underflowed: (x, g)."""
  q0 = q.queries
  g = q(x, "last layer", underflow_ok=True)
  stats["last_layer_queries"] += q.queries - q0
  seen = np.all(np.isfinite(g), axis=1)
  return x[seen], g[seen]


def output_weights(
  q,
  prefix,
  units: list,
  signs: np.ndarray,
  scale: float,
  center,
  rng,
  stats,
  rtol: float,
  dom=None,
  unseen: np.ndarray | None = None,
) -> np.ndarray | None:
  """The output layer's weights (n, m) of the last hidden layer's units, their signs known (from `hidden_signs`),
  by least squares on [relu(s z), 1] at points where no unit's unread weight counts (`seen_only`, of 8 times the
  fit's samples): where such weights pair every unit with a twin in `last_layer`'s fit (random 10-8-8-8-1 seed
  14), they are what the gradient reading of those weights needs. A unit with all its weights known but on at none
  of those points (on only where another unit's unread weight counts) takes its row of `unseen` (n, m) if given:
  the twinned fit's a + c for its pair a relu(z) + c relu(-z), the jump of g's gradient across its surface, which
  the orientation does not change (random 7-7-7-2 seed 0 of `fe_deep_fresh.md`: one such unit of 7, the fit at
  those points exact for the 6 others). None when the fit is not exact there (rank deficient, or off by more than
  rtol: a sign wrong, a unit missed), or a unit is on at none of its points without such a row."""
  n = len(units)
  x = seen_only(prefix, units, sample_points(prefix, units, 8 * (2 * n + 16), scale, center, rng, dom, 2048))
  if len(x) < 2 * n + 16:
    return None
  x, g = _answers(q, x, stats)
  w, b = layer_arrays(units)
  z = (network.features(prefix, x).h @ w + b) * signs
  live = np.any(z > 0, axis=0)
  if unseen is None or not np.all(live | np.array([np.all(u.known) for u in units])):
    live = np.ones(n, bool)  # every unit fitted here, or the fit is rank deficient
  phi = np.concatenate([np.maximum(z[:, live], 0), np.ones((len(z), 1))], axis=1)
  sol, rank = _lstsq(phi, g)
  off = np.max(np.abs(phi @ sol - g)) / (float(np.max(np.abs(g))) + 1e-300)
  if rank < phi.shape[1] or off > rtol:
    return None
  out = np.zeros((n, g.shape[1])) if unseen is None else np.array(unseen, dtype=float)
  out[live] = sol[:-1]
  return out


def negligible(size: np.ndarray, rel: float) -> np.ndarray:
  """Which output-weight row norms `size` are at most `rel` times the largest (units the answers do not use)."""
  return size <= rel * max(float(np.max(size, initial=0.0)), 1e-300)


def drop_idle(units: list, last: LastLayer, rel: float = 1e-9) -> tuple[list, LastLayer]:
  """The units of an exact fit without those whose output weights are all below max(rel, 100 x the fit's
  relative residual) times the largest unit's (its twin's too, if it has one): a unit the answers do not use
  (random 10-8-8-8-1 seeds 6 and 16: a ninth "unit" near another's hyperplane, fitted weights 1e-11 and 1.4e-9 of
  the largest at fit residuals 2e-12 and 3e-10, which the remainder's fit admits where [relu(z), z, 1] was rank
  deficient; random 11-9-7-2 seed 1: a piece of no unit, on at 99.6% of the ball, fitted as a pair with weights
  7e-13 and 1.5e-11 beside 7 exact units, then refused for its twin); the final check then tests the network
  without it."""
  sizes = np.maximum(np.linalg.norm(last.w_out, axis=1), np.linalg.norm(last.w_twin_full(), axis=1))
  idle = negligible(sizes, max(rel, 100 * last.residual))  # the fit's noise
  if not idle.any():
    return units, last
  keep = ~idle
  return [u for u, k in zip(units, keep) if k], dataclasses.replace(
    last,
    signs=last.signs[keep],
    pairs=last.pairs[keep],
    w_out=last.w_out[keep],
    w_twin=last.w_twin[keep[last.pairs]],
  )


def _with_remainder(fit: LastLayer, h, z, g, gmax: float, rtol: float) -> LastLayer | None:
  """The fit g = relu(z) A + h L + c, where h are the prefix's features: a unit of the victim's last hidden layer
  that is active over the whole domain (relu(p) = p there, never a kink) adds h . w to g, which no unit found
  can give. Exact (residual <= rtol) or None. The units keep their orientation (relu(-z) = relu(z) - z: with
  such a remainder the orientation of a last-layer unit is not determined by answers on the domain); L is
  returned as its rank-revealing factors (`LastLayer.remainder_w`, `remainder_out`)."""
  n = z.shape[1]
  phi = np.concatenate([np.maximum(z, 0), h, np.ones((len(z), 1))], axis=1)
  if len(phi) < 2 * phi.shape[1]:
    return None
  sol, *_ = np.linalg.lstsq(phi, g, rcond=None)  # features never on at the samples get weight 0
  off = np.max(np.abs(phi @ sol - g), axis=1) / gmax
  if np.linalg.matrix_rank(np.delete(phi, np.s_[n : n + h.shape[1]], axis=1)) < n + 1 or np.max(off) > rtol:
    return None
  u, sv, vt = np.linalg.svd(sol[n:-1], full_matrices=False)
  r = int(np.sum(sv > 1e-9 * max(float(sv[0]), 1e-300))) if len(sv) else 0
  return dataclasses.replace(
    fit,
    signs=np.ones(n),
    pairs=np.zeros(n, bool),
    w_out=sol[:n],
    w_twin=np.zeros((0, g.shape[1])),
    b_out=sol[-1],
    residual=float(np.max(off)),
    misfit_points=None if fit.misfit_points is None else fit.misfit_points[:0],
    remainder_w=u[:, :r],
    remainder_out=sv[:r, None] * vt[:r],
  )


@dataclasses.dataclass
class SignVotes:
  """Per unit: the sign, how it was decided ('exact' / 'vote' / 'majority'), and the votes for + and -."""

  signs: np.ndarray
  how: list
  plus: np.ndarray
  minus: np.ndarray
  exact_tests: int = 0
  wiggle_tests: int = 0


def _test_points(prefix, u: Unit, need: int, scale: float, center, rng, layer: list | None = None):
  """u's own surface points, then more of its predicted surface; with `layer` (its units), of 8 times as many
  only those where no unit of the layer has a feature it never saw on on (`seen_only`: there the predicted surfaces
  and gradients are the true ones)."""
  pts = list(u.points)
  if len(pts) < need:
    anc, spread = near_anchors(u, center, scale)
    more = need - len(pts) if layer is None else 8 * (need - len(pts))
    x, _, _ = surface_points(prefix, u, anc, more, spread, rng)
    pts += list(x if layer is None else seen_only(prefix, layer, x)[: need - len(pts)])
  return pts


def hidden_signs(
  q,
  prefix,
  units: list,
  scale: float,
  center,
  rng,
  stats,
  max_votes: int = 24,
  margin: int = 5,
  passes: int = 4,
  ratio: float = 1e-6,
  where_seen: bool = False,
  radius: float = np.inf,
) -> SignVotes:
  """Module docstring, second item; `where_seen`: tests only where no unit's unread weight counts (`_test_points`);
  `radius`: how far from the center the first layer's support points may go (support.support_signs).
  Raises SignRecoveryError when exact tests of a unit contradict each other."""
  n = len(units)
  w, b = layer_arrays(units)
  signs = np.zeros(n)
  how = [""] * n
  plus, minus = np.zeros(n, int), np.zeros(n, int)
  exact_p, exact_m = np.zeros(n, int), np.zeros(n, int)
  pts = [_test_points(prefix, u, max_votes, scale, center, rng, units if where_seen else None) for u in units]
  cursor = np.zeros(n, int)
  out = SignVotes(signs, how, plus, minus)
  q0 = q.queries
  for _ in range(passes):
    todo = [j for j in range(n) if signs[j] == 0 or how[j] == "vote"]
    if not todo:
      break
    for _ in range(max_votes):
      live = [j for j in todo if how[j] != "exact" and cursor[j] < len(pts[j])]
      if not live:
        break
      xs, deltas, steps, exact_flags, who = [], [], [], [], []
      for j in live:
        x = pts[j][cursor[j]]
        cursor[j] += 1
        r = _direction(prefix, w, b, signs, j, x)
        if r is None:
          continue
        delta, s, exact = r
        xs.append(x)
        deltas.append(delta)
        steps.append(s)
        exact_flags.append(exact)
        who.append(j)
      if not who:
        continue
      dp, dm, noise = _query_tests(q, xs, deltas, steps)
      for i, j in enumerate(who):
        if exact_flags[i]:
          out.exact_tests += 1
          side = _exact_side(dp[i], dm[i], noise[i], ratio)
          exact_p[j] += side > 0
          exact_m[j] += side < 0
          if exact_p[j] and exact_m[j]:
            raise SignRecoveryError(
              f"unit {j}: exact sign tests disagree (the layer or its prefix is not "
              f"recovered exactly, or units are missing)"
            )
          if exact_p[j] + exact_m[j] >= 2:
            signs[j], how[j] = (1.0 if exact_p[j] else -1.0), "exact"
        else:
          out.wiggle_tests += 1
          if dp[i] > dm[i]:
            plus[j] += 1
          elif dm[i] > dp[i]:
            minus[j] += 1
          if (
            how[j] != "exact"
            and abs(plus[j] - minus[j]) >= margin
            and max(plus[j], minus[j]) >= 0.75 * (plus[j] + minus[j])
          ):
            signs[j], how[j] = (1.0 if plus[j] > minus[j] else -1.0), "vote"
    # exact decisions count before the next pass; undecided units keep their votes
  if prefix.weights and any(h != "exact" for h in how):
    _exact_in_live_regions(q, prefix, units, w, b, signs, how, scale, center, rng, out, ratio, passes)
  if not prefix.weights and any(h != "exact" for h in how):
    undecided = np.array([h != "exact" for h in how])
    found = support.support_signs(q, w, b, undecided, scale, center, rng, stats, radius=radius)
    for j in np.flatnonzero(found).tolist():
      signs[j], how[j] = found[j], "exact"
  if any(h != "exact" for h in how):
    _exact_by_guesses(q, prefix, units, w, b, signs, how, scale, center, rng, out, ratio)
  for j in range(n):
    if signs[j] == 0:
      if exact_p[j] or exact_m[j]:
        signs[j], how[j] = (1.0 if exact_p[j] else -1.0), "exact"
      else:
        signs[j], how[j] = (1.0 if plus[j] >= minus[j] else -1.0), "majority"
  stats["sign_queries"] += q.queries - q0
  return out


def _query_tests(q, xs, deltas, steps):
  """Answers at x, x + step delta and x - step delta: (|g(x + s delta) - g(x)|, |g(x - s delta) - g(x)|, the
  rounding noise of the answers) per test."""
  points, directions, step_sizes = np.array(xs), np.array(deltas), np.array(steps)[:, None]
  k = len(xs)
  # an answer that underflowed (probabilities) is NaN: no verdict and no vote from that test
  x = np.concatenate([points, points + step_sizes * directions, points - step_sizes * directions])
  g = q(x, "signs", underflow_ok=True)
  g0, gp, gm = g[:k], g[k : 2 * k], g[2 * k :]
  noise = 64 * EPS * np.max(np.abs(g.reshape(3, k, -1)), axis=(0, 2))
  return np.linalg.norm(gp - g0, axis=1), np.linalg.norm(gm - g0, axis=1), noise


def _exact_side(dp: float, dm: float, noise: float, ratio: float) -> int:
  """An exact test's verdict: +1 (g moves on the + side only), -1, or 0 (neither side is still)."""
  if dm <= ratio * dp + noise and dp > 1e3 * noise:
    return 1
  if dp <= ratio * dm + noise and dm > 1e3 * noise:
    return -1
  return 0


def _exact_in_live_regions(q, prefix, units, w, b, signs, how, scale, center, rng, out, ratio, passes):
  """Exact tests for the units the passes left to votes, at points of their surfaces where every feature is
  live (regions.all_active_points from each of the unit's precise points in turn, up to 8): there the layer's
  rank is the largest. Units decided by votes count as undecided here (a wrong vote must not drop a
  constraint); two agreeing exact tests decide a unit, as in the passes, and free constraints for the others."""
  d = len(center)
  radius = 64 * scale * np.sqrt(d)
  tried: dict[int, int] = {}
  for _ in range(passes):
    todo = [j for j in range(len(units)) if how[j] != "exact"]
    known = np.where([h == "exact" for h in how], signs, 0.0)
    xs, deltas, steps, who = [], [], [], []
    for j in todo:
      q.check("signs")  # the region search and directions are offline: the time limit is checked per unit
      while tried.get(j, 0) < min(8, len(units[j].points)):
        x0 = units[j].points[tried.get(j, 0)]
        tried[j] = tried.get(j, 0) + 1
        pts = regions.all_active_points(prefix, w[:, j], b[j], x0, center, radius, rng)
        found = [(x, _direction(prefix, w, b, known, j, x)) for x in pts]
        tests = [(x, r) for x, r in found if r is not None and r[2]]
        if len(tests) >= 2:
          xs += [x for x, _ in tests]
          tests = [r for _, r in tests]
          deltas += [r[0] for r in tests]
          steps += [r[1] for r in tests]
          who += [j] * len(tests)
          break
    if not who:
      break
    dp, dm, noise = _query_tests(q, xs, deltas, steps)
    sides: dict[int, list] = {}
    for i, j in enumerate(who):
      out.exact_tests += 1
      sides.setdefault(j, []).append(_exact_side(dp[i], dm[i], noise[i], ratio))
    for j, v in sides.items():
      if all(s > 0 for s in v) or all(s < 0 for s in v):
        signs[j], how[j] = float(v[0]), "exact"


def _exact_by_guesses(q, prefix, units, w, b, signs, how, scale, center, rng, out, ratio, rounds=8, candidates=64):
  """Exact tests for the units still left to votes, with the other units' *guessed* states deciding which ones
  the direction must leave unchanged: at a point of unit j's surface, delta moves p_hat_j and keeps still the
  units most likely active there (as many as the layer's rank there allows: exact signs are certain, votes
  give odds), and may move the others. Whatever the guesses, the verdict is sound: a side where g stays exactly
  still while the other moves is unit j's inactive side (g's kink along delta is there, so j's path is live; on
  j's active side the moved units would have to cancel j's change exactly). A wrong guess (a moved unit truly
  active) only makes both sides move: no verdict. So this decides units of an expanding layer, where no
  direction keeps every possibly active unit still. Of `candidates` points of each unit's surface, the 3 where
  the moved units are most likely all inactive are tested a round; two agreeing verdicts decide, and decided
  units sharpen the odds of the next round."""
  n = len(units)
  yes, no = np.zeros(n, int), np.zeros(n, int)
  for _ in range(rounds):
    todo = [j for j in range(n) if how[j] != "exact"]
    if not todo:
      break
    exact = np.array([h == "exact" for h in how])
    plus_odds = np.where(exact, signs > 0, (out.plus + 1.0) / (out.plus + out.minus + 2.0))
    xs, deltas, steps, who = [], [], [], []
    for j in todo:
      q.check("signs")
      anc, spread = near_anchors(units[j], center, scale)
      pts, _, _ = surface_points(prefix, units[j], anc, candidates, 2 * spread, rng)
      if not len(pts):
        continue
      f = network.features(prefix, pts)
      p = f.h @ w + b
      active = np.where(p > 0, plus_odds, 1.0 - plus_odds)  # (k, n) odds that each unit is active there
      active[:, j] = 2.0  # never among the moved ones
      order = np.argsort(-active, axis=1, kind="stable")
      still = _independent_first(np.einsum("kdi,in->kdn", f.jac, w), order)
      score = np.prod(np.where(still, 1.0, 1.0 - np.minimum(active, 1.0)), axis=1)
      for i in np.argsort(-score, kind="stable")[:3]:
        r = _direction(prefix, w, b, signs, j, pts[i], constrained=still[i] & (np.arange(n) != j))
        if r is not None and r[2]:
          xs.append(pts[i])
          deltas.append(r[0])
          steps.append(r[1])
          who.append(j)
    if not who:
      break
    dp, dm, noise = _query_tests(q, xs, deltas, steps)
    for i, j in enumerate(who):
      out.exact_tests += 1
      side = _exact_side(dp[i], dm[i], noise[i], ratio)
      yes[j] += side > 0
      no[j] += side < 0
    for j in set(who):
      if yes[j] + no[j] >= 2 and not (yes[j] and no[j]):
        signs[j], how[j] = (1.0 if yes[j] else -1.0), "exact"


def _independent_first(grads: np.ndarray, order: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
  """Which units to keep still (k, n), per point: in `order` (k, n) (likeliest active first, the tested unit
  first), each unit whose gradient (grads (k, d, n)) is independent of those before it (the first rank ones
  where they are in general position; Gram-Schmidt in order at the points where they are not). A unit whose gradient is
  in their span cannot be held still with them and is left free: a hyperplane parallel to the tested unit's (the
  kink of a next-layer unit that reads it alone, 50%-pruned random 10-8-6-1 seed 4) is never kept still, and the
  test still gives a verdict where it is inactive. Float64."""
  k, d, n = grads.shape
  grads = grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-300)

  def rank_of(g):
    sv = np.linalg.svd(g, compute_uv=False)
    return np.sum(sv > rtol * np.max(sv, axis=1, keepdims=True), axis=1)

  rank = rank_of(grads)
  still = np.zeros((k, n), bool)
  np.put_along_axis(still, order, np.arange(n)[None] < rank[:, None], axis=1)  # general position: the first rank
  short = np.flatnonzero(rank_of(grads * still[:, None, :]) < rank)
  ordered = np.take_along_axis(grads, order[:, None, :], axis=2)
  for i in short.tolist():
    still[i] = False
    basis = np.zeros((d, 0))
    for c in range(n):
      if basis.shape[1] == d:
        break
      col = ordered[i, :, c]
      rest = col - basis @ (basis.T @ col)
      rest -= basis @ (basis.T @ rest)  # twice is enough (Gram-Schmidt reorthogonalisation)
      left = np.linalg.norm(rest)
      if left > rtol:
        basis = np.concatenate([basis, (rest / left)[:, None]], axis=1)
        still[i, order[i, c]] = True
  return still


def _direction(prefix, w, b, signs, j, x, constrained=None):
  """(delta, step, exact) at x for unit j (module docstring): delta changes p_hat_j by 1 and every other unit
  that may be active at x by 0 when `exact`, else by the least possible; step keeps every prefix unit and every
  unconstrained unit of the layer on its side. None when no usable step exists."""
  f = network.features(prefix, x[None])
  jac = f.jac[0] @ w  # (d, n): grad p_hat
  p = f.h[0] @ w + b
  n = len(b)
  others = np.arange(n) != j
  # units that may be truly active at x: undecided ones, and decided ones on their active side
  if constrained is None:
    constrained = others & ((signs == 0) | (signs * p > 0))
  a = np.concatenate([jac[:, constrained], jac[:, j : j + 1]], axis=1).T  # (c + 1, d)
  target = np.zeros(len(a))
  target[-1] = 1.0
  delta, *_ = np.linalg.lstsq(a, target, rcond=None)
  moved = jac.T @ delta  # change of every p_hat per unit step
  if moved[j] <= 0:
    return None
  delta, moved = delta / moved[j], moved / moved[j]
  leak = np.max(np.abs(moved[constrained]), initial=0.0)
  exact = leak <= 1e-9
  # step: no prefix unit and no unconstrained unit crosses; a constrained one may move by its leak only
  limit = [np.inf]
  if prefix.weights:
    for pre, dpre in zip(f.pre, network.along(prefix, x[None], delta[None])):
      with np.errstate(divide="ignore", invalid="ignore"):
        limit.append(np.min(np.where(dpre[0] != 0, np.abs(pre[0] / dpre[0]), np.inf)))
  free = others & ~constrained
  with np.errstate(divide="ignore", invalid="ignore"):
    limit.append(np.min(np.where(free & (moved != 0), np.abs(p / moved), np.inf), initial=np.inf))
    if not exact:
      limit.append(np.min(np.where(constrained & (moved != 0), np.abs(p / moved), np.inf), initial=np.inf))
  step = 0.25 * min(limit)
  scale_p = np.linalg.norm(f.h[0]) * np.max(np.linalg.norm(w, axis=0)) + np.max(np.abs(b))
  step = min(step, 1e-2 * scale_p)
  if not np.isfinite(step) or step <= 1e-9 * scale_p:
    return None
  return delta, step, exact
