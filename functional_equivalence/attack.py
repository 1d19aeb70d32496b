"""Functionally-equivalent extraction of a two-layer ReLU network from its logits (Jagielski et al. 2020, Alg. 2;
with the precision techniques of Carlini, Jagielski, Mironov 2020), in float64.

One round: random lines (`search.find_kinks`) -> kinks not on a known hyperplane -> Jacobians of g on the line
segments next to them (`recover.gradients`, d + 2 queries per segment, shared by neighbouring kinks) -> one row
per kink from the jump across it (`recover.units_from_jumps`) -> bias and output vector sharpened along the row
(`recover.refine`) -> duplicates dropped. Rounds go on (lines growing longer) until `patience` rounds find no new
unit; then the signs and the second layer are solved (`second_layer`) and the result is checked on fresh
points. The number of hidden units is found, not given; units that never change the function (never active, or
zero output weights) are not found. Every stage is bounded by `queries.Limits`.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from extraction.oracle import Oracle
from functional_equivalence import queries, recover, search, second_layer
from functional_equivalence.errors import (ExtractionError, NoCriticalPointsError, SignRecoveryError,
                                          SignsNotIdentifiableError)
from functional_equivalence.victims import TwoLayerNet


@dataclasses.dataclass(frozen=True)
class Config:
  """Attack settings.

  Attributes:
    scale: the attack's random inputs (line points, samples) are ~ N(0, scale^2 I).
    t_max: half-length in t of the first round's lines x = u + t v (u, v ~ N(0, scale^2 I)); round r searches
      |t| <= t_max * min(r + 1, 4).
    lines_per_round: lines searched together per round.
    max_rounds, patience: at most max_rounds rounds; signs are solved after `patience` rounds without new units.
    grad_step: finite-difference step, times max(scale, |x| / sqrt(d)).
    max_queries, max_seconds: hard limits of the whole attack (None: none).
  """
  scale: float = 1.0
  t_max: float = 8.0
  lines_per_round: int = 1
  max_rounds: int = 40
  patience: int = 2
  grad_step: float = 1e-3
  max_queries: Optional[int] = None
  max_seconds: Optional[float] = 600.0


@dataclasses.dataclass
class Extraction:
  """Result: the recovered network (same convention as victims; in probabilities mode class 0's column of w1
  and b1[0] are 0 and the rest hold the logit differences to class 0), queries, seconds, units found, and
  per-stage statistics."""
  net: TwoLayerNet
  queries: int
  seconds: float
  hidden_units_found: int
  rounds: int
  stats: dict


def _segments(kinks: search.Kinks, n_lines: int, t_max: float):
  """The segments between consecutive kinks of each line: (line (S,), mid t (S,), half-length in t (S,), and for
  every kink the index of the segment on its left; the one on its right is that index + 1)."""
  left = np.zeros(len(kinks.t), int)
  line, mid, half = [], [], []
  for l in range(n_lines):
    sel = np.flatnonzero(kinks.line == l)
    bounds = np.concatenate([[-t_max], kinks.t[sel], [t_max]])
    left[sel] = len(mid) + np.arange(len(sel))
    mid.extend(0.5 * (bounds[:-1] + bounds[1:]))
    half.extend(0.5 * np.diff(bounds))
    line.extend([l] * (len(sel) + 1))
  return np.array(line, int), np.array(mid), np.array(half), left


def _round(q: queries.Querier, units: recover.Units, cfg: Config, t_max: float, rng, stats: dict):
  """One round: search new lines, recover a unit for every kink off the known hyperplanes; returns all units."""
  d = units.u.shape[1]
  starts = rng.normal(size=(cfg.lines_per_round, d)) * cfg.scale
  dirs = rng.normal(size=(cfg.lines_per_round, d)) * cfg.scale
  q0 = q.queries
  kinks = search.find_kinks(q, starts, dirs, t_max)
  stats["search_queries"] += q.queries - q0
  stats["kinks"] += len(kinks.t)
  stats["unresolved_intervals"] += kinks.unresolved
  x = starts[kinks.line] + kinks.t[:, None] * dirs[kinks.line]
  new = np.flatnonzero(~recover.same_hyperplane(units, x, 1e-7 * (cfg.scale + np.linalg.norm(x, axis=1))))
  if len(new) == 0:
    return units
  seg_line, seg_mid, seg_half, seg_left = _segments(kinks, cfg.lines_per_round, t_max)
  left, right = seg_left[new], seg_left[new] + 1
  need = np.unique(np.concatenate([left, right]))
  where = np.full(len(seg_mid), -1)
  where[need] = np.arange(len(need))
  points = starts[seg_line[need]] + seg_mid[need, None] * dirs[seg_line[need]]
  # hyperplanes through the bulk fan out: distances to them (and so safe steps) grow with |point| / sqrt(d)
  reach = np.maximum(cfg.scale, np.linalg.norm(points, axis=1) / np.sqrt(d))
  eps = np.minimum(cfg.grad_step * reach, 0.25 * seg_half[need] * np.linalg.norm(dirs[seg_line[need]], axis=1))
  q0 = q.queries
  jac, ok, used = recover.gradients(q, points, eps, rng)
  stats["gradient_queries"] += q.queries - q0
  cand, ok_rank = recover.units_from_jumps(jac[where[right]] - jac[where[left]], dirs[kinks.line[new]], x[new])
  q0 = q.queries
  cand, ok_ref, width, xk = recover.refine(q, cand, cfg.scale, rng)
  stats["refine_queries"] += q.queries - q0
  keep = ok[where[left]] & ok[where[right]] & ok_rank & ok_ref
  stats["rejected_kinks"] += int(np.sum(~keep))
  cand, width, xk = recover.Units(*(a[keep] for a in cand)), width[keep], xk[keep]
  step = np.minimum(used[where[left]], used[where[right]])[keep]
  # rows measured with steps far below the usual one (crowded segments) are measured again beside x_k
  reach = np.maximum(cfg.scale, np.linalg.norm(xk, axis=1) / np.sqrt(d))
  small = step < 0.25 * cfg.grad_step * reach
  if np.any(small):
    q0 = q.queries
    sub = recover.Units(*(a[small] for a in cand))
    polished, _ = recover.polish_rows(q, sub, xk[small], width[small], cfg.grad_step * reach[small], rng)
    cand = recover.Units(*(np.concatenate([a[~small], b]) for a, b in zip(cand, polished)))
    stats["polish_queries"] += q.queries - q0
    stats["polished_units"] += int(np.sum(small))
  return recover.dedup(recover.concat_units(units, cand))


def extract(oracle: Oracle, input_dim: int, cfg: Config = Config(), seed: int = 0) -> Extraction:
  """Recovers a two-layer ReLU network functionally equivalent to the oracle's victim.

  Args:
    oracle: an Oracle with output 'logits' or 'probabilities' over a float64 backend; all queries go through it.
    input_dim: d.
    cfg: Config. seed: seed of every random choice.
  Returns:
    Extraction. Raises an ExtractionError subclass (errors.py) when the oracle is not exact float64 piecewise
    linear, no critical point is found, a limit is reached, or the signs / second layer cannot be solved.
  """
  q = queries.Querier(oracle, queries.Limits(cfg.max_queries, cfg.max_seconds))
  rng = np.random.default_rng(seed)
  probe = queries.probe(q, input_dim, cfg.scale, rng)
  m = q(np.zeros((1, input_dim)), "output size").shape[1]
  if m == 0:
    raise ValueError("the oracle has one class: its probabilities carry no information")
  stats = dict(probe_bits=probe.precision_bits, search_queries=0, gradient_queries=0, refine_queries=0,
               polish_queries=0, polished_units=0, kinks=0, unresolved_intervals=0, rejected_kinks=0,
               layer2_queries=0, sign_attempts=0)
  units, quiet, error = recover.empty_units(input_dim, m), 0, None
  for r in range(cfg.max_rounds):
    before = len(units)
    t_max = cfg.t_max * min(r + 1, 4)
    units = _round(q, units, cfg, t_max, rng, stats)
    logging.info("round %d: %d units, %d queries", r, len(units), q.queries)
    quiet = quiet + 1 if len(units) == before else 0
    if len(units) == 0 and stats["kinks"] == 0 and quiet >= cfg.patience:
      raise NoCriticalPointsError(
          f"no critical point on {r + 1} lines (|t| <= {t_max:g}, scale {cfg.scale:g}) after "
          f"{q.queries} queries: the victim looks affine")
    if quiet < cfg.patience or len(units) == 0:
      continue
    stats["sign_attempts"] += 1
    q0 = q.queries
    x = second_layer.sample_points(units, cfg.scale, 2 * len(units) + 16, rng)
    g = q(x, "second layer")
    stats["layer2_queries"] += q.queries - q0
    try:
      flips = second_layer.flip_signs(units, x, g)
    except SignsNotIdentifiableError:
      raise
    except SignRecoveryError as e:  # units missing: search on
      error, quiet = e, 0
      continue
    layer2 = second_layer.fit(units, flips, x, g)
    break
  else:
    raise error or ExtractionError(f"no consistent network after {cfg.max_rounds} rounds ({q.queries} queries)")
  w1, b1 = layer2.w1, layer2.b1
  if oracle.output == "probabilities":
    w1 = np.concatenate([np.zeros((len(w1), 1)), w1], axis=1)
    b1 = np.concatenate([[0.0], b1])
  net = TwoLayerNet(layer2.u.T.copy(), layer2.beta, w1, b1)
  stats["layer2_residual"] = layer2.residual
  stats["verify_error"] = _verify(q, net, layer2, cfg.scale, rng, oracle.output == "probabilities")
  return Extraction(net, q.queries, q.seconds, len(units), r + 1, stats)


def _verify(q, net: TwoLayerNet, layer2, scale: float, rng, differences: bool, count: int = 64) -> float:
  """Relative max error of the recovered g at fresh points (Gaussian and near the hyperplanes); raises above 1e-8."""
  units = recover.Units(layer2.u, layer2.beta, layer2.w1)
  x = np.concatenate([rng.normal(size=(count, net.w0.shape[0])) * scale,
                      second_layer.sample_points(units, scale, count, rng)])
  g = q(x, "verification")
  mine = np.maximum(x @ net.w0 + net.b0, 0) @ net.w1 + net.b1
  if differences:
    mine = mine[:, 1:] - mine[:, :1]
  err = float(np.max(np.abs(mine - g)) / (np.max(np.abs(g)) + 1e-300))
  if err > 1e-8:
    raise ExtractionError(f"verification failed, precision reached: 2^{np.log2(err):.1f}: the recovered network is "
                          f"off by {err:.2g} (relative, limit 1e-8) at fresh points (a slightly noisy oracle?)")
  return err
