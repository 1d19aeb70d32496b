"""Stealing the last layer of a language model (Carlini et al. 2024, issue 15): hidden size, queries, API calls
per logit vector and errors of W, per victim size and API output mode.

  python -m benchmarks.lm_last_layer [--hidden=64,128,256] [--seeds=0,1,2] [--trained_hidden=64,128,256]

Victims (V=4096, 2 blocks, 4 heads, untied unless --tied): random initialisations for every --hidden x --seeds,
and victims trained --train_steps Adam steps on the Python standard library's sources for --trained_hidden
(built once in --workdir and reused). Each is attacked through an `LMOracle` in every --modes entry
(output:precision), not told h, with `functional_equivalence.lm.attack` defaults (step 16, tail 2, gap threshold
1e3, final_norm layernorm) and every --oversample (logits) or --bias_oversample (top_k_bias) value. The row is `functional_equivalence.lm.evaluate.report`'s; seconds
are the attack's (queries answered by the local victim included). Writes benchmarks/results/lm_last_layer.{json,md}
with the command and the machine.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from benchmarks.common import REPO, RESULTS, environment_line, machine

flags.DEFINE_list("hidden", ["64", "128", "256"], "Hidden sizes of the random victims.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the random victims (and of the attacks' prompts).")
flags.DEFINE_list("trained_hidden", ["64", "128", "256"], "Hidden sizes of the trained victims (empty: none).")
flags.DEFINE_integer("train_steps", 300, "Adam steps of the trained victims.")
flags.DEFINE_integer("vocab", 4096, "Vocabulary size.")
flags.DEFINE_bool("tied", False, "Tie the unembedding to the embedding.")
flags.DEFINE_list(
  "modes",
  ["logits:float32", "logits:float64", "top_k_bias:float32"],
  "API output modes and victim precisions, output:precision.",
)
flags.DEFINE_list(
  "oversample", ["1"], "Values of the attack's oversample (W from max(n, oversample*h) vectors) in logits modes."
)
flags.DEFINE_list(
  "bias_oversample", ["1"], "Values of the oversample in top_k_bias modes (each vector costs V/(k-1) requests there)."
)
flags.DEFINE_string("workdir", "workdirs/lm_bench", "Where the trained victims are built and kept.")
flags.DEFINE_string("out", "lm_last_layer", "Results name in benchmarks/results/.")
FLAGS = flags.FLAGS


def victims():
  """(name, victim) for every random and trained victim of the flags."""
  from extraction import lm_victim

  for h in map(int, FLAGS.hidden):
    for seed in map(int, FLAGS.seeds):
      cfg = lm_victim.LMConfig(vocab_size=FLAGS.vocab, hidden=h, tied=FLAGS.tied)
      yield (
        f"random h={h} seed={seed}",
        lm_victim.LMVictim(cfg, lm_victim.init_params(cfg, seed), {"train": {"steps": 0, "seed": seed}}),
      )
  for h in map(int, FLAGS.trained_hidden):
    cfg = lm_victim.LMConfig(vocab_size=FLAGS.vocab, hidden=h, tied=FLAGS.tied)
    tcfg = lm_victim.TrainConfig(steps=FLAGS.train_steps)
    t0 = time.time()
    v = lm_victim.build_victim(cfg, tcfg, REPO / FLAGS.workdir / f"trained_h{h}_v{FLAGS.vocab}_{int(FLAGS.tied)}")
    print(
      f"trained victim h={h}: {time.time() - t0:.0f} s (built or loaded), held-out loss "
      f"{v.info['held_out_loss']:.3f} vs unigram {v.info['unigram_entropy']:.3f} nats",
      flush=True,
    )
    yield f"trained h={h} ({FLAGS.train_steps} steps)", v


def run_one(name, victim, output, precision, oversample, seed):
  from extraction import lm_victim
  from extraction.lm_oracle import LMOracle
  from functional_equivalence.lm import attack, evaluate

  oracle = LMOracle(
    lm_victim.backend(victim, precision),
    output=output,
    top_k=5 if output != "logits" else None,
    vocab_size=victim.config.vocab_size,
    record_inputs=False,
  )
  result = attack.steal_last_layer(oracle, attack.Config(oversample=oversample), seed=seed)
  row = evaluate.report(victim, result, output=output, top_k=5, precision=precision)
  row.update(name=name, oversample=oversample)
  return row


def _f(v, fmt=".2e"):
  return "" if v is None else format(v, fmt)


def markdown(rows, command, info, seconds) -> str:
  lines = [
    "# Stealing the last layer of a language model (Carlini et al. 2024)",
    "",
    f"Command: `{command}`  ",
    f"Machine: {info}  ",
    f"{environment_line(info)}  ",
    f"Total wall time: {seconds:.0f} s (attacks and victim training; shared machine).",
    "",
    "W_rec is aligned to the true W by least squares; `rel. RMS` is the RMS of the aligned error over W's "
    "RMS (over P W, the vocabulary-centred W, for top_k_bias: log-probabilities hide a shift of all "
    "logits); `LN dirs` is the same error on the final LayerNorm's h-1 output directions only; `offset` "
    "is the distance of the LayerNorm's output hull from the origin relative to its outputs' norm (the "
    "h-th direction's strength). Calls/vector: API requests per recovered logit vector; the paper's figure "
    "is 1 for logits and V/(k-1) = 0.25 x V for top-5 logprobs with a logit bias (its Table 3).",
    "",
    "| victim | API output | precision | h found | rank / affine | vectors (at detection) | queries | "
    "calls/vector (paper) | rel. RMS error | LN dirs rel. RMS | max error | var. explained | offset | seconds |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    found = f"{r['hidden_size_found']}/{r['hidden']}" + ("" if r["hidden_size_found"] == r["hidden"] else " (!)")
    lines.append(
      f"| {r['name']}{' x' + str(r['oversample']) if r['oversample'] != 1 else ''} | {r['oracle_output']} | "
      f"{r['precision']} | {found} | {r['rank']} / {r['affine_rank']} | {r['vectors']} ({r['vectors_at_detection']}) | "
      f"{r['queries']} | {r['requests_per_vector']:g} ({r['paper_requests_per_vector']:g}) | "
      f"{_f(r['rms_error_relative'])} | {_f(r['norm_directions_rms_error_relative'])} | {_f(r['max_error'])} | "
      f"{r['variance_explained']:.9f} | {_f(r['norm_offset'], '.1e')} | {r['seconds']:.1f} |"
    )
  lines += [
    "",
    "## Summary over victims",
    "",
    "| victims | API output | precision | oversample | h exact | max vectors - h at detection | "
    "rel. RMS error: median [min, max] | LN dirs: median [min, max] |",
    "|---|---|---|---|---|---|---|---|",
  ]
  groups = {}
  for r in rows:
    groups.setdefault((r["victim"], r["hidden"], r["oracle_output"], r["precision"], r["oversample"]), []).append(r)
  for (kind, h, out, prec, over), rs in groups.items():
    e = [r["rms_error_relative"] for r in rs]
    d = [r["norm_directions_rms_error_relative"] for r in rs]
    lines.append(
      f"| {kind} h={h} ({len(rs)}) | {out} | {prec} | {over:g} | "
      f"{sum(r['hidden_size_found'] == r['hidden'] for r in rs)}/{len(rs)} | "
      f"{max(r['vectors_at_detection'] - r['hidden'] for r in rs)} | "
      f"{np.median(e):.2e} [{min(e):.2e}, {max(e):.2e}] | {np.median(d):.2e} [{min(d):.2e}, {max(d):.2e}] |"
    )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # the attack logs every look at the spectrum at INFO
  t0 = time.time()
  command = "python -m benchmarks.lm_last_layer " + " ".join(sys.argv[1:])
  rows = []
  for name, victim in victims():
    seed = int(victim.info["train"].get("seed", 0))
    for mode in FLAGS.modes:
      output, precision = mode.split(":")
      for over in map(float, FLAGS.oversample if output == "logits" else FLAGS.bias_oversample):
        row = run_one(name, victim, output, precision, over, seed)
        rows.append(row)
        print(
          f"{name} {output} {precision} x{over:g}: h {row['hidden_size_found']}/{row['hidden']}, "
          f"{row['queries']} queries, rel. RMS {row['rms_error_relative']:.2e}, LN dirs "
          f"{row['norm_directions_rms_error_relative']:.2e}, {row['seconds']} s",
          flush=True,
        )
  info = machine("numpy", "flax")
  info["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")  # 1: no BLAS thread contention
  seconds = time.time() - t0
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.out}.json").write_text(
    json.dumps({"command": command, "machine": info, "seconds": seconds, "rows": rows}, indent=1, default=str)
  )
  (RESULTS / f"{FLAGS.out}.md").write_text(markdown(rows, command, info, seconds))
  print(f"wrote {RESULTS / FLAGS.out}.{{json,md}}")


if __name__ == "__main__":
  app.run(main)
