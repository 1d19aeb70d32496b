"""Flags and the `lm_last_layer` experiment: stealing the last layer of a language model through its API
(Carlini et al., ICML 2024).

  python -m launch.run --flagfile=configs/lm_last_layer.flags

Builds (or reuses, in --lm_victim_dir, default <workdir>/lm_victim) a small decoder-only transformer: random
initialisation with --lm_train_steps=0, else that many Adam steps on the Python standard library's sources
(`extraction.lm_victim`). Puts it behind an `extraction.lm_oracle.LMOracle` answering --lm_oracle_output, or with
--oracle_url asks the LM served there (`python -m launch.serve --victim_lm=DIR`) through
`extraction.lm_remote.RemoteLMOracle` with --api_key, --lm_victim_dir then naming the served victim (read only to
measure the recovered W; the key must serve --lm_oracle_output). Runs `functional_equivalence.lm.attack` through it,
and compares the recovered W with the victim's (`functional_equivalence.lm.evaluate`). Writes
<workdir>/recovered.npz (W_rec, singular values) and returns one result row.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
from absl import flags, logging

from extraction import lm_victim
from extraction.lm_oracle import LMOracle
from functional_equivalence.lm import attack, evaluate, spectrum
from launch import common, experiments, oracle_flags

flags.DEFINE_string("lm_victim_dir", None, "Directory of the LM victim (built there if missing; default "
                    "<workdir>/lm_victim).")
flags.DEFINE_integer("lm_vocab", 4096, "Vocabulary size V of the victim (256 byte tokens + word pieces).",
                     lower_bound=257)
flags.DEFINE_integer("lm_hidden", 128, "Hidden size h of the victim (not told to the attack).", lower_bound=2)
flags.DEFINE_integer("lm_layers", 2, "Transformer blocks of the victim.", lower_bound=0)
flags.DEFINE_integer("lm_heads", 4, "Attention heads of the victim (must divide --lm_hidden).", lower_bound=1)
flags.DEFINE_integer("lm_max_len", 64, "Longest prompt (context) of the victim.", lower_bound=1)
flags.DEFINE_bool("lm_tied", False, "Tie the unembedding to the token embedding.")
flags.DEFINE_integer("lm_train_steps", 0, "Adam steps on the standard library's sources (0: random init).",
                     lower_bound=0)
flags.DEFINE_integer("lm_train_batch", 32, "Sequences per training step.", lower_bound=1)
flags.DEFINE_integer("lm_seq_len", 64, "Tokens per training sequence (at most --lm_max_len).", lower_bound=1)
flags.DEFINE_float("lm_lr", 0.003, "Peak learning rate (Adam, cosine schedule).", lower_bound=0.0)
flags.DEFINE_enum("lm_precision", "float32", ["float32", "float64"], "Precision the served victim computes in.")
flags.DEFINE_enum("lm_oracle_output", "logits", ["logits", "top_k", "top_k_bias", "argmax"],
                  "What the API returns: full logits, top-k log-probabilities, top-k log-probabilities with a "
                  "logit bias, or the argmax token (refused by the attack: it needs scores).")
flags.DEFINE_integer("lm_top_k", 5, "k of top_k / top_k_bias.", lower_bound=1)
flags.DEFINE_float("lm_max_bias", 100.0, "The API's bound on |logit bias| (OpenAI: 100).", lower_bound=1e-9)
flags.DEFINE_integer("lm_max_biased_tokens", 300, "The API's bound on biased tokens per request (OpenAI: 300).",
                     lower_bound=1)
flags.DEFINE_integer("lm_budget", None, "The API's budget of requests (none if unset).", lower_bound=0)
flags.DEFINE_integer("lm_prompt_len", 16, "Tokens per random prompt of the attack.", lower_bound=1)
flags.DEFINE_integer("lm_step", 16, "Logit vectors asked between two looks at the singular values.", lower_bound=1)
flags.DEFINE_float("lm_gap_threshold", spectrum.DEFAULT_THRESHOLD, "Smallest singular-value ratio s_i/s_(i+1) "
                   "accepted as the hidden-size gap.", lower_bound=1.0)
flags.DEFINE_integer("lm_gap_tail", 2, "Singular values needed below the gap.", lower_bound=1)
flags.DEFINE_enum("lm_final_norm", "layernorm", list(spectrum.FINAL_NORMS), "Attacker's assumption on the "
                  "victim's final norm: layernorm (h = 1 + dimension of the logits' affine hull) or rmsnorm (h = "
                  "dimension of their span).")
flags.DEFINE_integer("lm_max_vectors", 4096, "Give up when no gap is accepted with this many logit vectors.",
                     lower_bound=2)
flags.DEFINE_float("lm_oversample", 1.0, "Recover W from max(vectors at detection, oversample * h) vectors.",
                   lower_bound=1e-9)
flags.DEFINE_float("lm_bias", 0.0, "Fixed logit bias of the top_k_bias reconstruction (0: adaptive).",
                   lower_bound=0.0)

FLAGS = flags.FLAGS


@flags.multi_flags_validator(["lm_hidden", "lm_heads", "lm_seq_len", "lm_max_len", "lm_prompt_len", "lm_top_k",
                              "lm_vocab", "lm_bias", "lm_max_bias"], message="bad --lm_* flags")
def _check_lm(v):
  if v["lm_hidden"] % v["lm_heads"]:
    raise flags.ValidationError(f"--lm_heads={v['lm_heads']} must divide --lm_hidden={v['lm_hidden']}")
  if v["lm_seq_len"] > v["lm_max_len"] or v["lm_prompt_len"] > v["lm_max_len"]:
    raise flags.ValidationError(f"--lm_seq_len and --lm_prompt_len must be at most --lm_max_len={v['lm_max_len']}")
  if v["lm_top_k"] >= v["lm_vocab"]:
    raise flags.ValidationError(f"--lm_top_k={v['lm_top_k']} must be smaller than --lm_vocab={v['lm_vocab']}")
  if v["lm_bias"] > v["lm_max_bias"]:
    raise flags.ValidationError(f"--lm_bias={v['lm_bias']} is over the API's bound --lm_max_bias={v['lm_max_bias']}")
  return True


@flags.multi_flags_validator(["experiment", "oracle_url", "lm_victim_dir"])
def _remote_needs_victim(values):
  """Through --oracle_url the attack needs the served LM's directory too, to measure what it recovered."""
  if values["experiment"] == "lm_last_layer" and values["oracle_url"] and not values["lm_victim_dir"]:
    raise flags.ValidationError("--oracle_url with lm_last_layer needs --lm_victim_dir=DIR of the served LM (to "
                                "compare the recovered W with it)")
  return True


def build_victim(workdir: pathlib.Path) -> lm_victim.LMVictim:
  config = lm_victim.LMConfig(vocab_size=FLAGS.lm_vocab, hidden=FLAGS.lm_hidden, layers=FLAGS.lm_layers,
                              heads=FLAGS.lm_heads, max_len=FLAGS.lm_max_len, tied=FLAGS.lm_tied)
  tcfg = lm_victim.TrainConfig(steps=FLAGS.lm_train_steps, batch_size=FLAGS.lm_train_batch,
                               seq_len=FLAGS.lm_seq_len, lr=FLAGS.lm_lr, seed=FLAGS.seed)
  directory = pathlib.Path(FLAGS.lm_victim_dir or workdir / "lm_victim")
  if FLAGS.oracle_url:  # the served victim, as it is
    if (directory / "lm_victim" / "info.json").is_file():
      directory = directory / "lm_victim"
    return lm_victim.load_victim(directory)
  try:
    return lm_victim.build_victim(config, tcfg, directory)
  except ValueError as e:  # a directory holding another victim: one line
    raise common.ConfigError(str(e)) from None


def make_oracle(victim: lm_victim.LMVictim):
  """The API: a local LMOracle over the victim, or the served LM of --oracle_url (its key must serve
  --lm_oracle_output with --lm_top_k)."""
  top_k = FLAGS.lm_top_k if FLAGS.lm_oracle_output in ("top_k", "top_k_bias") else None
  if FLAGS.oracle_url:
    from extraction.lm_remote import RemoteLMOracle
    oracle = RemoteLMOracle(FLAGS.oracle_url, FLAGS.api_key or os.environ.get(oracle_flags.API_KEY_ENV, ""),
                            timeout=FLAGS.oracle_timeout, retries=FLAGS.oracle_retries, budget=FLAGS.lm_budget,
                            record_inputs=False)
    served = (oracle.output, oracle.top_k)
    if served != (FLAGS.lm_oracle_output, top_k) or oracle.vocab_size != victim.config.vocab_size:
      oracle.close()
      raise oracle_flags.OracleMismatch(
          f"--oracle_url={FLAGS.oracle_url}: this key is served {served[0]} (top_k={served[1]}) over a vocabulary "
          f"of {oracle.vocab_size}; the experiment asks for {FLAGS.lm_oracle_output} (top_k={top_k}) of the LM in "
          f"--lm_victim_dir (V={victim.config.vocab_size})")
    return oracle
  return LMOracle(lm_victim.backend(victim, FLAGS.lm_precision), output=FLAGS.lm_oracle_output, top_k=top_k,
                  budget=FLAGS.lm_budget, record_inputs=False, vocab_size=victim.config.vocab_size,
                  max_len=victim.config.max_len,
                  max_bias=FLAGS.lm_max_bias, max_biased_tokens=FLAGS.lm_max_biased_tokens)


def attack_config() -> attack.Config:
  return attack.Config(prompt_len=FLAGS.lm_prompt_len, step=FLAGS.lm_step, gap_threshold=FLAGS.lm_gap_threshold,
                       tail=FLAGS.lm_gap_tail, final_norm=FLAGS.lm_final_norm, max_vectors=FLAGS.lm_max_vectors,
                       oversample=FLAGS.lm_oversample, bias=FLAGS.lm_bias or None)


@experiments.register("lm_last_layer")
def run(workdir: pathlib.Path) -> list[dict]:
  """Builds the victim, attacks it through the oracle, writes recovered.npz, returns one row."""
  workdir = pathlib.Path(workdir)
  attack.refuse_unless_scores(FLAGS.lm_oracle_output, FLAGS.lm_top_k)  # before any work: one line, exit code 1
  victim = build_victim(workdir)
  logging.info("lm_last_layer: victim %s, V=%d h=%d (%s), API output %s in %s", victim.info["train"],
               victim.config.vocab_size, victim.config.hidden, "tied" if victim.config.tied else "untied",
               FLAGS.lm_oracle_output, FLAGS.lm_precision)
  oracle = make_oracle(victim)
  try:
    result = attack.steal_last_layer(oracle, attack_config(), seed=FLAGS.seed)
  except Exception:
    logging.error("lm_last_layer stopped after %d queries", oracle.used)
    raise
  np.savez(workdir / "recovered.npz", unembedding=result.unembedding, singular_values=result.singular_values)
  row = evaluate.report(victim, result, output=oracle.output, top_k=FLAGS.lm_top_k,
                        precision=result.answer_dtype or FLAGS.lm_precision)
  if FLAGS.oracle_url:
    row["oracle_url"] = FLAGS.oracle_url
  row["oracle_used"], row["oracle_tokens"] = oracle.used, oracle.tokens
  logging.info("lm_last_layer: %s", row)
  return [row]
