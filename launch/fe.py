"""Flags and the `functional_equivalence` experiment: exact extraction of a two-layer ReLU victim from its logits.

  python -m launch.run --flagfile=configs/fe_digits.flags

The victim is read from --victim_npz (arrays w0 (d,h), b0 (h,), w1 (h,k), b1 (k,); logits = relu(x @ w0 + b0) @ w1
+ b1), drawn at random (--fe_victim=random, --fe_input_dim, --fe_hidden, --fe_outputs) or trained on scikit-learn
digits (--fe_victim=digits, --fe_hidden). The attack sees it only through `extraction.oracle.Oracle`. Writes
<workdir>/victim.npz and <workdir>/recovered.npz (same convention; in probabilities mode class 0's column of w1
and b1[0] are 0) and returns one result row. An attack that cannot succeed (float32/noisy oracle, non-ReLU victim,
limits) raises an `ExtractionError`, which launch.run reports in one line with exit code 1. Float64 throughout
(the run is wrapped in a scoped `jax.enable_x64(True)`).
"""
from __future__ import annotations

import math
import pathlib

from absl import flags, logging
import numpy as np

from extraction import parallel
from functional_equivalence import align, attack, victims
from functional_equivalence.errors import ExtractionError, VictimFileError
from launch import common  # noqa: F401  (defines --seed, --workdir)
from launch import experiments, oracle_flags

flags.DEFINE_string("victim_npz", None, "Two-layer victim as an npz file with arrays w0 (d,h), b0 (h,), w1 (h,k), b1 "
                    "(k,); logits = relu(x @ w0 + b0) @ w1 + b1.")
flags.DEFINE_enum("fe_victim", None, ["npz", "random", "digits"],
                  "Victim of functional_equivalence (default: npz if --victim_npz is given, else random).")
flags.DEFINE_integer("fe_input_dim", 64, "Inputs d of a random victim.", lower_bound=1)
flags.DEFINE_integer("fe_hidden", 32, "Hidden units h of a random or digits victim (not told to the attack).",
                     lower_bound=1)
flags.DEFINE_integer("fe_outputs", 10, "Outputs k of a random victim.", lower_bound=1)
flags.DEFINE_integer("fe_train_steps", 300, "Adam steps (full batch, float64) of the digits victim.", lower_bound=1)
flags.DEFINE_enum("fe_oracle_output", "logits", ["logits", "probabilities"],
                  "What the oracle returns; probabilities are turned into logit differences to class 0.")
flags.DEFINE_enum("fe_oracle_precision", "float64", ["float64", "float32"],
                  "Precision the victim computes in (float32 is refused by the attack with a clear error).")
flags.DEFINE_float("fe_scale", 1.0, "Scale of the attack's random inputs, ~ N(0, scale^2 I).", lower_bound=1e-12)
flags.DEFINE_integer("fe_max_queries", None, "Query limit of the attack (none if unset).", lower_bound=1)
flags.DEFINE_float("fe_seconds", 600.0, "Time limit of the attack in seconds.", lower_bound=0.0)
flags.DEFINE_integer("fe_eval_inputs", 100_000, "Random inputs ~ N(0, scale^2 I) for the logit comparison.",
                     lower_bound=1)

FLAGS = flags.FLAGS


def _victim_kind(kind, npz):
  return kind or ("npz" if npz else "random")


@flags.multi_flags_validator(["fe_victim", "victim_npz"], message="bad --victim_npz")
def _check_victim(values):
  kind, npz = _victim_kind(values["fe_victim"], values["victim_npz"]), values["victim_npz"]
  if kind == "npz" and not npz:
    raise flags.ValidationError("--fe_victim=npz needs --victim_npz=PATH")
  if npz and kind != "npz":
    raise flags.ValidationError(f"--victim_npz is given but --fe_victim={kind}; drop one of them")
  if npz:
    try:
      victims.load_npz(npz)
    except VictimFileError as e:
      raise flags.ValidationError(f"--victim_npz: {e}") from None
  return True


@flags.multi_flags_validator(["experiment", "oracle_url", "fe_victim", "victim_npz"])
def _remote_needs_npz(values):
  """Through --oracle_url the attack needs the served network's npz too, to measure what it recovered."""
  if values["experiment"] == "functional_equivalence" and values["oracle_url"] and _victim_kind(values["fe_victim"], values["victim_npz"]) != "npz":
    raise flags.ValidationError("--oracle_url with functional_equivalence needs --victim_npz=PATH of the served "
                                "network (to compare the recovered weights with it)")
  return True


@flags.multi_flags_validator(["fe_oracle_output", "fe_outputs", "fe_victim", "victim_npz"],
                             message="bad --fe_oracle_output")
def _check_outputs(values):
  kind = _victim_kind(values["fe_victim"], values["victim_npz"])
  if values["fe_oracle_output"] == "probabilities" and kind == "random" and values["fe_outputs"] < 2:
    raise flags.ValidationError("--fe_oracle_output=probabilities needs --fe_outputs >= 2")
  return True


def build_victim(seed: int):
  """The victim chosen by the flags, and a test set (x, y) for digits (else None)."""
  kind = _victim_kind(FLAGS.fe_victim, FLAGS.victim_npz)
  if kind == "npz":
    return victims.load_npz(FLAGS.victim_npz), None
  if kind == "random":
    return victims.random_net(seed, FLAGS.fe_input_dim, FLAGS.fe_hidden, FLAGS.fe_outputs), None
  net, data = victims.digits_net(seed, FLAGS.fe_hidden, FLAGS.fe_train_steps)
  return net, (data[2], data[3])


@experiments.register("functional_equivalence")
def run(workdir: pathlib.Path) -> list[dict]:
  """Builds the victim, extracts it through an Oracle, writes victim.npz and recovered.npz, returns one row."""
  import jax
  with jax.enable_x64(True):  # scoped: other experiments in this process keep their precision
    return _run(pathlib.Path(workdir))


def _run(workdir: pathlib.Path) -> list[dict]:
  workdir.mkdir(parents=True, exist_ok=True)
  net, test = build_victim(FLAGS.seed)
  victims.save_npz(workdir / "victim.npz", net)
  d, h, k = net.shape
  if FLAGS.fe_oracle_output == "probabilities" and k < 2:
    raise ValueError("--fe_oracle_output=probabilities needs a victim with at least 2 outputs")
  dtype = np.float64 if FLAGS.fe_oracle_precision == "float64" else np.float32
  mesh = parallel.data_mesh(FLAGS.num_devices) if dtype == np.float64 else None
  backend = victims.sharded_backend(net, mesh) if mesh is not None else victims.backend(net, dtype)
  oracle = oracle_flags.make_oracle(backend, FLAGS.fe_oracle_output, record_inputs=False)
  cfg = attack.Config(scale=FLAGS.fe_scale, max_queries=FLAGS.fe_max_queries, max_seconds=FLAGS.fe_seconds)
  try:
    result = attack.extract(oracle, d, cfg, seed=FLAGS.seed)
  except ExtractionError as e:  # launch.run turns it into a one-line error and exit code 1
    logging.error("functional_equivalence stopped after %d queries: %s: %s", oracle.used, type(e).__name__, e)
    raise
  victims.save_npz(workdir / "recovered.npz", result.net)
  diff = FLAGS.fe_oracle_output == "probabilities"
  weights = align.weight_error(net, result.net, differences=diff)
  rand = align.random_agreement(net, result.net, FLAGS.fe_eval_inputs, FLAGS.fe_scale, FLAGS.seed + 1, diff)
  row = dict(method="functional_equivalence", victim=_victim_kind(FLAGS.fe_victim, FLAGS.victim_npz),
             shape=f"{d}-{h}-{k}", oracle_output=FLAGS.fe_oracle_output, queries=result.queries,
             queries_log2=round(math.log2(max(result.queries, 1)), 2), hidden_units_found=result.hidden_units_found,
             inert_true_units=weights["inert_true_units"], max_weight_error=weights["max_weight_error"],
             weight_error_bits=round(weights["weight_error_bits"], 1), max_logit_error=rand["max_logit_error"],
             agreement=rand["agreement"], eval_inputs=rand["count"], seconds=round(result.seconds, 2))
  if test is not None:
    t = align.logit_agreement(net, result.net, test[0], diff)
    row.update(test_max_logit_error=t["max_logit_error"], test_agreement=t["agreement"],
               victim_test_accuracy=float(np.mean(victims.logits(net, test[0]).argmax(1) == test[1])),
               extracted_test_accuracy=float(np.mean(victims.logits(result.net, test[0]).argmax(1) == test[1])))
  row["rounds"] = result.rounds
  logging.info("functional_equivalence: %s", row)
  return [row]
