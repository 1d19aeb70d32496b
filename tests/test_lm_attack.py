"""The attack end to end on small transformer victims (random init, tied and untied, float32 and float64, a
LayerNorm without bias, a victim with no final norm), its budget, and the lm_last_layer experiment."""
import json

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from extraction import lm_text, lm_victim
from extraction.lm_oracle import LMOracle
from extraction.oracle import BudgetExceeded
from functional_equivalence.lm import attack, evaluate
from launch import experiments, lm  # noqa: F401  (registers lm_last_layer)

FLAGS = flags.FLAGS


def small_victim(hidden=32, vocab=512, tied=False, seed=0, layers=1):
  cfg = lm_victim.LMConfig(vocab_size=vocab, hidden=hidden, layers=layers, heads=4, max_len=16, tied=tied)
  return lm_victim.LMVictim(cfg, lm_victim.init_params(cfg, seed), {"train": {"steps": 0}})


def steal(victim, output="logits", precision="float64", cfg=attack.Config(prompt_len=8), **oracle_kwargs):
  o = LMOracle(lm_victim.backend(victim, precision), output=output, top_k=5 if output != "logits" else None,
               vocab_size=victim.config.vocab_size, record_inputs=False, **oracle_kwargs)
  result = attack.steal_last_layer(o, cfg, seed=1)
  return result, evaluate.align(result.unembedding, lm_victim.unembedding(victim), result.shift_invariant), o


@pytest.mark.parametrize("hidden,tied,seed", [(32, False, 0), (48, True, 3)])
def test_logits_float64_h_exact_and_w_to_1e9(hidden, tied, seed):
  victim = small_victim(hidden, tied=tied, seed=seed)
  result, err, o = steal(victim)
  assert result.hidden_size == hidden and result.affine_rank == hidden - 1
  assert result.vectors <= hidden + 32 and result.queries == o.used == result.vectors
  assert result.tokens == o.tokens == 8 * result.vectors
  assert err["rms_error_relative"] < 1e-9 and err["variance_explained"] > 1 - 1e-15


def test_float32_and_top_k_bias_h_exact():
  victim = small_victim(48, tied=True, seed=5)
  result, err, _ = steal(victim, precision="float32")
  assert result.hidden_size == 48 and err["rms_error_relative"] < 1e-3
  result, err, o = steal(victim, output="top_k_bias", precision="float32")
  assert result.hidden_size == 48 and result.shift_invariant and err["rms_error_relative"] < 1e-3
  assert result.requests_per_vector == 1 + np.ceil((512 - 5) / 4) and o.used == result.queries


def test_layernorm_without_bias_and_victims_without_a_final_norm():
  victim = small_victim(32, seed=2)
  params = jax.tree.map(np.array, victim.params)
  params["final_norm"]["bias"][:] = 0.0  # the logits now span only h-1 dimensions
  zero = lm_victim.LMVictim(victim.config, params, victim.info)
  result, _, _ = steal(zero)
  assert result.hidden_size == 32 and result.rank == 31 and "offset" in result.notes[0]
  result, _, _ = steal(zero, cfg=attack.Config(prompt_len=8, final_norm="rmsnorm"))
  assert result.hidden_size == 31

  rng = np.random.default_rng(7)  # a last layer without centring: logits = W tanh(A onehot) (an RMSNorm-free LM)
  w, a = rng.normal(size=(300, 24)), rng.normal(size=(300, 24))
  o = LMOracle(lambda p: np.tanh(a[np.asarray(p)].sum(1)) @ w.T, output="logits", vocab_size=300)
  result = attack.steal_last_layer(o, attack.Config(prompt_len=3, final_norm="rmsnorm"))
  assert result.hidden_size == 24 and evaluate.align(result.unembedding, w)["rms_error_relative"] < 1e-10


def test_budget_stops_the_attack():
  victim = small_victim(32)
  with pytest.raises(BudgetExceeded, match="budget of 40"):
    steal(victim, budget=40)


def test_victim_trains_saves_and_restores(tmp_path):
  text = lm_text.stdlib_text(20_000)
  tok = lm_text.Tokenizer.fit(text, 400)
  assert tok.vocab_size == 400 and tok.decode(tok.encode(text)) == text
  cfg = lm_victim.LMConfig(vocab_size=400, hidden=16, layers=1, heads=2, max_len=16)
  tcfg = lm_victim.TrainConfig(steps=3, batch_size=4, seq_len=16, corpus_chars=50_000)
  built = lm_victim.build_victim(cfg, tcfg, tmp_path / "v")
  assert np.isfinite(built.info["held_out_loss"]) and len(built.info["vocabulary"]) == 400 - 256
  loaded = lm_victim.load_victim(tmp_path / "v")
  prompts = np.arange(24).reshape(3, 8)
  np.testing.assert_array_equal(lm_victim.backend(built)(prompts), lm_victim.backend(loaded)(prompts))
  np.testing.assert_array_equal(lm_victim.unembedding(built), lm_victim.unembedding(loaded))
  with pytest.raises(ValueError, match="other settings"):
    lm_victim.build_victim(cfg, lm_victim.TrainConfig(steps=4), tmp_path / "v")


@pytest.fixture
def lm_flags():
  if not FLAGS.is_parsed():
    FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield FLAGS


def test_experiment_row(lm_flags, tmp_path):
  lm_flags.lm_seq_len, lm_flags.lm_prompt_len = 16, 8  # before --lm_max_len: every assignment is validated
  lm_flags.lm_vocab, lm_flags.lm_hidden, lm_flags.lm_layers, lm_flags.lm_max_len = 512, 32, 1, 16
  lm_flags.lm_precision, lm_flags.lm_oracle_output = "float64", "logits"
  [row] = experiments.EXPERIMENTS["lm_last_layer"](tmp_path)
  assert row["hidden_size_found"] == 32 and row["hidden"] == 32 and row["queries"] == row["oracle_used"] <= 32 + 32
  assert row["rms_error_relative"] < 1e-9 and row["paper_requests_per_vector"] == 1.0 and row["victim"] == "random"
  assert (tmp_path / "lm_victim" / "info.json").exists() and (tmp_path / "recovered.npz").exists()


def test_cli_refuses_argmax_in_one_line(tmp_path, launcher):
  p = launcher("--experiment=lm_last_layer", f"--workdir={tmp_path}", "--lm_oracle_output=argmax", timeout=120)
  assert p.returncode == 1 and "needs scores" in p.stderr and "Traceback" not in p.stderr
  assert not (tmp_path / "lm_victim").exists()  # refused before any work


def test_bad_lm_flags_are_refused(lm_flags):
  with pytest.raises(flags.IllegalFlagValueError, match="must divide --lm_hidden"):
    lm_flags.lm_heads = 5
  with pytest.raises(flags.IllegalFlagValueError, match="over the API's bound"):
    lm_flags.lm_bias = 200.0
