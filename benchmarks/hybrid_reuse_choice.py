"""How the hybrid's students fit the first layer attack's answers (`--hybrid_reuse_answers`) and which learning rate
schedule they train with (`--hybrid_schedule`), chosen without the test split: on the digits 64-128-128-10 victim of
configs/hybrid_digits.flags (seed 0, its first hybrid seed's attack and learning streams), `--holdout` images of the
attacker's pool are held out of the learning queries as a validation set, and each of `--methods` is trained with
each of `--schedules` and `--learning_rates` for each of `--steps`; a hybrid student (frozen, init) with the
attack's answers not fitted and fitted in proportion to their number (unless --nobaselines), and fitted as each
`--shares` of every batch (the pure student has no such answers: one row). Reported: the mean centred-logit error
and top-1 agreement with the victim on the held-out images (answers the attacker has: they are pool images it may
query). Float64.

  python -m benchmarks.hybrid_reuse_choice --shares=0.25,0.5,0.75
  python -m benchmarks.hybrid_reuse_choice --methods=pure,frozen --schedules=constant,cosine \
    --learning_rates=0.001,0.01 --steps=10000,30000 --nobaselines --out=hybrid_schedule_choice

Writes benchmarks/results/<--out>.{json,md}.
"""

from __future__ import annotations

import itertools
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
  flags.DEFINE_list("steps", ["10000"], "Adam step budgets; every student is trained once for each.")
  flags.DEFINE_list("shares", ["0.5"], "Shares of each batch given to the attack's answers.")
  flags.DEFINE_list("methods", ["frozen"], "Students (pure, frozen, init).")
  flags.DEFINE_list("schedules", ["constant"], "Learning rate schedules (constant, cosine).")
  flags.DEFINE_list("learning_rates", ["0.001"], "Adam's (peak) learning rates.")
  flags.DEFINE_bool("baselines", True, "Also the hybrid students with the answers not fitted and in proportion.")
  flags.DEFINE_string("out", "hybrid_reuse_choice", "Results file name (benchmarks/results/<out>.{json,md}).")
  from functional_equivalence.deep.hybrid import METHODS, SCHEDULES

  flags.register_validator("methods", lambda v: set(v) <= set(METHODS), f"--methods takes some of {METHODS}")
  flags.register_validator("schedules", lambda v: set(v) <= set(SCHEDULES), f"--schedules takes some of {SCHEDULES}")


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
  variants = [("not fitted", False, None), ("in proportion", True, None)] if FLAGS.baselines else []
  variants += [(f"share {float(v):g}", True, float(v)) for v in FLAGS.shares]
  rows = []
  grid = itertools.product(FLAGS.methods, FLAGS.schedules, map(float, FLAGS.learning_rates), map(int, FLAGS.steps))
  for method, schedule, rate, steps in grid:
    for name, reuse, share in variants if method != "pure" else [("none", False, None)]:
      t = time.time()
      oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
      student, counts = hybrid.run(
        oracle,
        pool,
        [128, 128],
        first.queries + FLAGS.extra_queries,
        method,
        learn_seed,
        steps,
        first,
        reuse=reuse,
        share=share,
        schedule=schedule,
        learning_rate=rate,
      )
      rows.append(
        dict(
          method=method,
          schedule=schedule,
          learning_rate=rate,
          steps=steps,
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
  (RESULTS / f"{FLAGS.out}.json").write_text(json.dumps(out, indent=2))
  lines = report_head(
    "The hybrid's training choices (fitting the first layer attack's answers, the learning rate schedule), chosen "
    "on held-out pool images (issue 14)",
    f"Command: `{out['command']}`\n\nDigits 64-128-128-10 victim (seed {FLAGS.seed}), first layer in "
    f"{first.queries} queries + {FLAGS.extra_queries} learning queries from the pool less {FLAGS.holdout} held-out "
    f"images (the pure student: the same total from the pool).",
    out["machine"],
    time.time() - start,
    ["student", "schedule", "learning rate", "steps", "attack's answers", "answers fitted"]
    + ["held-out mean centred-logit error", "held-out top-1", "seconds"],
  )
  for r in rows:
    lines.append(
      f"| {r['method']} | {r['schedule']} | {r['learning_rate']:g} | {r['steps']} | {r['answers']} | "
      f"{r['fe_answers_fitted']} | {r['validation_logit_error']:.4f} | {r['validation_fidelity']:.4f} | "
      f"{r['seconds']} |"
    )
  (RESULTS / f"{FLAGS.out}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
