"""Flags and the `hybrid` experiment: the first hidden layer by the critical-point method, the rest learned, against
learning the whole network with the same number of queries (functional_equivalence/deep/hybrid.py).

  python -m launch.run --flagfile=configs/hybrid_digits.flags

The victim is a ReLU network d-(--hybrid_victim_hidden)-10 trained in float64 on scikit-learn digits (--seed); the
attacker's pool of inputs is the digits training split. For each --hybrid_seeds seed: the first layer is recovered
once through a float64 Oracle (--hybrid_oracle_output: logits, or probabilities), its queries counted, then for
each total budget (the first layer's queries plus each of --hybrid_extra_queries) the students `pure`, `frozen` and
`init` are trained for each of --hybrid_steps Adam step budgets (every budget reported, none selected; Adam's rate
--hybrid_learning_rate, fixed or cosine-decayed, --hybrid_schedule: configs/hybrid_digits_tuned.flags has the ones
chosen on 300 held-out pool images), `frozen` and `init` also fitting the first layer attack's answers
(--hybrid_reuse_answers; half of each batch, chosen over fitting them in proportion on the same held-out images,
not the test split), and compared by top-1 agreement and mean centred-logit error with the victim on the digits
test split, on NOISE_COPIES copies of each test image under Gaussian noise of each --hybrid_noise standard deviation
(clipped to [0, 1]; between the data and the box), and on --hybrid_box_inputs uniform points of [0, 1]^64 (off the
data). Rows per run, then per (steps, method, budget) the mean and the standard deviation over seeds. Victim,
attack, learning and evaluation draw independent seeds.
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
flags.DEFINE_list("hybrid_steps", ["3000"], "Adam step budgets; every student is trained once for each.")
flags.DEFINE_list(
  "hybrid_noise", ["0.05", "0.1", "0.2"], "Gaussian noise standard deviations of the noisy-test agreement."
)
flags.DEFINE_integer("hybrid_seeds", 3, "Seeds of the first-layer attack and the learning.", lower_bound=1)
flags.DEFINE_enum(
  "hybrid_oracle_output",
  "logits",
  ["logits", "probabilities"],
  "What the oracle returns, to the first layer's attack and to the learning (probabilities: the logit differences "
  "to class 0 are fitted).",
)
flags.DEFINE_bool(
  "hybrid_reuse_answers",
  True,
  "The frozen and init students also fit the first layer attack's answers (paid for: half of every batch, far "
  "points' errors weighted by their inverse squared distance; functional_equivalence/deep/hybrid.py).",
)
flags.DEFINE_float(
  "hybrid_reuse_share",
  0.5,
  "The share of every batch given to the first layer attack's answers when they are fitted (chosen on held-out "
  "pool images: benchmarks/hybrid_reuse_choice.py).",
)
flags.DEFINE_enum(
  "hybrid_schedule",
  "constant",
  list(hybrid.SCHEDULES),
  "Adam's learning rate over each student's steps: constant, or cosine-decayed to 0 (every student the same; "
  "benchmarks/hybrid_reuse_choice.py compares them on held-out pool images).",
)
flags.DEFINE_float("hybrid_learning_rate", 1e-3, "Adam's (peak) learning rate, every student the same.")
flags.DEFINE_integer(
  "hybrid_box_inputs", 10_000, "Uniform points of [0, 1]^d for the off-data agreement.", lower_bound=1
)
FLAGS = flags.FLAGS
NOISE_COPIES = 10  # noisy copies of each test image per --hybrid_noise strength


@flags.validator("hybrid_extra_queries", message="--hybrid_extra_queries takes positive integers")
def _check_extra(values):
  return all(v.strip().isdigit() and int(v) > 0 for v in values)


@flags.validator("hybrid_steps", message="--hybrid_steps takes positive integers, e.g. 3000,10000")
def _check_steps(values):
  return len(values) > 0 and all(v.strip().isdigit() and int(v) > 0 for v in values)


@flags.validator(
  "hybrid_reuse_share",
  message="--hybrid_reuse_share takes a share strictly between 0 and 1 (not fitting the answers at all: "
  "--hybrid_reuse_answers=false)",
)
def _check_share(value):
  return 0.0 < value < 1.0


@flags.validator("hybrid_learning_rate", message="--hybrid_learning_rate takes a positive number, e.g. 0.001")
def _check_rate(value):
  return value > 0


@flags.validator("hybrid_noise", message="--hybrid_noise takes non-negative numbers, e.g. 0.05,0.1")
def _check_noise(values):
  try:
    return all(float(v) >= 0 for v in values)
  except ValueError:
    return False


@flags.validator("hybrid_victim_hidden", message="--hybrid_victim_hidden takes positive integers, e.g. 128,128")
def _check_hidden(values):
  return len(values) > 0 and all(v.strip().isdigit() and int(v) > 0 for v in values)


def noisy_copies(x: np.ndarray, stds, seed: int | list[int]) -> dict[float, np.ndarray]:
  """Per standard deviation, NOISE_COPIES copies of each row of x plus Gaussian noise, clipped to [0, 1]."""
  rng = np.random.default_rng(seed)
  copies = np.repeat(x, NOISE_COPIES, axis=0)
  return {std: np.clip(copies + std * rng.normal(size=copies.shape), 0.0, 1.0) for std in stds}


@experiments.register("hybrid")
def run(workdir: pathlib.Path) -> list[dict]:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  hidden = [int(h) for h in FLAGS.hybrid_victim_hidden]
  student_hidden = [int(h) for h in (FLAGS.hybrid_student_hidden or FLAGS.hybrid_victim_hidden)]
  net, (x_train, _, x_test, _) = network.digits_net(FLAGS.seed, hidden)
  network.save_npz(workdir / "victim.npz", net)
  box = np.random.default_rng([FLAGS.seed, 3]).uniform(size=(FLAGS.hybrid_box_inputs, net.sizes[0]))
  noisy = noisy_copies(x_test, [float(v) for v in FLAGS.hybrid_noise], seed=[FLAGS.seed, 4])
  step_budgets = [int(v) for v in FLAGS.hybrid_steps]
  extras = [int(e) for e in FLAGS.hybrid_extra_queries]
  rows = []
  for s in range(FLAGS.hybrid_seeds):
    attack_seed, learn_seed = (int(v) for v in np.random.SeedSequence([FLAGS.seed, 14, s]).generate_state(2))
    output = FLAGS.hybrid_oracle_output
    first = hybrid.first_layer(
      Oracle(network.backend(net), output=output, record_inputs=False), net.sizes[0], attack_seed
    )
    logging.info("hybrid seed %d: first layer of %d units in %d queries", s, first.w.shape[1], first.queries)
    for steps in step_budgets:
      for extra in extras:
        for method in hybrid.METHODS:
          oracle = Oracle(network.backend(net), output=output, record_inputs=False)
          student, counts = hybrid.run(
            oracle,
            x_train,
            student_hidden,
            first.queries + extra,
            method,
            learn_seed,
            steps,
            first,
            reuse=FLAGS.hybrid_reuse_answers,
            share=FLAGS.hybrid_reuse_share,
            schedule=FLAGS.hybrid_schedule,
            learning_rate=FLAGS.hybrid_learning_rate,
          )
          assert counts["learning_queries"] == oracle.used
          rows.append(
            dict(
              method=method,
              oracle_output=output,
              seed=s,
              steps=steps,
              schedule=FLAGS.hybrid_schedule,
              learning_rate=FLAGS.hybrid_learning_rate,
              extra_queries=extra,
              **counts,
              first_layer_units=int(first.w.shape[1]),
              **_fidelity(net, student, "", x_test),
              **{k: v for std, x in noisy.items() for k, v in _fidelity(net, student, f"noise_{std:g}_", x).items()},
              **_fidelity(net, student, "box_", box),
            )
          )
          logging.info("hybrid: %s", rows[-1])
  means = _means(rows, step_budgets, extras)
  plot_by_distance(means, workdir / "fidelity_by_distance.png")
  return rows + means


def _fidelity(net, student, name: str, x: np.ndarray) -> dict:
  """On the inputs x: top-1 agreement (`<name>fidelity`) and the mean over x of the largest centred-logit error
  (`<name>logit_error`, align.centered_logit_error: the paper's fidelity with epsilon-close logits as the
  similarity, reported as the error itself)."""
  return {
    f"{name}fidelity": align.logit_agreement(net, student, x)["agreement"],
    f"{name}logit_error": float(np.mean(align.centered_logit_error(net, student, x))),
  }


def _means(rows: list[dict], step_budgets, extras) -> list[dict]:
  """Per (steps, extra queries, method): the mean and standard deviation over seeds of every fidelity column."""
  metrics = [k for k in rows[0] if k.endswith(("fidelity", "logit_error"))]
  summary = []
  for steps in step_budgets:
    for extra in extras:
      for method in hybrid.METHODS:
        runs = [r for r in rows if (r["method"], r["steps"], r["extra_queries"]) == (method, steps, extra)]
        row = dict(
          method=f"{method} (mean of {len(runs)})",
          steps=steps,
          extra_queries=extra,
          queries=float(np.mean([r["queries"] for r in runs])),
        )
        for k in metrics:
          values = np.array([r[k] for r in runs])
          row[k], row[f"{k}_std"] = float(values.mean()), float(values.std())
        summary.append(row)
  return summary


def plot_by_distance(means: list[dict], path: pathlib.Path) -> None:
  """Mean fidelity (one std) on the test split, each noise strength and the box: one panel per extra-queries
  budget, one bar per (method, steps)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sets = [k for k in means[0] if k.endswith("fidelity")]
  extras = sorted({r["extra_queries"] for r in means})
  fig, axes = plt.subplots(1, len(extras), figsize=(6 * len(extras), 4), sharey=True, squeeze=False)
  for ax, extra in zip(axes[0], extras):
    runs = [r for r in means if r["extra_queries"] == extra]
    width = 0.8 / len(runs)
    for j, r in enumerate(runs):
      x = np.arange(len(sets)) + (j - (len(runs) - 1) / 2) * width
      label = f"{r['method'].split(' ')[0]}, {r['steps']} steps"
      ax.bar(x, [100 * r[k] for k in sets], width, yerr=[100 * r[f"{k}_std"] for k in sets], capsize=2, label=label)
    ax.set_xticks(np.arange(len(sets)), [k.removesuffix("fidelity").strip("_") or "test" for k in sets], fontsize=8)
    ax.set_title(f"first layer + {extra} learning queries (same total for pure)", fontsize=9)
    ax.set_ylim(min(50.0, 100 * min(r[k] for r in means for k in sets) - 5), 100)
    ax.grid(alpha=0.3, axis="y")
  axes[0][0].set_ylabel("fidelity (%)")
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)
