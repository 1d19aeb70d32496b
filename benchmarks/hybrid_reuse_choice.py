"""How the hybrid's students fit the first layer attack's answers (`--hybrid_reuse_answers`), chosen without the test
split: on the digits 64-128-128-10 victim of configs/hybrid_digits.flags (seed 0, its first hybrid seed's attack and
learning streams), `--holdout` images of the attacker's pool are held out of the learning queries as a validation
set, and a frozen hybrid student is trained with the attack's answers not fitted, fitted in proportion to their
number, and fitted as each `--shares` of every batch. Reported: the mean centred-logit error and top-1 agreement
with the victim on the held-out images (answers the attacker has: they are pool images it may query). Float64.

  python -m benchmarks.hybrid_reuse_choice

Writes benchmarks/results/hybrid_reuse_choice.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, machine, report_head

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_integer("seed", 0, "The victim's seed (the launcher's --seed); the hybrid seed is 0.")
  flags.DEFINE_integer("holdout", 300, "Pool images held out of the learning queries as the validation set.")
  flags.DEFINE_integer("extra_queries", 1000, "Learning queries beyond the first layer's.")
  flags.DEFINE_integer("steps", 10000, "Adam steps of each student.")
  flags.DEFINE_list("shares", ["0.5"], "Shares of each batch given to the attack's answers.")


def main(_):
  from extraction.oracle import Oracle
  from functional_equivalence import align
  from functional_equivalence.deep import hybrid, network

  start = time.time()
  net, (x_train, _, _, _) = network.digits_net(FLAGS.seed, [128, 128])
  attack_seed, learn_seed = (int(v) for v in np.random.SeedSequence([FLAGS.seed, 14, 0]).generate_state(2))
  order = np.random.default_rng([FLAGS.seed, 5]).permutation(len(x_train))
  val, pool = x_train[order[: FLAGS.holdout]], x_train[order[FLAGS.holdout :]]
  first = hybrid.first_layer(Oracle(network.backend(net), output="logits", record_inputs=False), 64, attack_seed)
  variants = [("not fitted", False, None), ("in proportion", True, None)]
  variants += [(f"share {float(v):g}", True, float(v)) for v in FLAGS.shares]
  rows = []
  for name, reuse, share in variants:
    t = time.time()
    oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
    student, counts = hybrid.run(
      oracle,
      pool,
      [128, 128],
      first.queries + FLAGS.extra_queries,
      "frozen",
      learn_seed,
      FLAGS.steps,
      first,
      reuse=reuse,
      share=share,
    )
    rows.append(
      dict(
        answers=name,
        fe_answers_fitted=counts["fe_answers_fitted"],
        validation_logit_error=float(np.mean(align.centered_logit_error(net, student, val))),
        validation_fidelity=align.logit_agreement(net, student, val)["agreement"],
        seconds=round(time.time() - t, 1),
      )
    )
    print(rows[-1], flush=True)
  out = {
    "command": "python -m benchmarks.hybrid_reuse_choice " + " ".join(sys.argv[1:]),
    "machine": machine(),
    "fe_queries": int(first.queries),
    "rows": rows,
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "hybrid_reuse_choice.json").write_text(json.dumps(out, indent=2))
  lines = report_head(
    "Fitting the first layer attack's answers in the hybrid: chosen on held-out pool images (issue 14)",
    f"Command: `{out['command']}`\n\nDigits 64-128-128-10 victim (seed {FLAGS.seed}), frozen hybrid student, first "
    f"layer in {first.queries} queries + {FLAGS.extra_queries} learning queries from the pool less {FLAGS.holdout} "
    f"held-out images, {FLAGS.steps} Adam steps.",
    out["machine"],
    time.time() - start,
    ["attack's answers", "answers fitted", "held-out mean centred-logit error", "held-out top-1", "seconds"],
  )
  for r in rows:
    lines.append(
      f"| {r['answers']} | {r['fe_answers_fitted']} | {r['validation_logit_error']:.4f} | "
      f"{r['validation_fidelity']:.4f} | {r['seconds']} |"
    )
  (RESULTS / "hybrid_reuse_choice.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
