"""Deep functionally-equivalent extraction (issue 14): which networks the layer-by-layer attack recovers, at what cost.

  flock /tmp/heavy.lock python -m benchmarks.fe_deep [--seeds=5] [--eval_inputs=1000000] [--big]

Victims, each attacked through a float64 logits Oracle (--oracle_output=probabilities: a probabilities one) by
functional_equivalence.deep.attack, not told the depth or the widths, equivalence claimed on the ball of radius 1000
(with probabilities, on the part of it where none underflows):
1. random Gaussian networks (deep.network.random_net) of --random_sizes, --seeds seeds each: the success rate;
   with --rare_sizes also random networks whose last hidden layer has a unit on at --rare_fraction of the ball
   (deep.network.with_rare_unit), as trained networks have; with --pruned_sizes random networks whose weights
   from the first hidden layer to the second are magnitude-pruned (--pruned_fraction of them 0, deep.network.pruned);
2. the network sizes of Carlini, Jagielski, Mironov (CRYPTO 2020), trained as their train_models.py trains theirs
   (deep.network.cme_net: memorising 20 random points, our own optax code);
3. networks trained on scikit-learn digits (64 inputs; with --big also 784 inputs of --big_hidden widths, the 8x8
   images upsampled), and with --tabular_victims on scikit-learn's other classification datasets (breast_cancer,
   wine, iris; min-max scaled to [0, 1], or standardised with --tabular_scaling=standard);
4. the first hidden layer only of digits networks (--first_layer_hidden): units matched, their largest error.
Per run: status (ok: the attack finished, or the error's type and message), verdict (`verdict`: exact, close,
equivalent on the points or wrong, and why), queries (log2), widths found, how each layer's signs were
found, max aligned weight error per layer and overall (bits; weights the evaluation points do not determine set
aside and counted, `undetermined_weights`), the final check's repairs, the units promoted from pending
candidates (`promoted_units`), the signatures read by following a surface where more features were on than
inputs (`followed_units`, deep.expansive; a first layer's signs flipped by deep.wide_signs show as "audit" in
`signs`) and the units of a strict layer taken back from its lenient search (`units_taken_back`,
deep.crosscheck.straddling), the weights from features never seen on read from gradient jumps (`read_jumps`,
deep.jumps) and from the output's gradient (`read_gradients`, deep.gradient_reads), the same for the run's network before its polish
step (`peeled_*`: what the layer-by-layer recovery alone gives, and its queries; verdict with agreement taken as
1.0), top-1 (one output: sign) agreement and max |logit
difference| on --eval_inputs inputs ~ N(0, I) and on --domain_inputs points over the ball, seconds (attack only);
the JSON rows also keep all of the attack's counters (`stats`: AttackResult.stats, e.g. `read_weights_refused`,
`unvouched_passed`, the queries of each stage).
The evaluation points include, since the fifteenth session, those where each (unit, feature) pair of the victim on
together at few points of the ball is (deep.active.co_active_points on the victim): before, a weight that matters
only there was set aside as undetermined, and a network off by 0.28 there was counted exact (fe_deep_rare's
10-8-8-8-1 seed 0); since the thirty-third, where each victim unit on at every such point, or at none, is least and
greatest (deep.remainder.turning_points on the victim): a unit on at every sampled point was off far out, where a
network counted exact was off by 0.16 (fe_deep_fresh's 7-7-7-7-2 seed 1).
Victim, attack and evaluation draw independent seeds. Writes benchmarks/results/fe_deep.{json,md}, with a count of
the outcomes per kind of victim: exact, close, equivalent (units unmatched, the victim's logits on the points), wrong
(a network returned that is not the victim's: silent) and stopped (the attack's one-line error).
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, machine, report_head

flags.DEFINE_list(
  "random_sizes", ["10-8-8-1", "20-10-10-1", "12-8-6-3", "10-8-8-8-1"], "Sizes d-n0-...-k of the random victims."
)
flags.DEFINE_integer("seeds", 5, "Seeds per random size.")
flags.DEFINE_list(
  "rare_sizes",
  [],
  "Sizes of random victims whose last hidden layer has a rarely active unit (network.with_rare_unit), --seeds each.",
)
flags.DEFINE_float("rare_fraction", 3e-4, "Share of the ball's points where the rare unit is on.", lower_bound=0.0)
flags.DEFINE_list(
  "pruned_sizes", [], "Sizes of random victims whose second weight matrix is magnitude-pruned, --seeds each."
)
flags.DEFINE_float(
  "pruned_fraction", 0.75, "Share of that matrix's weights set to 0 (smallest first).", lower_bound=0.0, upper_bound=1.0
)
flags.DEFINE_list(
  "cme_sizes", ["10-10-10-1", "10-20-20-1", "40-20-10-10-1", "80-40-20-1"], "Sizes of the CME-style trained victims."
)
flags.DEFINE_list("digits_hidden", ["16-16", "32-32", "64-64"], "Hidden widths of the digits victims (64 inputs).")
flags.DEFINE_integer(
  "digits_seeds",
  1,
  "Digits victims per width, trained from seeds 0, 1, ... (data split and initialisation).",
  lower_bound=1,
)
flags.DEFINE_list(
  "first_layer_hidden",
  ["128-128"],
  "Digits victims whose first hidden layer only is recovered "
  "(Config.layers=1, the first stage a hybrid FE + learning would use).",
)
flags.DEFINE_list(
  "tabular_victims",
  [],
  "Victims dataset:widths trained on scikit-learn tabular data (deep.network.tabular_net), e.g. breast_cancer:32-16-8.",
)


@flags.validator(
  "tabular_victims", message="--tabular_victims takes dataset:widths entries, e.g. breast_cancer:32-16-8"
)
def _check_tabular(values):
  return all(
    len(v.split(":")) == 2 and all(w.isdigit() and int(w) > 0 for w in v.split(":")[1].split("-")) for v in values
  )


flags.DEFINE_integer("tabular_seeds", 1, "Tabular victims per entry, trained from seeds 0, 1, ...", lower_bound=1)
flags.DEFINE_enum(
  "tabular_scaling",
  "minmax",
  ["minmax", "standard"],
  "Input scaling of the tabular victims (deep.network.tabular_net).",
)
flags.DEFINE_bool("big", False, "Also the 784-input digits victims of --big_hidden (upsampled images).")
flags.DEFINE_list("big_hidden", ["32-32"], "Hidden widths of the --big victims (784 inputs).")
flags.DEFINE_integer("eval_inputs", 1_000_000, "Inputs ~ N(0, I) for agreement.")
flags.DEFINE_integer("domain_inputs", 100_000, "Points over the ball (spheres of radii 1 .. 1000) for agreement.")
flags.DEFINE_float("max_seconds", 1200.0, "Time limit of one attack.")
flags.DEFINE_bool(
  "unsettled_take_back", False, "Config.unsettled_take_back: finish and take back an unsettled lenient search's units."
)
flags.DEFINE_integer(
  "strict_blind_tries",
  0,
  "Config.strict_blind_tries: surface tries of a strict test, its blind rounds free (0: off).",
  lower_bound=0,
)
flags.DEFINE_integer(
  "retest_blind_tries",
  16,
  "Config.retest_blind_tries: where the attack would stop (a layer finds no unit), the layer before's pending "
  "candidates tested again with this many surface tries, blind rounds free (0: never).",
  lower_bound=0,
)
flags.DEFINE_string("out", "fe_deep", "Result file stem in benchmarks/results/.")
flags.DEFINE_enum(
  "oracle_output",
  "logits",
  ["logits", "probabilities"],
  "What the oracle returns; with probabilities the victims need 2 or more outputs, the attack works on the ball "
  "where no probability underflows (`probability_radius`), and weights and logits are compared as differences to "
  "class 0.",
)
flags.DEFINE_list(
  "attack_seeds", [], "Run each victim once per attack seed listed (default: one, from the victim's seed stream)."
)
FLAGS = flags.FLAGS

QUOTED = [
  "Carlini, Jagielski, Mironov (CRYPTO 2020): 784-128-1 in 2^21.5 queries, worst-case error 2^-25; a ~4,000-"
  "parameter network in 2^18.5 queries at 2^-40 (their paper; their code is told the layer sizes and brute-forces "
  "2^K sign patterns for the last hidden layer).",
  "Canales-Martinez et al. (Eurocrypt 2024): all signs of a CIFAR-10 3072-256x8-10 network (~1.2M parameters) in "
  "30 minutes on 256 cores, weights up to sign assumed known.",
  "Foerster et al. (NeurIPS 2024): a 16,721-parameter two-hidden-layer MNIST network in 98 minutes.",
]


def _differences() -> bool:
  """Weights and logits compared as differences to class 0 (what a probabilities oracle determines)."""
  return FLAGS.oracle_output == "probabilities"


def _agreement(net, rec, x):
  from functional_equivalence import align

  worst, same = 0.0, 0.0
  for lo in range(0, len(x), 100_000):
    r = align.logit_agreement(net, rec, x[lo : lo + 100_000], differences=_differences())
    worst, same = max(worst, r["max_logit_error"]), same + r["agreement"] * len(x[lo : lo + 100_000])
  return same / len(x), worst


def run_seeds(seed: int) -> tuple:
  """(attack seed, evaluation seed) of the runs on the victim of `seed`, independent of the victim's stream."""
  return tuple(int(s) for s in np.random.SeedSequence([seed, 14]).generate_state(2))


def victim_fields(name: str, net, seed: int) -> dict:
  """The columns of a row that say which victim it is."""
  return dict(
    victim=name,
    shape=net.shape_text,
    parameters=int(sum(w.size + b.size for w, b in zip(net.weights, net.biases))),
    seed=seed,
  )


def _plain(stats: dict) -> dict:
  """The attack's counters (`AttackResult.stats`) as JSON numbers and strings, for the row's JSON record only."""
  return {
    k: (float(v) if isinstance(v, float) else int(v))
    for k, v in stats.items()
    if isinstance(v, (int, float, np.number))
  }


def run_one(name: str, net, seed: int, layers=None, attack_seed: int | None = None) -> dict:
  """One attack and its evaluation (module docstring); with layers=1 the first hidden layer only (its units
  matched to the victim's by direction, its largest aligned error)."""
  from extraction.oracle import Oracle
  from functional_equivalence.deep import align, attack, network

  class Counting:
    def __init__(self, backend):
      self.backend, self.rows = backend, 0

    def __call__(self, x):
      self.rows += len(x)
      return self.backend(x)

  counter = Counting(network.backend(net))
  oracle = Oracle(counter, output=FLAGS.oracle_output, record_inputs=False)
  default_seed, eval_seed = run_seeds(seed)
  attack_seed = default_seed if attack_seed is None else attack_seed
  row = victim_fields(name, net, seed) | dict(attack_seed=attack_seed)
  start = time.time()
  try:
    result = attack.extract(
      oracle,
      net.sizes[0],
      attack.Config(
        max_seconds=FLAGS.max_seconds,
        layers=layers,
        unsettled_take_back=FLAGS.unsettled_take_back,
        strict_blind_tries=FLAGS.strict_blind_tries,
        retest_blind_tries=FLAGS.retest_blind_tries,
      ),
      seed=attack_seed,
    )
  except Exception as e:  # reported as a row, the benchmark goes on
    row.update(
      status=f"{type(e).__name__}: {str(e)[:160]}",
      queries=counter.rows,
      queries_log2=round(math.log2(max(counter.rows, 1)), 2),
      seconds=round(time.time() - start, 1),
    )
    return row
  seconds = time.time() - start
  assert result.queries == counter.rows
  if layers == 1:
    canonical = align.canonical(net)[0]
    true, true_b, rec = canonical.weights[0], canonical.biases[0], result.net.weights[0]
    rec_b = result.net.biases[0] / np.linalg.norm(rec, axis=0)
    rec = rec / np.linalg.norm(rec, axis=0)
    best = np.argmax(true.T @ rec, axis=1)
    errs = np.maximum(np.max(np.abs(true - rec[:, best]), axis=0), np.abs(true_b - rec_b[best]))
    worst, matched = float(np.max(errs)), int(np.sum(errs < 1e-6))
    row.update(
      status="ok",
      queries=result.queries,
      queries_log2=round(math.log2(result.queries), 2),
      widths_found=f"{rec.shape[1]} (first layer only)",
      signs="+".join(result.sign_methods[0]),
      layer_errors=[float(f"{worst:.3g}")],
      units_matched=matched,
      verdict=first_layer_verdict(worst, matched, true.shape[1], rec.shape[1]),
      error_bits=round(-math.log2(max(worst, 1e-300)), 1),
      seconds=round(seconds, 1),
    )
    return row
  row.update(
    status="ok",
    queries=result.queries,
    queries_log2=round(math.log2(result.queries), 2),
    widths_found="-".join(map(str, result.widths)),
    signs=", ".join(m if isinstance(m, str) else "+".join(m) for m in result.sign_methods),
    repairs=result.stats.get("repair_rounds", 0),
    promoted_units=result.stats.get("promoted_units", 0),
    units_taken_back=result.stats.get("units_taken_back", 0),
    followed_units=result.stats.get("followed_units", 0),
    read_jumps=result.stats.get("read_jumps", 0),
    read_gradients=result.stats.get("read_gradients", 0),
    **{k: result.stats[k] for k in ("probability_radius",) if k in result.stats},
    **evaluate(net, result.net, eval_seed, peeled=result.peeled),
    seconds=round(seconds, 1),
    stats=_plain(result.stats),
  )
  if result.peeled is not None:  # the same run before its polish step: its queries
    polish_queries = result.queries_by_stage.get("polish", 0)
    row.update(
      polish_steps=result.stats.get("polish_steps", 0),
      peeled_queries_log2=round(math.log2(result.queries - polish_queries), 2),
    )
  return row


def first_layer_verdict(error: float, matched: int, true_width: int, found_width: int) -> str:
  """deep.align.verdict for a first layer recovered alone: every unit matched (none extra), graded by align.grade."""
  from functional_equivalence.deep import align

  if matched < true_width or found_width != true_width:
    return f"wrong: {matched} of {true_width} units matched, {found_width} found"
  grade = align.grade(error)
  return "exact (first layer)" if grade == "exact" else grade


def evaluate(net, rec, eval_seed: int, peeled=None) -> dict:
  """A recovered network `rec` against the victim `net` (module docstring): aligned weight errors on 50,000 N(0, I)
  inputs and 50,000 points over the ball, agreement and max |logit difference| on --eval_inputs and on the points
  over the ball (--domain_inputs), both sets with the points where a rarely co-active (unit, feature) pair of the
  victim is on (deep.active.co_active_points on the victim) and where each victim unit on at every such point, or at
  none, is least and greatest (deep.remainder.turning_points), drawn from `eval_seed`. With `peeled` (the same run's
  network before its polish step), also its weight errors on the same points (`peeled_*`; its verdict takes
  agreement 1.0 as given)."""
  from functional_equivalence import domain
  from functional_equivalence.deep import active, align, remainder

  rng = np.random.default_rng(eval_seed)
  d = net.sizes[0]
  x = rng.normal(size=(FLAGS.eval_inputs, d))
  over = domain.Ball(1000.0).check_points(rng, d, FLAGS.domain_inputs)
  # and where each of the victim's (unit, feature) pairs on together at few points of the ball is (found on the
  # victim): a weight that matters only there is compared, not set aside as undetermined (fifteenth session)
  together = active.co_active_points(net, domain.Ball(1000.0), rng, starts=8, deeper=32)
  # and where each of the victim's units on at every one of those points, or at none, is least and greatest (found
  # on the victim): a unit on at every sampled point can be off far out (thirty-third session)
  sampled = np.concatenate([x[:50_000], over[:50_000], together])
  turning = remainder.turning_points(net, sampled, domain.Ball(1000.0), rng)
  weight_points = np.concatenate([sampled, turning])
  over = np.concatenate([over, together, turning])

  def weights(candidate) -> dict:
    err = align.weight_error(net, candidate, weight_points, differences=_differences())
    return dict(
      layer_errors=[float(f"{e:.3g}") for e in err["errors"]],
      max_weight_error=err["max_weight_error"],
      error_bits=round(err["weight_error_bits"], 1),
      inert_units=err.get("inert_true_units"),
      undetermined_weights=err.get("undetermined_weights"),
      folded_units=err.get("folded_units"),
    )

  fields = weights(rec)
  fields["agreement"], fields["max_logit_error"] = _agreement(net, rec, x)
  fields["domain_agreement"], fields["domain_max_logit_error"] = _agreement(net, rec, over)
  out = dict(fields, verdict=align.verdict(net, rec, fields))
  if peeled is not None:
    before = dict(weights(peeled), agreement=1.0, domain_agreement=1.0)
    out.update(
      peeled_layer_errors=before["layer_errors"],
      peeled_error_bits=before["error_bits"],
      peeled_verdict=align.verdict(net, peeled, before),
    )
  return out


def victims():
  """(name, net, seed) of every run."""
  from functional_equivalence.deep import network

  for sizes in FLAGS.random_sizes:
    for seed in range(FLAGS.seeds):
      yield "random", network.random_net(seed, [int(s) for s in sizes.split("-")]), seed
  if FLAGS.rare_sizes:
    from functional_equivalence import domain

    for sizes in FLAGS.rare_sizes:
      shape = [int(s) for s in sizes.split("-")]
      points = domain.Ball(1000.0).check_points(np.random.default_rng([99, len(shape)]), shape[0], 200_000)
      for seed in range(FLAGS.seeds):
        net = network.with_rare_unit(network.random_net(seed, shape), FLAGS.rare_fraction, points)
        yield f"random, a unit on at {FLAGS.rare_fraction:g} of the ball", net, seed
  for sizes in FLAGS.pruned_sizes:
    for seed in range(FLAGS.seeds):
      net = network.pruned(network.random_net(seed, [int(s) for s in sizes.split("-")]), 1, FLAGS.pruned_fraction)
      yield f"random, {FLAGS.pruned_fraction:g} of the second weights pruned", net, seed
  for sizes in FLAGS.cme_sizes:
    yield "cme-trained", network.cme_net(0, [int(s) for s in sizes.split("-")]), 0
  for hidden in FLAGS.digits_hidden:
    for seed in range(FLAGS.digits_seeds):
      net, _ = network.digits_net(seed, [int(h) for h in hidden.split("-")])
      yield "digits", net, seed
  for entry in FLAGS.tabular_victims:
    name, _, hidden = entry.partition(":")
    for seed in range(FLAGS.tabular_seeds):
      net, _ = network.tabular_net(name, seed, [int(h) for h in hidden.split("-")], scaling=FLAGS.tabular_scaling)
      yield f"{name} ({FLAGS.tabular_scaling})", net, seed
  if FLAGS.big:
    for hidden in FLAGS.big_hidden:
      net, _ = network.digits_net(0, [int(h) for h in hidden.split("-")], side=28)
      yield "digits 28x28", net, 0


def first_layer_victims():
  from functional_equivalence.deep import network

  for hidden in FLAGS.first_layer_hidden:
    net, _ = network.digits_net(0, [int(h) for h in hidden.split("-")])
    yield "digits, first layer", net, 0


OUTCOMES = ("exact", "close", "equivalent", "wrong", "stopped")


def outcome(row: dict) -> str:
  """ "exact", "close", "equivalent" (units unmatched, the same logits on the points), "wrong" (a network returned
  that is not the victim's) or "stopped" (an ExtractionError)."""
  if row["status"] != "ok":
    return "stopped"
  verdict = row.get("verdict", "")
  return next((o for o in OUTCOMES[:3] if verdict.startswith(o)), "wrong")


def markdown(rows, command, info, seconds) -> str:
  cols = [
    "victim",
    "shape",
    "parameters",
    "seed",
    "attack_seed",
    "status",
    "verdict",
    "queries_log2",
    "widths_found",
    "signs",
    "layer_errors",
    "error_bits",
    "undetermined_weights",
    "repairs",
    "promoted_units",
    "units_taken_back",
    "followed_units",
    "read_jumps",
    "read_gradients",
    "polish_steps",
    "peeled_queries_log2",
    "peeled_layer_errors",
    "peeled_error_bits",
    "peeled_verdict",
    "units_matched",
    "agreement",
    "domain_agreement",
    "max_logit_error",
    "domain_max_logit_error",
    "seconds",
  ]
  lines = report_head(
    "Deep functionally-equivalent extraction (issue 14)", f"Command: `{command}`", info, seconds, cols
  )
  for r in rows:
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  lines += [
    "",
    "Exact (every unit matched, error <= 2^-30, agreement 1.0) by kind of victim (in brackets: the same runs' "
    "networks before the polish step, `peeled_verdict`), then every outcome: close (matched, <= 1e-6), equivalent "
    "(units unmatched, but agreement 1.0 and every logit within 2^-30 of the victim's on both sets of points: "
    "another network computing the same function there), wrong (the attack returned a network that is not the "
    "victim's: a silent failure) and stopped (the attack raised its one-line error):",
    "",
  ]
  for r_kind in sorted({(r["victim"], r["shape"]) for r in rows}):
    runs = [r for r in rows if (r["victim"], r["shape"]) == r_kind]
    good = sum(r.get("verdict", "").startswith("exact") for r in runs)
    peeled = sum(r.get("peeled_verdict", r.get("verdict", "")).startswith("exact") for r in runs)
    counts = {o: sum(outcome(r) == o for r in runs) for o in OUTCOMES}
    spread = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines.append(f"- {r_kind[0]} {r_kind[1]}: {good} of {len(runs)} ({peeled} of {len(runs)}); {spread}")
  lines += ["", "Published figures (quoted, not re-run):", ""] + [f"- {q}" for q in QUOTED]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  import jax
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # the attack's per-round progress lines
  command = "python -m benchmarks.fe_deep " + " ".join(sys.argv[1:])
  start = time.time()
  rows = []
  with jax.enable_x64(True):
    attack_seeds: list[int | None] = [int(a) for a in FLAGS.attack_seeds] or [None]
    for name, net, seed in victims():
      for attack_seed in attack_seeds:
        rows.append(run_one(name, net, seed, attack_seed=attack_seed))
        print(json.dumps(rows[-1]), flush=True)
    for name, net, seed in first_layer_victims():
      rows.append(run_one(name, net, seed, layers=1))
      print(json.dumps(rows[-1]), flush=True)
  seconds = time.time() - start
  info = machine("jax", "numpy", "scipy")
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.out}.json").write_text(
    json.dumps(dict(command=command, machine=info, seconds=seconds, rows=rows, quoted=QUOTED), indent=1, default=str)
  )
  (RESULTS / f"{FLAGS.out}.md").write_text(markdown(rows, command, info, seconds))
  print(f"wrote {RESULTS / FLAGS.out}.{{json,md}}")


if __name__ == "__main__":
  app.run(main)
