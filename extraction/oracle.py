"""The oracle: the only way any attack asks the victim anything.

An `Oracle` wraps a *backend* -- any batched callable mapping inputs (N, ...) to logits (N, C): a jitted Flax
`apply` with bound variables (`flax_backend`), a float64 two-layer network, or an HTTP client -- and turns its
logits into what the API returns (`OUTPUT_MODES`). It enforces a hard query budget, counts every answered input
and (optionally) records which inputs were asked.

Every output mode returns an array of shape (N, C) so that downstream code is uniform:
  * ``logits``         raw logits, dtype preserved (float64 backends stay float64);
  * ``probabilities``  softmax of the logits;
  * ``top_k``          the k largest probabilities, every other entry 0 (the API reveals nothing about them);
  * ``labels``         one-hot of the arg-max class.

Two more modes are answered by the backend itself, by its method of the same name, not from logits
(`BACKEND_MODES`; the victims that have them are in extraction/sklearn_victims.py and extraction/two_layer.py):
  * ``leaf``       (N, 1 + v): a decision tree's leaf identifier (an opaque number) and the leaf's value (class
                   distribution or regression value); inputs may hold NaN for features left out;
  * ``gradients``  (N, k, d + 1): the input gradient of each of the k logits, and the logit itself in the last
                   column (the prediction an explanation API returns beside its explanation).
They share the budget, batching and record of `logits`; defenses do not apply to them.

Optional `defenses` (`extraction.defenses.Defenses`: rounding, Gaussian noise, reverse sigmoid) are applied to the
answers of `__call__`, as the prediction service (`launch.serve`) applies them per API key; `logits` stays raw.
With `noise_key` the noise is keyed by each input's bytes (`extraction.defenses.keyed_normal`), as the service
draws it: a local oracle given a served key's noise key (`service.secret.noise_key`) answers as that key.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

OUTPUT_MODES = ("logits", "probabilities", "top_k", "labels")
BACKEND_MODES = ("leaf", "gradients")  # answered by `backend.<mode>(x)` (see module docstring)

if TYPE_CHECKING:
  from extraction.defenses import Defenses

Backend = Callable[[np.ndarray], Any]


class BudgetExceeded(RuntimeError):
  """Raised before answering a query that would take the oracle past its budget."""


def softmax(logits: np.ndarray) -> np.ndarray:
  """Numerically stable softmax along the last axis, in the logits' own precision."""
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def validate_output_mode(output: str, top_k: Optional[int], num_classes: Optional[int] = None) -> None:
  """Raises ValueError with a one-line message when (output, top_k) is not a valid API setting."""
  if output not in OUTPUT_MODES:
    raise ValueError(f"unknown oracle output {output!r}; choose one of {', '.join(OUTPUT_MODES)}")
  if output == "top_k":
    if top_k is None or top_k < 1:
      raise ValueError(f"output 'top_k' needs top_k >= 1, got {top_k}")
    if num_classes is not None and top_k >= num_classes:
      raise ValueError(f"top_k={top_k} must be smaller than the number of classes ({num_classes})")


def transform_logits(logits: np.ndarray, output: str, top_k: Optional[int] = None) -> np.ndarray:
  """Turns victim logits (N, C) into the API's answer (N, C) for one output mode (see module docstring)."""
  logits = np.asarray(logits)
  if output == "logits":
    return logits
  if output == "labels":
    return np.eye(logits.shape[-1], dtype=np.float32)[np.argmax(logits, axis=-1)]
  probs = softmax(logits)
  if output == "probabilities":
    return probs
  if output == "top_k":
    keep = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    out = np.zeros_like(probs)
    np.put_along_axis(out, keep, np.take_along_axis(probs, keep, axis=-1), axis=-1)
    return out
  raise ValueError(f"unknown oracle output {output!r}")


@dataclasses.dataclass
class Oracle:
  """A victim behind a prediction API with a hard query budget.

  Attributes:
    backend: batched callable, inputs (N, ...) -> logits (N, C).
    output: one of OUTPUT_MODES.
    top_k: k for output='top_k'.
    budget: maximum number of inputs answered over the oracle's life; None for unlimited.
    batch_size: inputs per backend call (large queries are split; answers are concatenated).
    record_inputs: keep a copy of every asked input (`asked`); switch off for millions of queries.
    defenses: applied to the answers of `__call__` (None: none); see extraction/defenses.py.
    noise_key: draw the defenses' noise from this secret and each input's bytes (`defenses.keyed_normal`) instead
      of from (noise_seed, inputs answered before): the same input always gets the same noise.
  """
  backend: Backend
  output: str = "probabilities"
  top_k: Optional[int] = None
  budget: Optional[int] = None
  batch_size: int = 1024
  record_inputs: bool = True
  defenses: Optional["Defenses"] = None
  noise_key: Optional[bytes] = dataclasses.field(default=None, repr=False)
  used: int = dataclasses.field(default=0, init=False)
  _asked: list = dataclasses.field(default_factory=list, init=False, repr=False)

  def __post_init__(self):
    if self.output in BACKEND_MODES:
      if not callable(getattr(self.backend, self.output, None)):
        raise ValueError(f"oracle output {self.output!r} needs a backend with a .{self.output}(x) method "
                         f"(see extraction/sklearn_victims.py, extraction/two_layer.py)")
    else:
      validate_output_mode(self.output, self.top_k)
    if self.budget is not None and self.budget < 0:
      raise ValueError(f"budget must be >= 0 or None, got {self.budget}")
    if self.defenses is not None:
      self.defenses.check(self.output)

  @property
  def remaining(self) -> Optional[int]:
    return None if self.budget is None else self.budget - self.used

  @property
  def asked(self) -> np.ndarray:
    """Every input answered so far, in order, as one array (empty if nothing was asked or recording is off)."""
    if not self._asked:
      return np.zeros((0,))
    return np.concatenate(self._asked, axis=0)

  def logits(self, x) -> np.ndarray:
    """Raw victim logits for x, counted against the budget (used by attacks that need logits internally)."""
    return self._answer(x, self.backend)

  def _answer(self, x, answer: Backend) -> np.ndarray:
    """`answer(x)` in batches, refused whole (BudgetExceeded) when it would pass the budget; counted, recorded."""
    x = np.asarray(x)
    n = x.shape[0]
    if self.budget is not None and self.used + n > self.budget:
      raise BudgetExceeded(
          f"query of {n} inputs refused: {self.used} of the budget of {self.budget} already used "
          f"({self.remaining} left)")
    chunks = [np.asarray(answer(x[i:i + self.batch_size])) for i in range(0, n, self.batch_size)]
    self.used += n
    if self.record_inputs:
      self._asked.append(np.array(x, copy=True))
    if not chunks:
      return np.zeros((0, 0))
    return np.concatenate(chunks, axis=0)

  def __call__(self, x) -> np.ndarray:
    """Answers a batch of inputs (N, ...) with (N, C) in this oracle's output mode; see module docstring."""
    if self.output in BACKEND_MODES:
      return self._answer(x, getattr(self.backend, self.output))
    offset = self.used
    logits = self.logits(x)
    answers = transform_logits(logits, self.output, self.top_k)
    if self.defenses is None:
      return answers
    from extraction import defenses as defenses_lib  # imports this module
    rng = defenses_lib.noise_rng(self.defenses, offset)
    normal = None
    if self.noise_key is not None and self.defenses.noise_std > 0:
      normal = defenses_lib.keyed_normal(self.noise_key, np.asarray(x), answers.shape[-1])
    return defenses_lib.apply_defenses(answers, logits, self.defenses, rng, output=self.output, top_k=self.top_k,
                                       normal=normal)


def model_backend(model, variables: Any, batch_size: int = 1024) -> Backend:
  """A Flax model with bound variables as a backend on uint8 images (jitted, fixed-size batches)."""
  from extraction.predict import predict_logits
  return functools.partial(predict_logits, model, variables, batch_size=batch_size)
