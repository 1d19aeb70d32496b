"""The LM oracle's output modes, bias bounds and budget, and the logit-bias reconstruction on a toy vocabulary,
counted by a backend that counts independently of the oracle."""
import math

import numpy as np
import pytest

from extraction.lm_oracle import BiasRefused, LMOracle, LogitBias, log_softmax, top_k_logprobs
from extraction.oracle import BudgetExceeded
from functional_equivalence.lm import attack, bias as bias_lib

V = 23


class CountingBackend:
  """Next-token logits of a toy LM: a fixed vector per first prompt token; counts every prompt it answers."""

  def __init__(self, logits):
    self.table = np.asarray(logits)
    self.prompts = 0
    self.tokens = 0

  def __call__(self, prompts):
    prompts = np.asarray(prompts)
    self.prompts += len(prompts)
    self.tokens += prompts.size
    return self.table[prompts[:, 0] % len(self.table)]


def toy_logits(rows=3, seed=0, spread=3.0):
  return np.random.default_rng(seed).normal(scale=spread, size=(rows, V))


def test_output_modes():
  table = toy_logits()
  prompts = np.array([[0, 5], [1, 5], [2, 7]])
  full = LMOracle(CountingBackend(table), output="logits", vocab_size=V)(prompts)
  np.testing.assert_array_equal(full, table)
  np.testing.assert_array_equal(LMOracle(CountingBackend(table), output="argmax", vocab_size=V)(prompts),
                                table.argmax(1))
  top = LMOracle(CountingBackend(table), output="top_k", top_k=4, vocab_size=V)(prompts)
  lp = log_softmax(table)
  want = np.argsort(-lp, axis=1)[:, :4]
  np.testing.assert_array_equal(top.ids, want)
  np.testing.assert_allclose(top.logprobs, np.take_along_axis(lp, want, 1), rtol=1e-12)
  assert np.all(np.diff(top.logprobs, axis=1) <= 0)


def test_bias_changes_the_answer_as_added_logits():
  table = toy_logits()
  o = LMOracle(CountingBackend(table), output="top_k_bias", top_k=3, vocab_size=V)
  bias = LogitBias(np.array([[4, 9, -1]] * 3), np.array([[50.0, 40.0, 0.0]] * 3))
  ans = o(np.array([[0], [1], [2]]), bias)
  shifted = table.copy()
  shifted[:, 4] += 50
  shifted[:, 9] += 40
  ref = top_k_logprobs(shifted, 3)
  np.testing.assert_array_equal(ans.ids, ref.ids)
  np.testing.assert_allclose(ans.logprobs, ref.logprobs, rtol=1e-12)
  assert list(ans.ids[:, 0]) == [4, 4, 4] and list(ans.ids[:, 1]) == [9, 9, 9]


@pytest.mark.parametrize("bias,message", [
    (LogitBias(np.array([[1, 2]]), np.array([[101.0, 0.0]])), r"\|bias\| <= 100"),
    (LogitBias(np.array([[1, 2, 3, 4]]), np.ones((1, 4))), "at most 3"),
    (LogitBias(np.array([[1, 1]]), np.ones((1, 2))), "same token twice"),
    (LogitBias(np.array([[V]]), np.ones((1, 1))), r"0\.\.22"),
    (LogitBias(np.array([[1]]), np.array([[np.nan]])), "finite"),
    (LogitBias(np.array([[1, 2]]), np.ones((2, 2))), "must both be"),
])
def test_bias_over_the_bounds_is_refused_and_not_counted(bias, message):
  backend = CountingBackend(toy_logits())
  o = LMOracle(backend, output="top_k_bias", top_k=5, vocab_size=V, max_bias=100, max_biased_tokens=3)
  with pytest.raises(BiasRefused, match=message):
    o(np.array([[0, 1]]), bias)
  assert backend.prompts == 0 and o.used == 0 and o.tokens == 0


def test_bias_refused_by_modes_without_it():
  for output, k in (("logits", None), ("top_k", 3), ("argmax", None)):
    o = LMOracle(CountingBackend(toy_logits()), output=output, top_k=k, vocab_size=V)
    with pytest.raises(BiasRefused, match="accepts no logit bias"):
      o(np.array([[0]]), LogitBias(np.array([[1]]), np.array([[1.0]])))


def test_budget_refuses_the_call_that_passes_it():
  backend = CountingBackend(toy_logits())
  o = LMOracle(backend, output="top_k_bias", top_k=3, vocab_size=V, budget=5)
  o(np.zeros((3, 4), np.int32))
  o(np.zeros((2, 4), np.int32))  # exactly the budget: answered
  assert (o.used, o.remaining, o.tokens) == (5, 0, 20)
  with pytest.raises(BudgetExceeded, match="budget of 5"):
    o(np.zeros((1, 4), np.int32))
  assert backend.prompts == 5 and backend.tokens == 20 and o.used == 5 and o.tokens == 20


@pytest.mark.parametrize("k,fixed_bias", [(2, None), (3, None), (5, 30.0)])
def test_bias_reconstruction_is_exact_on_a_toy_vocabulary(k, fixed_bias, monkeypatch):
  monkeypatch.setattr(bias_lib, "CHUNK", 4)  # several oracle calls per vector
  table = toy_logits(spread=4.0)
  backend = CountingBackend(table)
  o = LMOracle(backend, output="top_k_bias", top_k=k, vocab_size=V)
  state = bias_lib.Reconstruction()
  for row in range(3):
    z = bias_lib.reconstruct_one(o, np.array([row, 1, 2]), state, bias=fixed_bias)
    np.testing.assert_allclose(z, table[row] - table[row].max(), atol=1e-12)
  per_vector = 1 + math.ceil((V - k) / (k - 1))
  assert state.requests == backend.prompts == o.used == 3 * per_vector and state.retries == 0
  assert o.tokens == backend.tokens == 3 * 3 * per_vector


def test_adaptive_bias_retries_groups_it_could_not_lift():
  table = toy_logits(rows=2, spread=1.0)
  table[1, 7] = -60.0  # the second prompt spans far more than the first: its small bias misses token 7
  backend = CountingBackend(table)
  o = LMOracle(backend, output="top_k_bias", top_k=3, vocab_size=V)
  state = bias_lib.Reconstruction()
  for row in range(2):
    z = bias_lib.reconstruct_one(o, np.array([row]), state)
    np.testing.assert_allclose(z, table[row] - table[row].max(), atol=1e-12)
  assert state.retries >= 1 and backend.prompts == o.used == state.requests
  table[1, 7] = -150.0  # beyond the API's bound of 100: a one-line error, not a wrong vector
  with pytest.raises(bias_lib.BiasTooSmall, match="largest bias 100"):
    bias_lib.reconstruct_one(LMOracle(CountingBackend(table), output="top_k_bias", top_k=3, vocab_size=V),
                             np.array([1]), bias_lib.Reconstruction())


@pytest.mark.parametrize("output,k,message", [("argmax", None, "needs scores"), ("top_k", 5, "without a logit bias")])
def test_attack_refuses_apis_without_scores_before_any_query(output, k, message):
  backend = CountingBackend(toy_logits())
  o = LMOracle(backend, output=output, top_k=k, vocab_size=V)
  with pytest.raises(attack.ScoresNeeded, match=message):
    attack.steal_last_layer(o)
  assert backend.prompts == 0 and o.used == 0


def test_prompts_longer_than_the_api_takes_are_refused_and_the_attack_fits_them():
  rng = np.random.default_rng(3)
  w, emb = rng.normal(size=(V, 5)), rng.normal(size=(V, 5))
  calls = []

  def low_rank(prompts):  # logits = W tanh(sum of the prompt's embeddings): rank 5, no centring norm
    calls.append(np.asarray(prompts).shape)
    return np.tanh(emb[np.asarray(prompts)].sum(1)) @ w.T

  o = LMOracle(low_rank, output="logits", vocab_size=V, max_len=3)
  with pytest.raises(ValueError, match="at most 3"):
    o(np.zeros((2, 4), np.int32))
  assert calls == [] and o.used == 0
  result = attack.steal_last_layer(o, attack.Config(prompt_len=16, final_norm="rmsnorm"))
  assert result.hidden_size == 5 and all(shape[1] == 3 for shape in calls) and o.tokens == 3 * o.used
