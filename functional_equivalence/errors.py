"""Exceptions of the functionally-equivalent extraction attack.

Every way the attack can fail ends in one of these, with a message that says what was measured and what the
attack needs, never in an endless loop: each search is bounded in queries and seconds (`queries.Limits`).
"""

from __future__ import annotations


class ExtractionError(RuntimeError):
  """Base class: the attack stopped without a functionally-equivalent network."""


class OraclePrecisionError(ExtractionError):
  """The oracle's answers are not exact float64 values of a piecewise-linear function (float32, noise, rounding).

  Attributes:
    precision_bits: the measured relative precision of the answers, -log2 (e.g. ~23 for a float32 oracle).
  """

  def __init__(self, message: str, precision_bits: float):
    super().__init__(message)
    self.precision_bits = precision_bits


class NotPiecewiseLinearError(ExtractionError):
  """The victim is not piecewise linear (e.g. a smooth activation): its slopes change continuously."""


class NoCriticalPointsError(ExtractionError):
  """A search found no critical point at all (the function looks affine along every line searched)."""


class LayerNotSettledError(ExtractionError):
  """A layer's search of the deep attack kept finding new units or features until its round limit; `state` holds
  the search's state (deep/layer.LayerState: its units so far) where the search gives it."""

  def __init__(self, message: str, state=None):
    super().__init__(message)
    self.state = state


class LimitReachedError(ExtractionError):
  """A query or time limit of the attack, or the oracle's own budget, ran out before the attack finished."""


class SignRecoveryError(ExtractionError):
  """The first-layer signs or the second layer could not be determined consistently (units missing, or the
  signs are not identifiable, e.g. more hidden units than outputs times (inputs + 1))."""


class SignsNotIdentifiableError(SignRecoveryError):
  """The sign system is rank deficient: more hidden units than outputs times (inputs + 1) allow (e.g. h > d with
  one output), so more searching cannot help."""


class VictimFileError(ValueError):
  """A victim .npz file is missing, incomplete, inconsistent or holds non-finite values."""
