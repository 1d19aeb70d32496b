"""Full logit vectors from an API that returns only the top-k log-probabilities but accepts a logit bias
(Carlini et al. 2024, Sec. 5.3).

For one prompt: an unbiased request gives the top-k tokens; the first is the reference R (the argmax) and the
other k-1 come with z_t - z_R = logprob_t - logprob_R. Every other token is then asked in groups of k-1, each
token biased by B: if B lifts the group above every unbiased token but R, the answer's top-k is exactly the
group plus R, and for t in the group

    z_t - z_R = (logprob_t - B) - logprob_R          (the normaliser cancels).

So a vector costs 1 + ceil((V - k) / (k - 1)) requests, V / (k - 1) in the limit: 0.25 requests per logit for
top-5, the paper's figure for this attack (its Table 3, as we recall it). Answers are exact up to the API's
rounding; that rounding grows with the biased logits' magnitude (a float32 server adds the bias in float32), so B
is kept as small as works: the first prompt uses the API's bound `max_bias`, later ones 1.5 x the largest logit
range below R seen so far + 1, and any group whose answer misses a biased token or R is asked again at
`max_bias` (counted; `Reconstruction.retries`). A group that fails even then means the prompt's logits span more
than the bound allows: `BiasTooSmall`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from extraction.lm_oracle import LogitBias, TopK
from functional_equivalence.errors import ExtractionError


class BiasTooSmall(ExtractionError):
  """A token could not be lifted into the top-k with the API's largest allowed bias."""


@dataclasses.dataclass
class Reconstruction:
  """Logit vectors rebuilt so far: rows of z - z_R (float64), and what they cost."""
  vectors: list = dataclasses.field(default_factory=list)
  requests: int = 0
  retries: int = 0
  range_seen: float = 0.0  # the largest z_R - min_t z_t so far
  dtype: Optional[str] = None  # of the API's log-probabilities

  @property
  def requests_per_vector(self) -> float:
    return self.requests / max(len(self.vectors), 1)


def group_size(oracle) -> int:
  """Tokens biased per request: k - 1 (one slot of the top-k stays for the reference), capped by the API."""
  k = int(oracle.top_k)
  if k < 2:
    raise ExtractionError(f"the logit-bias attack needs top_k >= 2 (one slot for the reference token), got {k}")
  return min(k - 1, int(oracle.max_biased_tokens))


CHUNK = 1024  # requests per oracle call: bounds the memory of an API answering (requests x V) logits at once


def _ask(oracle, prompt: np.ndarray, groups: np.ndarray, bias: float, state: Reconstruction) -> TopK:
  """`prompt` once per row of `groups` (token ids, -1 padded), each token of a row biased by `bias`."""
  parts = []
  for i in range(0, len(groups), CHUNK):
    ids = np.asarray(groups[i:i + CHUNK], np.int64)
    parts.append(oracle(np.repeat(prompt[None], len(ids), axis=0), LogitBias(ids, np.where(ids >= 0, bias, 0.0))))
    state.requests += len(ids)
  return TopK(np.concatenate([p.ids for p in parts]), np.concatenate([p.logprobs for p in parts]))


def _read(answer, groups: np.ndarray, ref: int, bias: float, z: np.ndarray) -> np.ndarray:
  """Writes z_t - z_R for every group whose answer holds all its tokens and R; returns the failed rows' mask."""
  ids, lp = np.asarray(answer.ids), np.asarray(answer.logprobs, np.float64)
  has_ref = ids == ref
  lp_ref = np.where(has_ref, lp, 0.0).sum(axis=1)
  hit = ids[:, None, :] == groups[:, :, None]  # (requests, group, k)
  failed = ~has_ref.any(axis=1) | ~(hit.any(axis=2) | (groups < 0)).all(axis=1)
  ok = ~failed[:, None] & (groups >= 0)
  lp_tok = np.where(hit, lp[:, None, :], 0.0).sum(axis=2)
  z[groups[ok]] = (lp_tok - bias - lp_ref[:, None])[ok]
  return failed


def reconstruct_one(oracle, prompt: np.ndarray, state: Reconstruction, bias: Optional[float] = None) -> np.ndarray:
  """The logit vector z - z_R (V,) of one prompt (module docstring); appends it to `state` and returns it.

  Args:
    oracle: an LM oracle in output mode 'top_k_bias' (vocab_size, top_k, max_bias, max_biased_tokens public).
    prompt: (L,) token ids.
    state: the running reconstruction (costs, range seen for the adaptive bias).
    bias: a fixed bias for every group (None: adaptive, see module docstring).
  """
  vocab, g, bound = int(oracle.vocab_size), group_size(oracle), float(oracle.max_bias)
  first = oracle(prompt[None])
  state.requests += 1
  state.dtype = str(np.asarray(first.logprobs).dtype)
  top, top_lp = np.asarray(first.ids[0]), np.asarray(first.logprobs[0], np.float64)
  ref = int(top[0])
  z = np.full(vocab, np.nan)
  z[top] = top_lp - top_lp[0]
  rest = np.setdiff1d(np.arange(vocab), top)
  pad = (-len(rest)) % g
  groups = np.concatenate([rest, np.full(pad, -1)]).reshape(-1, g)
  if bias is None:
    bias = bound if not state.vectors else min(bound, 1.5 * state.range_seen + 1.0)
  bias = min(float(bias), bound)
  failed = _read(_ask(oracle, prompt, groups, bias, state), groups, ref, bias, z)
  if failed.any() and bias < bound:
    again = groups[failed]
    state.retries += len(again)
    failed = _read(_ask(oracle, prompt, again, bound, state), again, ref, bound, z)
  if failed.any():
    raise BiasTooSmall(f"{int(failed.sum())} group(s) of tokens stayed out of the top-{oracle.top_k} with the API's "
                       f"largest bias {bound}: this prompt's logits span more than the bound allows")
  state.range_seen = max(state.range_seen, float(-np.min(z)))
  state.vectors.append(z)
  return z
