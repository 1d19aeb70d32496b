"""Flags and the `hybrid` experiment: the first hidden layer by the critical-point method, the rest learned, against
learning the whole network with the same number of queries (functional_equivalence/deep/hybrid.py).

  python -m launch.run --flagfile=configs/hybrid_digits.flags

The victim is a ReLU network d-(--hybrid_victim_hidden)-10 trained in float64 on scikit-learn digits (--seed); the
attacker's pool of inputs is the digits training split. For each --hybrid_seeds seed: the first layer is recovered
once through a float64 logits Oracle (its queries counted), then for each total budget (the first layer's queries
plus each of --hybrid_extra_queries) the students `pure`, `frozen` and `init` are trained (--hybrid_steps Adam
steps, no tuning of any setting) and compared by top-1 agreement with the victim on the digits test split and on
--hybrid_box_inputs uniform points of [0, 1]^64 (off the data). Rows per run, then per (method, budget) the mean and
the standard deviation over seeds. Victim, attack and learning draw independent seeds.
"""

from __future__ import annotations

import pathlib

import numpy as np
from absl import flags, logging

from extraction.oracle import Oracle
from functional_equivalence import align
from functional_equivalence.deep import hybrid, network
from launch import (
  common,  # noqa: F401  (defines --seed, --workdir)
  experiments,
)

flags.DEFINE_list("hybrid_victim_hidden", ["128", "128"], "Hidden widths of the digits victim.")
flags.DEFINE_list(
  "hybrid_student_hidden",
  None,
  "Hidden widths of the pure student (default: the victim's, as an "
  "attacker who guessed them; the hybrid students keep the recovered first layer's width).",
)
flags.DEFINE_list("hybrid_extra_queries", ["1000", "10000"], "Learning queries beyond the first layer's.")
flags.DEFINE_integer("hybrid_steps", 3000, "Adam steps of each student.", lower_bound=1)
flags.DEFINE_integer("hybrid_seeds", 3, "Seeds of the first-layer attack and the learning.", lower_bound=1)
flags.DEFINE_integer(
  "hybrid_box_inputs", 10_000, "Uniform points of [0, 1]^d for the off-data agreement.", lower_bound=1
)
FLAGS = flags.FLAGS


@flags.validator("hybrid_extra_queries", message="--hybrid_extra_queries takes positive integers")
def _check_extra(values):
  return all(v.strip().isdigit() and int(v) > 0 for v in values)


@flags.validator("hybrid_victim_hidden", message="--hybrid_victim_hidden takes positive integers, e.g. 128,128")
def _check_hidden(values):
  return len(values) > 0 and all(v.strip().isdigit() and int(v) > 0 for v in values)


@experiments.register("hybrid")
def run(workdir: pathlib.Path) -> list[dict]:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  hidden = [int(h) for h in FLAGS.hybrid_victim_hidden]
  student_hidden = [int(h) for h in (FLAGS.hybrid_student_hidden or FLAGS.hybrid_victim_hidden)]
  net, (x_train, _, x_test, _) = network.digits_net(FLAGS.seed, hidden)
  network.save_npz(workdir / "victim.npz", net)
  box = np.random.default_rng([FLAGS.seed, 3]).uniform(size=(FLAGS.hybrid_box_inputs, net.sizes[0]))
  rows = []
  for s in range(FLAGS.hybrid_seeds):
    attack_seed, learn_seed = (int(v) for v in np.random.SeedSequence([FLAGS.seed, 14, s]).generate_state(2))
    first = hybrid.first_layer(
      Oracle(network.backend(net), output="logits", record_inputs=False), net.sizes[0], attack_seed
    )
    logging.info("hybrid seed %d: first layer of %d units in %d queries", s, first[0].shape[1], first[2])
    for extra in (int(e) for e in FLAGS.hybrid_extra_queries):
      for method in hybrid.METHODS:
        oracle = Oracle(network.backend(net), output="logits", record_inputs=False)
        student, counts = hybrid.run(
          oracle, x_train, student_hidden, first[2] + extra, method, learn_seed, FLAGS.hybrid_steps, first
        )
        assert counts["learning_queries"] == oracle.used
        rows.append(
          dict(
            method=method,
            seed=s,
            extra_queries=extra,
            **counts,
            first_layer_units=int(first[0].shape[1]),
            fidelity=align.logit_agreement(net, student, x_test)["agreement"],
            box_fidelity=align.logit_agreement(net, student, box)["agreement"],
          )
        )
        logging.info("hybrid: %s", rows[-1])
  summary = []
  for extra in (int(e) for e in FLAGS.hybrid_extra_queries):
    for method in hybrid.METHODS:
      runs = [r for r in rows if r["method"] == method and r["extra_queries"] == extra]
      fid, boxf = np.array([r["fidelity"] for r in runs]), np.array([r["box_fidelity"] for r in runs])
      summary.append(
        dict(
          method=f"{method} (mean of {len(runs)})",
          extra_queries=extra,
          queries=float(np.mean([r["queries"] for r in runs])),
          fidelity=float(fid.mean()),
          fidelity_std=float(fid.std()),
          box_fidelity=float(boxf.mean()),
          box_fidelity_std=float(boxf.std()),
        )
      )
  return rows + summary
