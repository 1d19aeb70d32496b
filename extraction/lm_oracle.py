"""The oracle of a language-model API: prompts in, next-token scores out, as real LM APIs answer.

`LMOracle` is an `extraction.oracle.Oracle` (same hard budget, same count of answered requests `used`, same record
of asked prompts) whose inputs are prompts -- token ids (N, L), one request each -- and whose answers are in one of
`LM_OUTPUT_MODES`:
  * ``logits``      the full next-token logit vector, (N, V) in the victim's precision;
  * ``top_k``       the k largest next-token log-probabilities: `TopK(ids (N, k), logprobs (N, k))`, best first;
  * ``top_k_bias``  the same after adding a per-request logit bias (`LogitBias`) to the logits, as the OpenAI API's
                    `logit_bias` + `top_logprobs`; bounded: |bias| <= max_bias and at most max_biased_tokens
                    tokens per request (OpenAI: 100 and 300), checked before anything is answered or counted;
  * ``argmax``      the most likely next token only, (N,) int32 (greedy decoding of one token).
It also counts `tokens`, the prompt tokens of every answered request (what an LM API bills). Log-probabilities
are computed in the logits' precision, as a server would (float32 for a float32 victim).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from extraction.oracle import Oracle

LM_OUTPUT_MODES = ("logits", "top_k", "top_k_bias", "argmax")
LM_ONLY_OUTPUTS = ("top_k_bias", "argmax")  # the others share their names with a classifier API's modes


class TopK(NamedTuple):
  """Top-k answers: token ids (N, k) int32 and their log-probabilities (N, k), best first."""
  ids: np.ndarray
  logprobs: np.ndarray


class LogitBias(NamedTuple):
  """A logit bias per request: token ids (N, m) int (-1 pads a row with fewer tokens) and values (N, m)."""
  ids: np.ndarray
  values: np.ndarray


class BiasRefused(ValueError):
  """A logit bias the API does not accept (over its bounds, unknown tokens, or a mode without bias)."""


def validate_lm_output(output: str, top_k: Optional[int], vocab_size: Optional[int] = None) -> None:
  """Raises ValueError (one line) when (output, top_k) is not a valid LM API setting."""
  if output not in LM_OUTPUT_MODES:
    raise ValueError(f"unknown LM oracle output {output!r}; choose one of {', '.join(LM_OUTPUT_MODES)}")
  if output in ("top_k", "top_k_bias"):
    if top_k is None or top_k < 1:
      raise ValueError(f"output {output!r} needs top_k >= 1, got {top_k}")
    if vocab_size is not None and top_k >= vocab_size:
      raise ValueError(f"top_k={top_k} must be smaller than the vocabulary ({vocab_size})")


def check_bias(bias: Optional[LogitBias], n: int, vocab_size: int, max_bias: float, max_tokens: int) -> LogitBias:
  """The bias of n requests as int64 ids / float64 values of shape (n, m), or BiasRefused (one line)."""
  if bias is None:
    return LogitBias(np.full((n, 0), -1, np.int64), np.zeros((n, 0)))
  ids, values = np.asarray(bias.ids), np.asarray(bias.values)
  if ids.ndim == 1:
    ids, values = np.broadcast_to(ids, (n,) + ids.shape), np.broadcast_to(values, (n,) + values.shape)
  if ids.shape != values.shape or ids.ndim != 2 or len(ids) != n:
    raise BiasRefused(f"logit bias ids {ids.shape} and values {values.shape} must both be (N, m) for N={n} prompts")
  if ids.size and ids.dtype.kind not in "iu":
    raise BiasRefused(f"logit bias token ids must be integers, got {ids.dtype}")
  used = ids >= 0
  if np.any(ids >= vocab_size) or np.any(ids < -1):
    raise BiasRefused(f"logit bias token ids must lie in 0..{vocab_size - 1} (-1 pads)")
  counts = used.sum(axis=1)
  if counts.size and counts.max() > max_tokens:
    raise BiasRefused(f"a request biases {counts.max()} tokens; this API accepts at most {max_tokens}")
  if not np.all(np.isfinite(values)) or np.any(np.abs(np.where(used, values, 0.0)) > max_bias):
    raise BiasRefused(f"logit bias values must be finite with |bias| <= {max_bias}")
  ordered = np.sort(np.where(used, ids, -1 - np.arange(ids.shape[1])), axis=1)
  if np.any(ordered[:, 1:] == ordered[:, :-1]):
    raise BiasRefused("a request biases the same token twice")
  return LogitBias(ids.astype(np.int64), np.where(used, values, 0.0).astype(np.float64))


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """Log-probabilities along the last axis, in the logits' own precision."""
  m = logits.max(axis=-1, keepdims=True)
  z = logits - m
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def top_k_logprobs(logits: np.ndarray, k: int, bias: Optional[LogitBias] = None) -> TopK:
  """The k most likely tokens of softmax(logits + bias) and their log-probabilities (best first, ties by id).

  The bias is added in the logits' precision (a float32 server adds it in float32)."""
  logits = np.array(logits, copy=True)
  if bias is not None and bias.ids.size:
    rows = np.broadcast_to(np.arange(len(logits))[:, None], bias.ids.shape)
    used = bias.ids >= 0
    np.add.at(logits, (rows[used], bias.ids[used]), bias.values[used].astype(logits.dtype))
  lp = log_softmax(logits)
  part = np.argpartition(-lp, k - 1, axis=-1)[:, :k]
  vals = np.take_along_axis(lp, part, axis=-1)
  order = np.lexsort((part, -vals), axis=-1)
  ids = np.take_along_axis(part, order, axis=-1)
  return TopK(ids.astype(np.int32), np.take_along_axis(vals, order, axis=-1))


def lm_answers(logits: np.ndarray, output: str, top_k: Optional[int] = None, bias: Optional[LogitBias] = None):
  """Turns next-token logits (N, V) into the API's answer for one output mode (module docstring)."""
  logits = np.asarray(logits)
  if output == "logits":
    return logits
  if output == "argmax":
    return np.argmax(logits, axis=-1).astype(np.int32)
  if output in ("top_k", "top_k_bias"):
    return top_k_logprobs(logits, top_k, bias if output == "top_k_bias" else None)
  raise ValueError(f"unknown LM oracle output {output!r}")


@dataclasses.dataclass
class LMOracle(Oracle):
  """A language model behind an API with a hard budget of requests (one prompt = one request).

  Attributes (beyond `Oracle`'s backend, output, top_k, budget, batch_size, record_inputs):
    vocab_size: V, public (an API's tokenizer is public).
    max_len: the longest prompt the API takes (None: no bound checked here).
    max_bias: bound on |logit bias| per token (output 'top_k_bias').
    max_biased_tokens: bound on the number of biased tokens per request.
    tokens: prompt tokens of every answered request.
  `backend` maps prompts (N, L) int to next-token logits (N, V). Defenses are not supported.
  """
  output: str = "logits"
  vocab_size: int = 0
  max_len: Optional[int] = None
  max_bias: float = 100.0
  max_biased_tokens: int = 300
  tokens: int = dataclasses.field(default=0, init=False)

  def __post_init__(self):
    validate_lm_output(self.output, self.top_k, self.vocab_size or None)
    if self.vocab_size < 2:
      raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
    if self.budget is not None and self.budget < 0:
      raise ValueError(f"budget must be >= 0 or None, got {self.budget}")
    if not self.max_bias > 0 or self.max_biased_tokens < 1:
      raise ValueError(f"max_bias must be > 0 and max_biased_tokens >= 1, got {self.max_bias}, "
                       f"{self.max_biased_tokens}")
    if self.defenses is not None:
      raise ValueError("LMOracle does not apply defenses")

  def logits(self, x) -> np.ndarray:
    """Raw next-token logits of prompts x (N, L), counted (requests and tokens) against the budget."""
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "iu":
      raise ValueError(f"prompts must be an integer array (N, L) of token ids, got {x.dtype} {x.shape}")
    if self.max_len is not None and x.shape[1] > self.max_len:
      raise ValueError(f"prompts of {x.shape[1]} tokens; this API takes at most {self.max_len}")
    out = super().logits(x)
    self.tokens += int(x.size)
    return out

  def __call__(self, prompts, bias: Optional[LogitBias] = None):
    """Answers prompts (N, L) in this oracle's output mode; `bias` only with output 'top_k_bias'.

    Raises BiasRefused (nothing answered, nothing counted) for a bias the API does not accept, and
    `extraction.oracle.BudgetExceeded` for a query past the budget.
    """
    prompts = np.asarray(prompts)
    if bias is not None and self.output != "top_k_bias":
      raise BiasRefused(f"this API (output {self.output!r}) accepts no logit bias")
    if self.output == "top_k_bias":
      bias = check_bias(bias, len(prompts), self.vocab_size, self.max_bias, self.max_biased_tokens)
    logits = self.logits(prompts)
    if self.output != "top_k_bias":
      return lm_answers(logits, self.output, self.top_k)
    parts = [top_k_logprobs(logits[i:i + self.batch_size], self.top_k,
                            LogitBias(bias.ids[i:i + self.batch_size], bias.values[i:i + self.batch_size]))
             for i in range(0, len(logits), self.batch_size)]
    if not parts:
      return TopK(np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), logits.dtype))
    return TopK(np.concatenate([p.ids for p in parts]), np.concatenate([p.logprobs for p in parts]))
