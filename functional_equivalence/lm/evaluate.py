"""Evaluation of a recovered unembedding against the true W (the experiment's side: the attack never sees W).

The recovered W_rec equals W G for an unknown h x h G, so it is aligned by least squares, G* = argmin ||W_rec G -
W||_F, and the error is E = W_rec G* - W: its RMS (absolute and relative to W's RMS), its largest entry, and the
fraction of W's variance explained, 1 - ||E||^2 / ||W - mean(W)||^2. For answers known only up to a shift of all
logits (log-probabilities), W itself is identifiable only up to adding 1 v^T (a constant per hidden unit); the
comparison is then with W's vocabulary-centred version P W (`shift_invariant=True`). Given `directions` (an
orthonormal h x d basis of hidden-space directions, e.g. a final LayerNorm's output directions), the error is also
measured on W restricted to them, E @ directions against W @ directions. Precision: float64.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def align(recovered: np.ndarray, true_w: np.ndarray, shift_invariant: bool = False,
          directions: Optional[np.ndarray] = None) -> dict:
  """Least-squares alignment of `recovered` (V x h') to `true_w` (V x h) and its errors (module docstring).

  Returns:
    dict with rms_error, rms_error_relative, max_error, variance_explained, recovered_columns (h'), and with
    `directions` subspace_rms_error_relative.
  """
  w = np.asarray(true_w, np.float64)
  r = np.asarray(recovered, np.float64)
  if r.shape[0] != w.shape[0]:
    raise ValueError(f"recovered has {r.shape[0]} rows, the true W {w.shape[0]}: not the same vocabulary")
  if shift_invariant:
    w = w - w.mean(axis=0)
    r = r - r.mean(axis=0)
  g = np.linalg.lstsq(r, w, rcond=None)[0]
  err = r @ g - w
  rms = float(np.sqrt(np.mean(err ** 2)))
  out = dict(rms_error=rms, rms_error_relative=rms / float(np.sqrt(np.mean(w ** 2))),
             max_error=float(np.max(np.abs(err))),
             variance_explained=float(1.0 - np.sum(err ** 2) / np.sum((w - w.mean()) ** 2)),
             recovered_columns=int(r.shape[1]))
  if directions is not None:
    out["subspace_rms_error_relative"] = float(np.linalg.norm(err @ directions) / np.linalg.norm(w @ directions))
  return out


def paper_requests_per_vector(output: str, vocab: int, top_k: Optional[int]) -> float:
  """The paper's cost of one logit vector: 1 request with full logits; V / (k-1) with top-k and a logit bias
  (its Table 3: 0.25 queries per logit for top-5, 4 tokens biased per query)."""
  return 1.0 if output == "logits" else vocab / (top_k - 1)


def report(victim, result, *, output: str, top_k: Optional[int], precision: str) -> dict:
  """One result row: the victim, what the attack found and cost, and its errors against the victim's true W.

  Args:
    victim: the `extraction.lm_victim.LMVictim` behind the API (read here, never by the attack).
    result: the attack's `functional_equivalence.lm.attack.Result`.
    output, top_k, precision: the API's output mode and the victim's precision.
  """
  from extraction import lm_victim
  cfg = victim.config
  directions, offset = lm_victim.norm_geometry(victim)
  err = align(result.unembedding, lm_victim.unembedding(victim), result.shift_invariant, directions)
  row = dict(method="lm_last_layer", victim="trained" if victim.info["train"]["steps"] else "random",
             vocab=cfg.vocab_size, hidden=cfg.hidden, layers=cfg.layers, tied=cfg.tied, precision=precision,
             oracle_output=output, top_k=top_k if output != "logits" else None,
             hidden_size_found=result.hidden_size, rank=result.rank, affine_rank=result.affine_rank,
             gap=result.gap, affine_gap=result.affine_gap, vectors_at_detection=result.vectors_at_detection,
             vectors=result.vectors, queries=result.queries, tokens=result.tokens,
             requests_per_vector=round(result.requests_per_vector, 3),
             paper_requests_per_vector=paper_requests_per_vector(output, cfg.vocab_size, top_k),
             bias_retries=result.bias_retries, rms_error=err["rms_error"],
             rms_error_relative=err["rms_error_relative"], max_error=err["max_error"],
             variance_explained=err["variance_explained"],
             norm_directions_rms_error_relative=err["subspace_rms_error_relative"], norm_offset=offset,
             compared_with="P W (vocabulary-centred)" if result.shift_invariant else "W",
             seconds=round(result.seconds, 2))
  if "held_out_loss" in victim.info:
    row.update(held_out_loss=victim.info["held_out_loss"], unigram_entropy=victim.info["unigram_entropy"])
  if result.notes:
    row["notes"] = " | ".join(result.notes)
  return row
