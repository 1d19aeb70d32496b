"""`RemoteLMOracle`: a language model behind the prediction service (`python -m launch.serve --victim_lm=DIR`),
with `extraction.lm_oracle.LMOracle`'s interface, so that an attack runs unchanged against a served LM.

  oracle = RemoteLMOracle("http://127.0.0.1:8000", api_key="...")
  oracle(prompts)                        # logits (N, V), argmax (N,) or TopK, in the key's output mode
  oracle(prompts, LogitBias(ids, values))   # a key served 'top_k_bias'
  oracle.vocab_size, oracle.max_len, oracle.max_bias, oracle.max_biased_tokens   # from GET /health
  oracle.used, oracle.tokens, oracle.remaining

Requests are JSON (prompts and bias; answers of 'top_k'/'top_k_bias' are JSON too, logits and argmax come back
as .npy), split into requests of `batch_size` prompts with `extraction.remote.RemoteOracle`'s retries, budget
checks and errors. A bias the service refuses raises `extraction.remote.QueryRefused` with its message.
"""
from __future__ import annotations

import io
import json
import uuid
from typing import Optional

import numpy as np

from extraction.lm_oracle import LogitBias, TopK
from extraction.oracle import BudgetExceeded
from extraction.remote import NPY, OracleUnavailable, QueryRefused, RemoteOracle


class RemoteLMOracle(RemoteOracle):
  """An LM oracle over HTTP (module docstring). Arguments as `RemoteOracle`'s."""

  def __init__(self, url: str, api_key: str, **kwargs):
    super().__init__(url, api_key, **kwargs)
    lm = self.info.get("lm")
    if lm is None:
      self.close()
      raise QueryRefused(f"{url} serves no language model (its /health has no 'lm'); serve one with "
                         f"python -m launch.serve --victim_lm=DIR")
    self.vocab_size = self.num_classes
    self.max_len, self.max_bias, self.max_biased_tokens = lm["max_len"], lm["max_bias"], lm["max_biased_tokens"]
    self.tokens = 0

  def _predict_lm(self, prompts: np.ndarray, bias: Optional[LogitBias]):
    body = {"inputs": prompts.tolist()}
    if bias is not None:
      body["logit_bias"] = {"ids": np.asarray(bias.ids).tolist(), "values": np.asarray(bias.values).tolist()}
    response = self._check(self._send("POST", "/v1/predict", request_id=uuid.uuid4().hex, content=json.dumps(body),
                                      headers={"Content-Type": "application/json", "Accept": NPY}))
    n = len(prompts)
    if self.output in ("top_k", "top_k_bias"):
      data = response.json()
      answers = TopK(np.asarray(data["ids"], np.int32), np.asarray(data["logprobs"], data["dtype"]))
      ok = answers.ids.shape == answers.logprobs.shape == (n, self.top_k)
    else:
      answers = np.load(io.BytesIO(response.content), allow_pickle=False)
      ok = answers.shape == ((n, self.vocab_size) if self.output == "logits" else (n,))
    if not ok:
      raise OracleUnavailable(f"{self.url}: answers of an unexpected shape for {n} prompts")
    return answers

  def __call__(self, prompts, bias: Optional[LogitBias] = None):
    """Answers prompts (N, L) in the key's output mode (module docstring); raises BudgetExceeded."""
    prompts = np.asarray(prompts)
    n = len(prompts)
    if n == 0:
      raise ValueError("no prompts to ask")
    if self.budget is not None and self.used + n > self.budget:
      raise BudgetExceeded(f"query of {n} prompts refused: {self.used} of the budget of {self.budget} already "
                           f"used ({self.budget - self.used} left)")
    if n > self.batch_size:
      left = self.key_state["remaining"]
      if left is not None and left < n:
        raise BudgetExceeded(f"query of {n} prompts refused: the key has {left} left on the server")
    if bias is not None and np.asarray(bias.ids).ndim == 1:
      bias = LogitBias(np.broadcast_to(bias.ids, (n,) + np.shape(bias.ids)),
                       np.broadcast_to(bias.values, (n,) + np.shape(bias.values)))
    parts = []
    for i in range(0, n, self.batch_size):
      chunk = prompts[i:i + self.batch_size]
      part = None if bias is None else LogitBias(bias.ids[i:i + self.batch_size], bias.values[i:i + self.batch_size])
      try:
        parts.append(self._predict_lm(chunk, part))
      except BudgetExceeded as e:
        if i == 0:
          raise
        raise BudgetExceeded(f"{e} (the first {i} prompts of this query of {n} were answered and charged)") from e
      self.used += len(chunk)
      self.tokens += int(chunk.size)
      if self.record_inputs:
        self._asked.append(np.array(chunk, copy=True))
    if isinstance(parts[0], TopK):
      return TopK(np.concatenate([p.ids for p in parts]), np.concatenate([p.logprobs for p in parts]))
    return np.concatenate(parts)

  def logits(self, x):
    raise NotImplementedError("an attack asks through __call__; a served LM's logits are what its key serves")
