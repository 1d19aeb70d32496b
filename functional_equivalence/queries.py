"""How the attack asks the oracle: float64 answers, query/time limits, and a precision probe before any search.

The attack sees a function g: R^d -> R^m through `Querier`:
  * oracle output 'logits':        g(x) = logits (m = k);
  * oracle output 'probabilities': g(x) = log p_i(x) - log p_0(x) for i = 1..k-1 (m = k-1), i.e. the logit
    differences to class 0. From these the network is recoverable only up to a common additive shift of every
    logit (a shift of b1 and of the columns of w1 shared by all classes); `attack` reports w1, b1 with class 0's
    column and bias set to 0, and `align` compares logit differences in that mode.
Both are piecewise linear in x when the victim is a two-layer ReLU network, and exact to float64 rounding when
the oracle computes in float64. `probe` checks exactly that before the search starts.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Optional

import numpy as np

from extraction.oracle import BudgetExceeded, Oracle
from functional_equivalence.errors import (LimitReachedError, NotPiecewiseLinearError, OraclePrecisionError)


@dataclasses.dataclass(frozen=True)
class Limits:
  """Hard limits of one attack run: queries through this attack and wall-clock seconds (None: unlimited)."""
  max_queries: Optional[int] = None
  max_seconds: Optional[float] = None


class Querier:
  """Turns an `Oracle` into g (see module docstring), counting queries and enforcing `Limits`.

  Every query of the attack goes through `__call__`, which asks the oracle once per batch and counts the answered
  inputs per stage (`by_stage`: the `stage` names of the calls).
  """

  def __init__(self, oracle: Oracle, limits: Limits = Limits()):
    if oracle.output not in ("logits", "probabilities"):
      raise ValueError(f"functionally-equivalent extraction needs oracle output 'logits' or 'probabilities', "
                       f"got {oracle.output!r}")
    self.oracle, self.limits = oracle, limits
    self.start_used, self.start_time = oracle.used, time.monotonic()
    self.by_stage: collections.Counter = collections.Counter()

  @property
  def queries(self) -> int:
    """Inputs asked by this attack so far."""
    return self.oracle.used - self.start_used

  @property
  def seconds(self) -> float:
    return time.monotonic() - self.start_time

  def check(self, stage: str, upcoming: int = 0) -> None:
    """Raises LimitReachedError when the next `upcoming` queries or the time would pass the limits."""
    lim = self.limits
    if lim.max_queries is not None and self.queries + upcoming > lim.max_queries:
      raise LimitReachedError(f"{stage}: query limit {lim.max_queries} reached ({self.queries} used, "
                              f"{upcoming} more needed)")
    if lim.max_seconds is not None and self.seconds > lim.max_seconds:
      raise LimitReachedError(f"{stage}: time limit {lim.max_seconds:g} s reached ({self.queries} queries used)")

  def __call__(self, x: np.ndarray, stage: str = "query", underflow_ok: bool = False) -> np.ndarray:
    """g(x) as float64 (N, m). Raises OraclePrecisionError if the oracle answers in less than float64, or (with
    probabilities, unless `underflow_ok`: then those rows are NaN) when a probability underflows to 0."""
    x = np.asarray(x, np.float64)
    self.check(stage, upcoming=len(x))
    try:
      y = self.oracle(x)
    except BudgetExceeded as e:
      raise LimitReachedError(f"{stage}: oracle budget exhausted: {e}") from e
    self.by_stage[stage] += len(x)
    y = np.asarray(y)
    if y.dtype != np.float64:
      bits = np.finfo(y.dtype).nmant if np.issubdtype(y.dtype, np.floating) else 0
      raise OraclePrecisionError(f"the oracle answers in {y.dtype} (precision 2^-{bits + 1}); functionally-"
                                 f"equivalent extraction needs float64 answers", precision_bits=bits + 1)
    if self.oracle.output == "logits":
      return y
    zero = np.any(y < np.finfo(np.float64).tiny, axis=1)  # 0 or subnormal: no longer float64-precise
    if np.any(zero) and not underflow_ok:
      raise OraclePrecisionError(
          f"{stage}: a probability underflowed (logit differences above ~708); use a smaller "
          f"input scale or domain, or the logits output", precision_bits=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
      logp = np.log(y)
      out = logp[:, 1:] - logp[:, :1]
    out[zero] = np.nan
    return out


@dataclasses.dataclass(frozen=True)
class Probe:
  """What `probe` measured. precision_bits: -log2 of the answers' relative noise (about 52 for an exact float64
  oracle); slope_change: median relative change of the slope between steps 1e-3 and 1e-5 (0 if linear)."""
  precision_bits: float
  slope_change: float
  queries: int


def probe(query: Querier, input_dim: int, scale: float, rng: np.random.Generator, points: int = 16,
          required_bits: float = 44.0) -> Probe:
  """Checks that g is an exact float64 piecewise-linear function before any search (4 * points queries).

  At random points x ~ N(0, scale^2 I) and random unit directions v, measures the slopes (g(x + s v) - g(x)) / s
  for steps s = scale * (1e-3, 1e-5, 1e-7). For a float64 piecewise-linear g they agree at almost every point
  up to rounding; noise or rounding of size e shows as slope differences ~ e / s, a smooth g as differences ~ s
  (beyond the rounding).

  Raises:
    OraclePrecisionError: answers reproducible only to 2^-b relative with b < required_bits (float32: b ~ 23).
    NotPiecewiseLinearError: the slopes change continuously with the step (a smooth, non-ReLU victim).
  """
  x = rng.normal(size=(points, input_dim)) * scale
  v = rng.normal(size=(points, input_dim))
  v /= np.linalg.norm(v, axis=1, keepdims=True)
  steps = scale * np.array([1e-3, 1e-5, 1e-7])
  pts = np.concatenate([x] + [x + s * v for s in steps])
  g = query(pts, "precision probe").reshape(4, points, -1)
  slopes = (g[1:] - g[:1]) / steps[:, None, None]                           # (3, points, m)
  mag = np.max(np.abs(g), axis=(0, 2)) + 1e-300                             # (points,)
  # noise estimate: the value error that would explain the slope difference at the smallest step
  noise = np.max(np.abs(slopes[2] - slopes[1]), axis=-1) * steps[2] / mag
  noise = float(np.median(noise))
  bits = 52.0 if noise <= 2.0 ** -52 else -math.log2(noise)
  slope_mag = np.max(np.abs(slopes[0]), axis=-1) + 1e-300
  # the slope change beyond what rounding explains (large logits, e.g. a unit active everywhere with a big bias,
  # make the slopes at the small step noisy without making g smooth)
  rounding = 8 * max(noise, 2.0 ** -52) * mag / steps[1]
  change = float(np.median(np.maximum(np.max(np.abs(slopes[1] - slopes[0]), axis=-1) - rounding, 0) / slope_mag))
  if bits < required_bits:
    raise OraclePrecisionError(
        f"precision reached: the oracle's answers are reproducible only to about 2^-{bits:.0f} relative "
        f"(an exact float64 piecewise-linear oracle gives ~2^-50; this attack needs 2^-{required_bits:.0f}): "
        f"a float32, noisy or rounded oracle cannot be extracted exactly", precision_bits=bits)
  if change > 1e-6:
    raise NotPiecewiseLinearError(
        f"the victim is not piecewise linear: its slope changes by a median 2^{math.log2(change):.1f} (relative) "
        f"between steps of {steps[0]:.0e} and {steps[1]:.0e} at random points; a ReLU network's does not change")
  return Probe(bits, change, 4 * points)
