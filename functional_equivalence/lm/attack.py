"""Stealing the last layer of a language model through its API (Carlini et al., ICML 2024).

    result = steal_last_layer(oracle, Config(), seed=0)
    result.hidden_size, result.unembedding        # h, and W up to an h x h transform (vocab x h)

The attack asks random prompts (uniform token ids of length `prompt_len`), `step` at a time, and turns each
answer into a logit vector: directly with output 'logits'; with 'top_k_bias' by the logit-bias reconstruction of
`bias` (V/(k-1) requests per vector; vectors known up to a shift, so they are vocabulary-centred). After each
batch it looks at the singular values of all vectors so far (`spectrum.detect`); it stops at the first batch whose
largest gap passes the rule, so it needs about h + tail + step vectors without being told h. W is then recovered
from ceil(oversample x h) vectors (more are asked if needed; more vectors average the answers' rounding) by
`recover.recover_unembedding`. Outputs 'argmax' and 'top_k' (no bias) are refused before any query: they reveal
no full score vector. Every query goes through the oracle's `__call__`; the oracle counts and bounds them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Optional

import numpy as np

from functional_equivalence.errors import ExtractionError, LimitReachedError
from functional_equivalence.lm import bias as bias_lib
from functional_equivalence.lm import recover, spectrum

SCORE_MODES = ("logits", "top_k_bias")


class ScoresNeeded(ExtractionError):
  """The API does not return a full score vector, nor a way to rebuild one (argmax only, top-k without bias)."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Attack settings.

  Attributes:
    prompt_len: tokens per random prompt.
    step: logit vectors asked between two looks at the spectrum.
    gap_threshold, tail: the gap rule of `spectrum.detect`.
    final_norm: the assumption on the victim's last normalisation ('layernorm' or 'rmsnorm'), see `spectrum`.
    max_vectors: give up (LimitReachedError) when no gap is accepted with this many vectors.
    oversample: W is recovered from max(vectors at detection, ceil(oversample * h)) vectors.
    bias: fixed logit bias for 'top_k_bias' (None: adaptive, see `bias`).
  """
  prompt_len: int = 16
  step: int = 16
  gap_threshold: float = spectrum.DEFAULT_THRESHOLD
  tail: int = 2
  final_norm: str = "layernorm"
  max_vectors: int = 4096
  oversample: float = 1.0
  bias: Optional[float] = None

  def check(self) -> None:
    if self.prompt_len < 1 or self.step < 1 or self.tail < 1 or self.max_vectors < 2:
      raise ValueError(f"prompt_len, step, tail must be >= 1 and max_vectors >= 2: {self}")
    if not self.gap_threshold > 1 or not self.oversample > 0:
      raise ValueError(f"gap_threshold must be > 1 and oversample > 0: {self}")
    if self.final_norm not in spectrum.FINAL_NORMS:
      raise ValueError(f"final_norm must be one of {', '.join(spectrum.FINAL_NORMS)}, got {self.final_norm!r}")
    if self.bias is not None and not self.bias > 0:
      raise ValueError(f"bias must be > 0 (or None: adaptive), got {self.bias}")


@dataclasses.dataclass
class Result:
  """What the attack found and what it cost.

  Attributes:
    hidden_size: h read by the gap rule; rank, affine_rank: the linear and affine dimensions seen (None: no
      accepted gap), gap, affine_gap: their ratios.
    unembedding: (V, h) W_rec = W G (vocabulary-centred, i.e. P W G, when shift_invariant).
    vectors_at_detection, vectors: logit vectors when h was read, and used for W.
    queries, tokens: requests and prompt tokens the attack sent (the oracle's counts over the attack).
    requests_per_vector: API requests per logit vector (1 with logits; ~V/(k-1) with top_k_bias).
    bias_retries: groups asked again at the largest bias.
    answer_dtype: the dtype of the API's scores (float32 answers bound the precision).
  """
  hidden_size: int
  rank: Optional[int]
  affine_rank: Optional[int]
  gap: float
  affine_gap: float
  unembedding: np.ndarray
  singular_values: np.ndarray
  vectors_at_detection: int
  vectors: int
  queries: int
  tokens: Optional[int]
  requests_per_vector: float
  bias_retries: int
  shift_invariant: bool
  seconds: float
  answer_dtype: Optional[str] = None
  notes: tuple = ()


def refuse_unless_scores(output: str, top_k: Optional[int] = None) -> None:
  """Raises ScoresNeeded (one line) for an API output this attack cannot use."""
  if output == "argmax":
    raise ScoresNeeded("this attack needs scores: an argmax-only API returns one token per query, no logit vector "
                       "to stack (the paper's logprob-free attacks, Sec. 6, are not implemented); use an API with "
                       "output 'logits' or 'top_k_bias'")
  if output == "top_k":
    raise ScoresNeeded(f"this attack needs full score vectors: top-{top_k} log-probabilities without a logit bias "
                       f"reveal only {top_k} of the vocabulary's logits per prompt; use output 'top_k_bias' "
                       f"(logit bias) or 'logits'")
  if output not in SCORE_MODES:
    raise ScoresNeeded(f"output {output!r} is not an LM API output this attack can use; use one of "
                       f"{', '.join(SCORE_MODES)}")


class _Collector:
  """Asks prompts and keeps their logit vectors (vocabulary-centred for top_k_bias)."""

  def __init__(self, oracle, cfg: Config, seed: int):
    self.oracle, self.cfg = oracle, cfg
    self.rng = np.random.default_rng([seed, 0x5EA1])
    self.rows: list = []
    self.recon = bias_lib.Reconstruction()
    self.dtype = None  # of the API's answers: their precision bounds the attack's

  @property
  def vocab(self) -> int:
    return int(self.oracle.vocab_size)

  def ask(self, count: int) -> None:
    length = min(self.cfg.prompt_len, getattr(self.oracle, "max_len", None) or self.cfg.prompt_len)
    prompts = self.rng.integers(0, self.vocab, (count, length), dtype=np.int32)
    if self.oracle.output == "logits":
      for i in range(0, count, 256):  # bounded memory for large vocabularies
        raw = np.asarray(self.oracle(prompts[i:i + 256]))
        self.dtype = str(raw.dtype)
        if raw.shape != (len(prompts[i:i + 256]), self.vocab):
          raise ExtractionError(f"the API answered logits of shape {raw.shape} for {len(prompts[i:i + 256])} "
                                f"prompts over a vocabulary of {self.vocab}")
        self.rows.extend(raw.astype(np.float64))
      return
    for p in prompts:
      self.rows.append(recover.center_vocabulary(bias_lib.reconstruct_one(self.oracle, p, self.recon,
                                                                         self.cfg.bias)))
    self.dtype = self.recon.dtype

  def matrix(self) -> np.ndarray:
    return np.stack(self.rows)


def steal_last_layer(oracle, cfg: Config = Config(), seed: int = 0) -> Result:
  """Hidden size and unembedding of the LM behind `oracle` (module docstring).

  Args:
    oracle: an LM oracle (`extraction.lm_oracle.LMOracle` or a remote one) with public output, top_k,
      vocab_size (and max_bias, max_biased_tokens for 'top_k_bias'); asked only through `oracle(...)`.
    cfg: attack settings.
    seed: the prompts' random stream.
  Raises:
    ScoresNeeded (before any query), LimitReachedError (no accepted gap within max_vectors),
    `extraction.oracle.BudgetExceeded` (the oracle's budget), BiasTooSmall.
  """
  cfg.check()
  refuse_unless_scores(oracle.output, getattr(oracle, "top_k", None))
  t0, used0 = time.time(), oracle.used
  tokens0 = getattr(oracle, "tokens", None)
  collect = _Collector(oracle, cfg, seed)
  found = None
  while found is None or found.hidden is None:
    if len(collect.rows) >= cfg.max_vectors:
      gap = found.linear if found is not None else None
      raise LimitReachedError(
          f"no singular-value gap of at least {cfg.gap_threshold:g} with {cfg.tail} values below it among "
          f"{len(collect.rows)} logit vectors (largest ratio {gap.ratio if gap else float('nan'):.3g} after "
          f"{gap.dim if gap else 0} values): the hidden size may exceed --lm_max_vectors, or the answers are too "
          f"noisy for the threshold")
    collect.ask(min(cfg.step, cfg.max_vectors - len(collect.rows)))
    found = spectrum.detect(collect.matrix(), cfg.gap_threshold, cfg.tail, cfg.final_norm)
    logging.info("lm_last_layer: %d vectors, %d queries: largest gap %s, affine %s", len(collect.rows),
                 oracle.used - used0, found.linear, found.affine)
  at_detection, h = len(collect.rows), found.hidden
  want = max(at_detection, math.ceil(cfg.oversample * h))
  if want > at_detection:
    collect.ask(want - at_detection)
  vectors = collect.matrix()
  w_rec = recover.recover_unembedding(vectors, h, cfg.final_norm)
  lin_ok = found.linear is not None and found.linear.accepted(cfg.gap_threshold, cfg.tail)
  queries = oracle.used - used0
  return Result(
      hidden_size=h, rank=found.linear.dim if lin_ok else None, affine_rank=found.affine.dim if found.affine else None,
      gap=found.linear.ratio if found.linear else float("nan"),
      affine_gap=found.affine.ratio if found.affine else float("nan"), unembedding=w_rec,
      singular_values=found.values, vectors_at_detection=at_detection, vectors=len(vectors), queries=queries,
      tokens=None if tokens0 is None else oracle.tokens - tokens0, requests_per_vector=queries / len(vectors),
      bias_retries=collect.recon.retries, shift_invariant=oracle.output != "logits", seconds=time.time() - t0,
      answer_dtype=collect.dtype, notes=found.notes)
