"""Functionally-equivalent extraction of a two-layer ReLU network from its logits (Jagielski et al. 2020, Alg. 2;
with the precision techniques of Carlini, Jagielski, Mironov 2020), in float64, on a stated input domain.

The domain (domain.py: a ball of radius R, by default 1000 * scale, or a box) is where the recovered network is
claimed equal to the victim. One round: random lines x = p + t v (p near the domain's center, v ~ N(0, scale^2
I), |t| <= line_reach * R / scale, so that a line crosses a hyperplane at distance D <= R from p with probability
>= 1 - 0.8 / line_reach, ~99%; the lines run far outside the domain, the search stays coarse where g is straight)
-> kinks not on a known hyperplane (`search.find_kinks`) -> Jacobians of g on the segments next to them
(`recover.gradients`, d + 2 queries per segment, shared by neighbouring kinks) -> one row per kink from the jump
across it (`recover.units_from_jumps`, with a per-unit error estimate) -> bias and output vector sharpened along
the row at the hyperplane's point nearest the center (`recover.refine`); rows measured with small steps
(crowded segments) are measured again there (`recover.polish_rows`) -> duplicates dropped. Rounds go on until
`patience` rounds find no new unit; then the signs and the second layer are solved (`second_layer.solve`: flips,
then pairs on one hyperplane, then, when the search keeps finding nothing new, an affine part for units that are
affine on the whole domain), and the result is checked on points covering the domain (check.py: spheres up to R or
the box's corners and faces, and on and beside every recovered hyperplane inside the domain). Where the check
fails, lines through the failing points towards the center search again (`Config.repairs` times at most).

The number of hidden units is found, not given; units that never change the function on the domain are not
found. Units with small output weights are recovered with a precision stated per unit (`Extraction.units`); a unit
whose effect on the whole domain is below the oracle's precision there is reported negligible, with that bound
(also a kink whose Jacobian jump is lost in the rounding noise, when its bound is that small). Every stage is
bounded by `queries.Limits`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from extraction.oracle import Oracle
from functional_equivalence import check, queries, recover, search, second_layer
from functional_equivalence import domain as domains
from functional_equivalence.errors import (
  ExtractionError,
  NoCriticalPointsError,
  SignRecoveryError,
  SignsNotIdentifiableError,
)
from functional_equivalence.victims import TwoLayerNet

PROBABILITY_REACH = 600.0  # with probabilities, lines stop where |log p_i - log p_0| passes this (underflow ~708)


@dataclasses.dataclass(frozen=True)
class Config:
  """Attack settings.

  Attributes:
    scale: the attack's random inputs (line points and directions, samples) are ~ N(center, scale^2 I).
    domain: where equivalence is claimed (domain.Ball / domain.Box); None: Ball(1000 * scale).
    line_reach: lines run over |t| <= line_reach * R / scale (R: the domain's circumradius), see module docstring;
      with probabilities they stop earlier, where the probabilities would underflow (stats['search_radius']: the
      distance up to which each line crosses a hyperplane with probability >= 90%).
    lines_per_round: lines searched together per round.
    max_rounds, patience: at most max_rounds rounds; signs are solved after `patience` rounds without new units.
    grad_step: finite-difference step, times max(scale, |x - center| / sqrt(d)).
    check_points: points of the final check spread over the domain (beside 64 near the center and 6 on and
      beside every recovered hyperplane inside the domain).
    check_rtol: the final check fails above this relative error.
    repairs: after a failed check, at most this many rounds of lines through the points where it failed (towards
      the center), then signs, second layer and check again.
    max_queries, max_seconds: hard limits of the whole attack (None: none).
  """

  scale: float = 1.0
  domain: domains.Domain | None = None
  line_reach: float = 64.0
  lines_per_round: int = 1
  max_rounds: int = 40
  patience: int = 2
  grad_step: float = 1e-3
  check_points: int = 96
  check_rtol: float = 1e-8
  repairs: int = 3
  max_queries: int | None = None
  max_seconds: float | None = 600.0

  def the_domain(self) -> domains.Domain:
    return self.domain if self.domain is not None else domains.Ball(1000.0 * self.scale)


@dataclasses.dataclass
class Extraction:
  """Result: the recovered network (same convention as victims; in probabilities mode class 0's column of w1
  and b1[0] are 0 and the rest hold the logit differences to class 0), queries (total and per stage), seconds,
  hidden units recovered (twins of pairs included, linear units not), rounds, the domain, per-unit estimates
  (`units`: for each hidden unit of `net`, kind 'unit' / 'twin' / 'linear', estimated relative row error, max
  effect on the domain, negligible flag) and statistics (`stats`, with the final check's error)."""

  net: TwoLayerNet
  queries: int
  seconds: float
  hidden_units_found: int
  rounds: int
  stats: dict
  domain: domains.Domain | None = None
  queries_by_stage: dict = dataclasses.field(default_factory=dict)
  units: dict = dataclasses.field(default_factory=dict)


def _segments(kinks: search.Kinks, ranges: np.ndarray):
  """The segments between consecutive kinks of each line: (line (S,), mid t (S,), half-length in t (S,), and for
  every kink the index of the segment on its left; the one on its right is that index + 1)."""
  left = np.zeros(len(kinks.t), int)
  line: list = []
  mid: list = []
  half: list = []
  for l, (lo, hi) in enumerate(ranges):
    sel = np.flatnonzero(kinks.line == l)
    bounds = np.concatenate([[lo], kinks.t[sel], [hi]])
    left[sel] = len(mid) + np.arange(len(sel))
    mid.extend(0.5 * (bounds[:-1] + bounds[1:]))
    half.extend(0.5 * np.diff(bounds))
    line.extend([l] * (len(sel) + 1))
  return np.array(line, int), np.array(mid), np.array(half), left


def _line_starts(dom: domains.Domain, d: int, count: int, scale: float, rng) -> np.ndarray:
  """Base points of the lines: N(center, scale^2 I) for a ball, uniform in a box."""
  if isinstance(dom, domains.Box):
    return rng.uniform(dom.low, dom.high, size=(count, d))
  return dom.center(d) + scale * rng.normal(size=(count, d))


def _line_ranges(q: queries.Querier, starts, dirs, t_max: float, stage: str = "critical-point search") -> np.ndarray:
  """[t_low, t_high] per line: [-t_max, t_max], shortened with probabilities to where |g| <= PROBABILITY_REACH
  (the probabilities underflow further out), by geometric steps t_max * 2^-j (2 (j_max + 1) queries a line)."""
  n, d = starts.shape
  if q.oracle.output != "probabilities":
    return np.tile([-t_max, t_max], (n, 1))
  t = t_max * 2.0 ** -np.arange(max(1, int(np.ceil(np.log2(max(t_max, 2.0)))) + 1))  # decreasing to ~1
  ts = np.concatenate([-t, t])
  g = q((starts[:, None] + ts[None, :, None] * dirs[:, None]).reshape(-1, d), stage, underflow_ok=True).reshape(
    n, len(ts), -1
  )
  good = np.all(np.isfinite(g), -1) & (np.max(np.abs(g), -1) <= PROBABILITY_REACH)
  out = np.zeros((n, 2))
  for side, sl in ((0, slice(0, len(t))), (1, slice(len(t), None))):
    ok = good[:, sl][:, ::-1]  # from small |t| outwards
    reach = np.argmin(np.concatenate([ok, np.zeros((n, 1), bool)], 1), axis=1)  # first bad one
    out[:, side] = np.where(reach > 0, t[::-1][np.maximum(reach - 1, 0)], t[-1] / 2) * (1 if side else -1)
  return out


def _round(q: queries.Querier, units: recover.Units, cfg: Config, dom, t_max: float, rng, stats: dict, lines=None):
  """One round: search new lines (`lines`: given (starts, dirs), else random), recover a unit for every kink off
  the known hyperplanes; returns all units."""
  d, m = units.u.shape[1], units.c.shape[1]
  center = dom.center(d)
  if lines is None:
    starts = _line_starts(dom, d, cfg.lines_per_round, cfg.scale, rng)
    dirs = rng.normal(size=(cfg.lines_per_round, d)) * cfg.scale
  else:
    starts, dirs = lines
  q0 = q.queries
  ranges = _line_ranges(q, starts, dirs, t_max)
  # a line crosses a hyperplane at distance D from p with probability P(|N(0,1)| >= D / (t_reach scale)): >= 90%
  # up to D = t_reach * scale / 8, the search radius
  stats["search_radius"] = min(stats.get("search_radius", np.inf), float(np.min(np.abs(ranges))) * cfg.scale / 8)
  kinks = search.find_kinks(q, starts, dirs, ranges, far=2 * dom.circumradius(d), center=center)
  stats["search_queries"] += q.queries - q0
  stats["kinks"] += len(kinks.t)
  stats["unresolved_intervals"] += kinks.unresolved
  x = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
  dist = np.linalg.norm(x - center, axis=1)
  new = np.flatnonzero(~recover.same_hyperplane(units, x, 1e-7 * (cfg.scale + dist)))
  if len(new) == 0:
    return units
  seg_line, seg_mid, seg_half, seg_left = _segments(kinks, ranges)
  left, right = seg_left[new], seg_left[new] + 1
  need = np.unique(np.concatenate([left, right]))
  where = np.full(len(seg_mid), -1)
  where[need] = np.arange(len(need))
  points = starts[seg_line[need]] + seg_mid[need, None] * dirs[seg_line[need]]
  # hyperplanes through the bulk fan out: distances to them (and so safe steps) grow with |point| / sqrt(d)
  reach = np.maximum(cfg.scale, np.linalg.norm(points - center, axis=1) / np.sqrt(d))
  eps = np.minimum(cfg.grad_step * reach, 0.25 * seg_half[need] * np.linalg.norm(dirs[seg_line[need]], axis=1))
  q0 = q.queries
  jac, ok, used, noise = recover.gradients(q, points, eps, rng)
  stats["gradient_queries"] += q.queries - q0
  jump_noise = recover.jump_noise(noise[where[left]], noise[where[right]], m, d)
  jumps = jac[where[right]] - jac[where[left]]
  cand, ok_rank = recover.units_from_jumps(jumps, dirs[kinks.line[new]], x[new], jump_noise)
  measured = ok[where[left]] & ok[where[right]]
  _note_lost(stats, jumps, jump_noise, measured & ~ok_rank, dist[new], dom.circumradius(d))
  q0 = q.queries
  cand, ok_ref, width, xk = recover.refine(q, cand, cfg.scale, rng, center=center, kinks=x[new])
  stats["refine_queries"] += q.queries - q0
  keep = measured & ok_rank & ok_ref
  stats["rejected_kinks"] += int(np.sum(~keep))
  cand, width, xk = recover.Units(*(a[keep] for a in cand)), width[keep], xk[keep]
  step = np.minimum(used[where[left]], used[where[right]])[keep]
  # rows measured with steps far below the usual one (crowded segments), and with one output every row (no rank
  # test there: a small unit's kink missed on the line may hide in the jump), are measured again beside x_k (rows
  # measured far out need not be: the step grows with |x|, so the relative precision stays)
  reach = np.maximum(cfg.scale, np.linalg.norm(xk - center, axis=1) / np.sqrt(d))
  redo = (step < 0.25 * cfg.grad_step * reach) | (m == 1)
  if np.any(redo):
    q0 = q.queries
    sub = recover.Units(*(a[redo] for a in cand))
    steps = np.minimum(cfg.grad_step * reach[redo], width[redo] / 4)  # never across the unit's own hyperplane
    polished, _ = recover.polish_rows(q, sub, xk[redo], width[redo], steps, rng, prefer_new=m == 1)
    cand = recover.Units(*(np.concatenate([a[~redo], b]) for a, b in zip(cand, polished)))
    stats["polish_queries"] += q.queries - q0
    stats["polished_units"] += int(np.sum(redo))
  return recover.dedup(recover.concat_units(units, cand))


def _note_lost(stats, jumps, noise, rejected, dist, radius):
  """Kinks whose Jacobian jump is lost in the rounding noise (a unit too small to measure, or a false kink of the
  search): if a unit is there, its |c| <= s_1 + NOISE_FACTOR * noise, and its effect on the domain is at most that
  times (R + distance of the kink from the center). The bounds go to stats['lost_kink_bounds']."""
  if not np.any(rejected):
    return
  s1 = np.linalg.norm(jumps[rejected], ord=2, axis=(1, 2))
  lost = s1 <= recover.NOISE_FACTOR * noise[rejected]
  bound = (s1 + recover.NOISE_FACTOR * noise[rejected])[lost] * (radius + dist[rejected][lost])
  stats["lost_kink_bounds"].extend(float(b) for b in bound)


def _domain_points(units: recover.Units, dom, d: int, count: int, scale: float, rng) -> np.ndarray:
  """Points inside the domain for the affine model: on both sides of every hyperplane that meets it (so that each
  such unit is active and inactive among them), and spread over the domain."""
  on, which = dom.hyperplane_points(units.u, units.beta, rng, 2)
  side = 1e-2 * scale * units.u[which]
  near = dom.project(np.concatenate([on + side, on - side]))
  return np.concatenate([near, dom.check_points(rng, d, count)])


def _answered(q, x):
  """x and g(x) at the points where the oracle's answer carries g (with probabilities, not underflowed)."""
  g = q(x, "second layer", underflow_ok=True)
  seen = np.all(np.isfinite(g), axis=1)
  return x[seen], g[seen]


def _second_layer(q, units, cfg, dom, rng, stats, affine_ok: bool):
  """Signs and second layer (second_layer.solve; with affine_ok, or when the signs are not identifiable (h + k >
  k (d + 1)), the affine model: equal on the domain, orientations as found)."""
  d = units.u.shape[1]
  center = dom.center(d)
  stats["sign_attempts"] += 1
  unidentifiable = None
  if len(units):
    q0 = q.queries
    x, g = _answered(q, second_layer.sample_points(units, cfg.scale, 2 * len(units) + 16, rng, center))
    stats["layer2_queries"] += q.queries - q0
    try:
      return second_layer.solve(units, x, g)
    except SignsNotIdentifiableError as e:
      unidentifiable = e
    except SignRecoveryError:
      if not affine_ok:
        raise
  q0 = q.queries
  x, g = _answered(q, _domain_points(units, dom, d, d + 32, cfg.scale, rng))
  stats["layer2_queries"] += q.queries - q0
  margin = 0.5 * dom.circumradius(d) + cfg.scale
  crossing = (dom.max_affine(units.u, units.beta) > 0) & (dom.max_affine(-units.u, -units.beta) > 0)
  try:
    return second_layer.affine_fit(units, x, g, crossing, lambda rows: dom.max_affine(-rows, 0.0) + margin)
  except SignRecoveryError as e:
    if unidentifiable is not None:  # units missing too: search on
      raise SignRecoveryError(f"{unidentifiable}; and {e}") from None
    raise


def _affine_only(q, units, cfg, dom, rng, stats, rounds: int, t_max: float):
  """The affine model with no hidden unit, when the lines found no kink: equal on the domain if the victim is
  affine there (its hyperplanes all outside it, or none); else NoCriticalPointsError."""
  try:
    return _second_layer(q, units, cfg, dom, rng, stats, affine_ok=True)
  except SignRecoveryError:
    raise NoCriticalPointsError(
      f"no critical point on {rounds + 1} lines (|t| <= {t_max:g}, scale {cfg.scale:g}) after {q.queries} "
      f"queries, yet the victim is not affine on the domain {dom.describe()}"
    ) from None


def extract(oracle: Oracle, input_dim: int, cfg: Config = Config(), seed: int = 0) -> Extraction:
  """Recovers a two-layer ReLU network functionally equivalent to the oracle's victim on cfg's domain.

  Args:
    oracle: an Oracle (or RemoteOracle) with output 'logits' or 'probabilities' over a float64 victim; all
      queries go through its __call__.
    input_dim: d.
    cfg: Config. seed: seed of every random choice of the attack (keep it independent of the victim's).
  Returns:
    Extraction. Raises an ExtractionError subclass (errors.py) when the oracle is not exact float64 piecewise
    linear, no critical point is found, a limit is reached, the signs / second layer cannot be solved, or the
    final check fails.
  """
  q = queries.Querier(oracle, queries.Limits(cfg.max_queries, cfg.max_seconds))
  dom = cfg.the_domain()
  rng = np.random.default_rng(seed)
  probe = queries.probe(q, input_dim, cfg.scale, rng)
  m = q(np.zeros((1, input_dim)), "output size").shape[1]
  if m == 0:
    raise ValueError("the oracle has one class: its probabilities carry no information")
  stats: dict[str, Any] = dict(
    probe_bits=probe.precision_bits,
    search_queries=0,
    gradient_queries=0,
    refine_queries=0,
    polish_queries=0,
    polished_units=0,
    kinks=0,
    unresolved_intervals=0,
    rejected_kinks=0,
    lost_kink_bounds=[],
    layer2_queries=0,
    sign_attempts=0,
    repair_rounds=0,
  )
  t_max = cfg.line_reach * dom.circumradius(input_dim) / cfg.scale
  units, quiet, failed_with = recover.empty_units(input_dim, m), 0, -1
  error: ExtractionError | None = None
  lines = None
  for r in range(cfg.max_rounds):
    before = len(units)
    units = _round(q, units, cfg, dom, t_max, rng, stats, lines)
    lines = None
    logging.info("round %d: %d units, %d queries", r, len(units), q.queries)
    quiet = quiet + 1 if len(units) == before else 0
    if quiet < cfg.patience or (len(units) == 0 and stats["kinks"] > 0):
      continue
    try:
      if len(units) == 0:  # no kink at all: affine on the domain, or an error
        layer2 = _affine_only(q, units, cfg, dom, rng, stats, r, t_max)
      else:
        layer2 = _second_layer(q, units, cfg, dom, rng, stats, affine_ok=failed_with == len(units))
    except SignsNotIdentifiableError:
      raise
    except SignRecoveryError as e:  # units missing: search on
      error, quiet, failed_with = e, 0, len(units)
      continue
    net = _network(layer2, oracle.output == "probabilities")
    checked, bad = check.final_check(
      q, net, layer2, dom, cfg.scale, cfg.check_points, cfg.check_rtol, rng, oracle.output == "probabilities"
    )
    if not len(bad):
      break
    error = ExtractionError(
      f"final check failed, precision reached: 2^{np.log2(checked['check_error']):.1f}: the recovered network is "
      f"off by {checked['check_error']:.2g} (relative, limit {cfg.check_rtol:g}) at fresh points of the domain "
      f"{dom.describe()} (a slightly noisy oracle, or units the search missed?)"
    )
    stats["repair_rounds"] += 1
    if stats["repair_rounds"] > cfg.repairs:
      raise error
    lines, quiet = check.lines_towards_center(bad[: 4 * cfg.lines_per_round], dom, cfg.scale, rng), 0
  else:
    raise error or ExtractionError(f"no consistent network after {cfg.max_rounds} rounds ({q.queries} queries)")
  stats.update(
    layer2_residual=layer2.residual,
    layer2_model=layer2.model,
    paired_units=layer2.paired,
    linear_units=layer2.linear,
    **checked,
  )
  stats["verify_error"] = stats["check_error"]
  unit_table = check.unit_table(units, layer2, dom, stats)
  found = len(layer2.beta) - layer2.linear
  return Extraction(net, q.queries, q.seconds, found, r + 1, stats, dom, dict(q.by_stage), unit_table)


def _network(layer2, differences: bool) -> TwoLayerNet:
  """The recovered network; with probabilities class 0's column of w1 and b1[0] are 0."""
  w1, b1 = layer2.w1, layer2.b1
  if differences:
    w1 = np.concatenate([np.zeros((len(w1), 1)), w1], axis=1)
    b1 = np.concatenate([[0.0], b1])
  return TwoLayerNet(layer2.u.T.copy(), layer2.beta.copy(), w1, b1)
