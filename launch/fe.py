"""Flags and the `functional_equivalence` experiment: exact extraction of a ReLU victim of any depth from its logits.

  python -m launch.run --flagfile=configs/fe_deep.flags
  python -m launch.run --flagfile=configs/fe_digits.flags
  python -m launch.run --experiment=functional_equivalence --victim_npz=DEEP.npz --workdir=DIR
  python -m launch.run --experiment=functional_equivalence --oracle_url=URL --api_key=KEY --workdir=DIR

The victim is read from --victim_npz (arrays w0, b0, ..., wL, bL; logits = relu(...relu(x @ w0 + b0)...) @ wL + bL;
two-layer: w0 (d,h), b0 (h,), w1 (h,k), b1 (k,)), drawn at random (--fe_victim=random, --fe_input_dim, --fe_hidden
or --fe_layers, --fe_outputs), trained on scikit-learn digits (--fe_victim=digits, --fe_hidden or --fe_layers) or on
one of its tabular datasets (--fe_victim=tabular --fe_dataset=breast_cancer|wine|iris), or, with --oracle_url and no
--victim_npz, unknown: a pure black-box attack on a served network, d from the service (or --fe_input_dim). The
attack sees the victim only through an Oracle. --fe_attack=deep (default) is not told the depth or the widths
(functional_equivalence/deep/, layer by layer); --fe_attack=two_layer is the paper's attack, which assumes one hidden
layer (fewer queries when it holds, and the certificate of certify.py). The domain of the claim
is the ball of radius --fe_radius (default 1000 * --fe_scale) or the box --fe_box. Writes <workdir>/recovered.npz
(same convention; in probabilities mode class 0's column of the output layer and its bias are 0),
<workdir>/units.json (two-layer: per hidden unit kind, estimated row error, effect on the domain, negligible; deep:
per layer the units' estimated errors, features seen and sign methods) and, with a known victim,
<workdir>/victim.npz; returns one result row: what needs no ground truth (queries per stage, units, the final
check's error, the domain, seconds) and, with a known victim, the aligned weight errors per array (deep: per layer),
agreement on random inputs and over the domain, and (two-layer) the worst-case certificate (certify.py). Victim,
attack and evaluation draw independent random streams (--seed for the victim; the attack's and evaluation's seeds
are derived from it unless --fe_attack_seed / --fe_eval_seed are given). An attack that cannot succeed
(float32/noisy oracle, non-ReLU victim, limits) raises an `ExtractionError`, which launch.run reports in one line
with exit code 1.
Float64 throughout (the run is wrapped in a scoped `jax.enable_x64(True)`).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
from absl import flags, logging

from extraction import parallel
from functional_equivalence import align, attack, certify, victims
from functional_equivalence import domain as domains
from functional_equivalence.deep import align as deep_align
from functional_equivalence.deep import attack as deep_attack
from functional_equivalence.deep import network
from functional_equivalence.errors import ExtractionError, VictimFileError
from launch import (
  common,  # noqa: F401  (defines --seed, --workdir)
  experiments,
  oracle_flags,
)

flags.DEFINE_string(
  "victim_npz",
  None,
  "Victim as an npz file with arrays w0, b0, ..., wL, bL (any depth L >= 1; "
  "two-layer: w0 (d,h), b0 (h,), w1 (h,k), b1 (k,), logits = relu(x @ w0 + b0) @ w1 + b1). With "
  "--oracle_url: the served network, used only to evaluate the result.",
)
flags.DEFINE_enum(
  "fe_attack",
  "deep",
  ["deep", "two_layer"],
  "deep: not told the depth or the widths (any depth; a two-layer victim is its depth-1 case); "
  "two_layer: the paper's attack, which assumes one hidden layer (fewer queries when it holds).",
)
flags.DEFINE_list(
  "fe_layers",
  None,
  "Hidden widths of a random, digits or tabular victim with several hidden layers, e.g. "
  "10,10 (instead of --fe_hidden; not told to the attack).",
)
flags.DEFINE_enum(
  "fe_victim",
  None,
  ["npz", "random", "digits", "tabular"],
  "Victim of functional_equivalence (default: npz if --victim_npz is given, else random; with "
  "--oracle_url, none: the served network). tabular: trained on --fe_dataset, one of scikit-learn's small "
  "classification datasets.",
)
flags.DEFINE_enum(
  "fe_dataset",
  None,
  ["breast_cancer", "wine", "iris"],
  "Dataset of --fe_victim=tabular (scikit-learn's, offline; extraction.tabular's split drawn with --seed).",
)
flags.DEFINE_enum(
  "fe_tabular_scaling",
  "minmax",
  ["minmax", "standard"],
  "Input scaling of --fe_victim=tabular: features min-max scaled to [0, 1], or standardised by the training "
  "split's mean and deviation (deep.network.tabular_net).",
)
flags.DEFINE_integer(
  "fe_input_dim",
  64,
  "Inputs d of a random victim; with --oracle_url, d if the service does not say (it must agree when it does).",
  lower_bound=1,
)
flags.DEFINE_integer(
  "fe_hidden", 32, "Hidden units h of a random, digits or tabular victim (not told to the attack).", lower_bound=1
)
flags.DEFINE_integer("fe_outputs", 10, "Outputs k of a random victim.", lower_bound=1)
flags.DEFINE_integer(
  "fe_train_steps",
  None,
  "Adam steps (full batch, float64) of a trained victim (default: 300 digits, 500 tabular).",
  lower_bound=1,
)
flags.DEFINE_enum(
  "fe_oracle_output",
  "logits",
  ["logits", "probabilities"],
  "What the oracle returns; probabilities are turned into logit differences to class 0.",
)
flags.DEFINE_enum(
  "fe_oracle_precision",
  "float64",
  ["float64", "float32"],
  "Precision the victim computes in (float32 is refused by the attack with a clear error).",
)
flags.DEFINE_float("fe_scale", 1.0, "Scale of the attack's random inputs, ~ N(0, scale^2 I).", lower_bound=1e-12)
flags.DEFINE_float(
  "fe_radius",
  None,
  "Domain of the claim: the ball |x| <= R (default 1000 * --fe_scale). Every "
  "unit whose hyperplane comes within R of 0 is searched for; the result is checked on the ball.",
  lower_bound=1e-12,
)
flags.DEFINE_list(
  "fe_box", None, "Domain of the claim: the box LOW <= x_j <= HIGH (e.g. 0,1 for images) instead of a ball."
)
flags.DEFINE_integer("fe_max_queries", None, "Query limit of the attack (none if unset).", lower_bound=1)
flags.DEFINE_float("fe_seconds", 600.0, "Time limit of the attack in seconds.", lower_bound=0.0)
flags.DEFINE_integer(
  "fe_polish_steps",
  3,
  "Deep attack: at most this many Gauss-Newton steps on every weight at once after the final check (0: none).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "fe_unsettled_take_back",
  False,
  "Deep attack: the units of a lenient layer search that did not settle are finished, tested under strict "
  "acceptance and taken back when they straddle the strict search's units (deep/attack.py, "
  "Config.unsettled_take_back; opt-in: measured in docs/fe_deep.md, fortieth and forty-first sessions).",
)
flags.DEFINE_integer(
  "fe_strict_blind_tries",
  0,
  "Deep attack: tries to place a strict test's point on a candidate's surface, a round without one then free "
  "(deep/layer.py, LayerConfig.strict_blind_tries; 0: off, 4 tries and blind rounds counted; opt-in: measured in "
  "docs/fe_deep.md, forty-first session).",
  lower_bound=0,
)
flags.DEFINE_integer(
  "fe_retest_blind_tries",
  16,
  "Deep attack: where the attack would stop because a layer finds no unit, the layer before's pending candidates "
  "with every weight known are tested again with this many surface tries, blind rounds free, and those accepted "
  "join it (deep/retest.py, Config.retest_blind_tries; 0: never).",
  lower_bound=0,
)
flags.DEFINE_integer(
  "fe_follow_wide",
  4,
  "Deep attack: most kinks a round whose active features outnumber the inputs are read by following the unit's "
  "surface (deep/expansive.py; 0: such kinks are dropped).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "fe_wide_sign_audit",
  True,
  "Deep attack: a first layer wider than the input has its voted signs checked and corrected by the next layer's "
  "surfaces (deep/wide_signs.py).",
)
flags.DEFINE_integer(
  "fe_eval_inputs", 100_000, "Random inputs ~ N(0, scale^2 I) for the logit comparison.", lower_bound=1
)
flags.DEFINE_integer(
  "fe_domain_eval_inputs",
  20_000,
  "Points over the domain (spheres up to R, or the box's interior, vertices and faces) for the logit comparison.",
  lower_bound=1,
)
flags.DEFINE_integer(
  "fe_attack_seed", None, "Seed of the attack (default: derived from --seed, independent of the victim's)."
)
flags.DEFINE_integer("fe_eval_seed", None, "Seed of the evaluation inputs (default: derived from --seed).")

FLAGS = flags.FLAGS
STAGES = {
  "precision probe": "probe",
  "output size": "probe",
  "critical-point search": "search",
  "gradients": "gradients",
  "refine": "refine",
  "second layer": "second_layer",
  "final check": "check",
}


def _victim_kind(kind, npz, url=None):
  if url and not npz and kind is None:
    return "remote"
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
      network.load_any_npz(npz)
    except VictimFileError as e:
      raise flags.ValidationError(f"--victim_npz: {e}") from None
  return True


@flags.multi_flags_validator(["fe_victim", "fe_dataset"], message="bad --fe_dataset")
def _check_dataset(values):
  if values["fe_victim"] == "tabular" and values["fe_dataset"] is None:
    raise flags.ValidationError("--fe_victim=tabular needs --fe_dataset (breast_cancer, wine or iris)")
  if values["fe_dataset"] is not None and values["fe_victim"] != "tabular":
    raise flags.ValidationError(f"--fe_dataset={values['fe_dataset']} is for --fe_victim=tabular")
  return True


@flags.multi_flags_validator(["experiment", "oracle_url", "fe_victim", "victim_npz"])
def _remote_victim(values):
  """Through --oracle_url the victim is the served network: no local one to build (an npz only to evaluate)."""
  kind = _victim_kind(values["fe_victim"], values["victim_npz"], values["oracle_url"])
  if values["experiment"] == "functional_equivalence" and values["oracle_url"] and kind not in ("npz", "remote"):
    raise flags.ValidationError(
      f"--oracle_url attacks the served network: --fe_victim={kind} cannot be used with it "
      f"(give --victim_npz=PATH of the served network to evaluate the result, or nothing)"
    )
  return True


@flags.multi_flags_validator(["fe_box", "fe_radius"], message="bad domain")
def _check_domain(values):
  if values["fe_box"] and values["fe_radius"] is not None:
    raise flags.ValidationError("--fe_box and --fe_radius both give the domain; use one")
  try:
    domains.parse(values["fe_radius"], values["fe_box"], 1.0)
  except ValueError as e:
    raise flags.ValidationError(str(e).replace("the domain's box", "--fe_box")) from None
  return True


@flags.multi_flags_validator(
  ["fe_oracle_output", "fe_outputs", "fe_victim", "victim_npz"], message="bad --fe_oracle_output"
)
def _check_outputs(values):
  kind = _victim_kind(values["fe_victim"], values["victim_npz"])
  if values["fe_oracle_output"] == "probabilities" and kind == "random" and values["fe_outputs"] < 2:
    raise flags.ValidationError("--fe_oracle_output=probabilities needs --fe_outputs >= 2")
  return True


@flags.validator("fe_layers", message="--fe_layers takes positive integers, e.g. 10,10")
def _check_layers(values):
  return values is None or (len(values) > 0 and all(v.strip().isdigit() and int(v) > 0 for v in values))


def _hidden_layers():
  return [int(v) for v in FLAGS.fe_layers] if FLAGS.fe_layers else None


def stream_seeds(seed: int) -> dict:
  """Independent seeds of the victim (--seed itself, so victims do not change), the attack and the evaluation
  (numpy SeedSequence([seed, stream]) unless given by --fe_attack_seed / --fe_eval_seed)."""
  derived = [int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]) for stream in (1, 2)]
  return dict(
    victim_seed=seed,
    attack_seed=derived[0] if FLAGS.fe_attack_seed is None else FLAGS.fe_attack_seed,
    eval_seed=derived[1] if FLAGS.fe_eval_seed is None else FLAGS.fe_eval_seed,
  )


def build_victim(seed: int):
  """The victim chosen by the flags, and a test set (x, y) for a trained victim (else None); (None, None) for a
  pure black-box attack."""
  kind = _victim_kind(FLAGS.fe_victim, FLAGS.victim_npz, FLAGS.oracle_url)
  if kind == "remote":
    return None, None
  layers = _hidden_layers()
  if kind == "npz":
    return network.load_any_npz(FLAGS.victim_npz), None
  if kind == "random":
    if layers:
      return network.random_net(seed, [FLAGS.fe_input_dim, *layers, FLAGS.fe_outputs]), None
    return victims.random_net(seed, FLAGS.fe_input_dim, FLAGS.fe_hidden, FLAGS.fe_outputs), None
  if kind == "tabular":
    steps = FLAGS.fe_train_steps or 500
    net, tab = network.tabular_net(
      FLAGS.fe_dataset, seed, layers or [FLAGS.fe_hidden], steps=steps, scaling=FLAGS.fe_tabular_scaling
    )
    return net, (tab.x_test, tab.y_test)
  steps = FLAGS.fe_train_steps or 300
  if layers:
    net, data = network.digits_net(seed, layers, steps=steps)
  else:
    net, data = victims.digits_net(seed, FLAGS.fe_hidden, steps)
  return net, (data[2], data[3])


@experiments.register("functional_equivalence")
def run(workdir: pathlib.Path) -> list[dict]:
  """Builds (or, remote, finds) the victim, extracts it through an Oracle, writes recovered.npz, units.json (and
  victim.npz when known), returns one row."""
  import jax

  with jax.enable_x64(True):  # scoped: other experiments in this process keep their precision
    return _run(pathlib.Path(workdir))


def _remote_input_dim(oracle) -> int:
  """d of a served network: its flat float64 input shape (checked against --fe_input_dim when that is given)."""
  shape, dtype = tuple(oracle.input_shape), oracle.info.get("input_dtype", "float64")
  if dtype != "float64" or len(shape) != 1:
    raise common.ConfigError(
      f"--oracle_url={FLAGS.oracle_url} takes inputs {shape} of {dtype}; functionally-"
      f"equivalent extraction needs flat float64 inputs (serve the network with "
      f"python -m launch.serve --victim_npz=PATH)"
    )
  if FLAGS["fe_input_dim"].present and FLAGS.fe_input_dim != shape[0]:
    raise common.ConfigError(
      f"--fe_input_dim={FLAGS.fe_input_dim} but --oracle_url={FLAGS.oracle_url} takes inputs of dimension {shape[0]}"
    )
  return int(shape[0])


def _oracle(net):
  """The oracle of the attack and d: local over `net`, or the service of --oracle_url."""
  if FLAGS.oracle_url:
    oracle = oracle_flags.make_oracle(None, FLAGS.fe_oracle_output, record_inputs=False)
    d = _remote_input_dim(oracle)
    if net is not None and _input_dim(net) != d:
      raise common.ConfigError(f"--victim_npz has d={_input_dim(net)} but --oracle_url takes d={d}")
    return oracle, d
  dtype = np.float64 if FLAGS.fe_oracle_precision == "float64" else np.float32
  if isinstance(net, network.DeepNet):
    return oracle_flags.make_oracle(
      network.backend(net, dtype), FLAGS.fe_oracle_output, record_inputs=False
    ), _input_dim(net)
  mesh = parallel.data_mesh(FLAGS.num_devices) if dtype == np.float64 else None
  backend = victims.sharded_backend(net, mesh) if mesh is not None else victims.backend(net, dtype)
  return oracle_flags.make_oracle(backend, FLAGS.fe_oracle_output, record_inputs=False), net.shape[0]


def _input_dim(net) -> int:
  return network.as_deep(net).sizes[0]


def _domain_text(dom) -> str:
  info = dom.describe()
  return f"ball R={info['radius']:g}" if info["kind"] == "ball" else f"box [{info['low']:g}, {info['high']:g}]"


def _attack_row(result, d: int, seeds: dict) -> dict:
  """What needs no ground truth: queries (total, per stage), units, final check, domain, seconds, seeds."""
  stats, units = result.stats, result.units
  by_stage: dict[str, int] = {}
  for stage, n in result.queries_by_stage.items():
    key = "queries_" + STAGES.get(stage, stage.replace(" ", "_"))
    by_stage[key] = by_stage.get(key, 0) + n
  k = result.net.w1.shape[1]
  row_errors = [e for e, kind in zip(units["row_error"], units["kind"]) if kind != "linear"]
  return dict(
    oracle_output=FLAGS.fe_oracle_output,
    domain=_domain_text(result.domain),
    recovered_shape=f"{d}-{result.hidden_units_found}-{k}",
    queries=result.queries,
    queries_log2=round(math.log2(max(result.queries, 1)), 2),
    **by_stage,
    hidden_units_found=result.hidden_units_found,
    linear_units=stats["linear_units"],
    paired_units=stats["paired_units"],
    layer2_model=stats["layer2_model"],
    negligible_units=int(sum(units["negligible"])) + units["negligible_lost_kinks"],
    negligible_bound=max(
      [e for e, n in zip(units["effect"], units["negligible"]) if n] + [units["negligible_lost_bound"]]
    ),
    precision_floor=units["precision_floor"],
    kinks_without_jump=len(stats["lost_kink_bounds"]),
    max_unit_row_error=max(row_errors, default=0.0),
    check_error=stats["check_error"],
    check_max_abs_error=stats["check_max_abs_error"],
    check_points=stats["check_points"],
    search_radius=stats["search_radius"],
    seconds=round(result.seconds, 2),
    rounds=result.rounds,
    **seeds,
  )


def _evaluation_row(net, result, dom, test, eval_seed: int) -> dict:
  """The comparison with the true weights: aligned errors per array, agreement on N(0, scale^2 I) and over the
  domain, and the worst-case certificate."""
  diff = FLAGS.fe_oracle_output == "probabilities"
  d, h, k = net.shape
  weights = align.weight_error(net, result.net, differences=diff, domain=dom)
  seeds = np.random.SeedSequence(eval_seed).generate_state(3)
  rand = align.random_agreement(net, result.net, FLAGS.fe_eval_inputs, FLAGS.fe_scale, int(seeds[0]), diff)
  over = align.domain_agreement(net, result.net, dom, FLAGS.fe_domain_eval_inputs, int(seeds[1]), diff)
  cert = certify.certify(net, result.net, dom, diff)
  found = certify.search_max(net, result.net, dom, int(seeds[2]), differences=diff)
  row = dict(
    shape=f"{d}-{h}-{k}",
    inert_true_units=weights["inert_true_units"],
    merged_true_units=weights["merged_true_units"],
    max_weight_error=weights["max_weight_error"],
    weight_error_bits=round(weights["weight_error_bits"], 1),
    **{f"max_error_{a}": weights[f"max_error_{a}"] for a in ("w0", "b0", "w1", "b1")},
    **_agreement_fields(rand, over),
    certified_max_logit_diff=cert["bound"],
    found_max_logit_diff=found["found"],
    certificate_unmatched_groups=cert["unmatched_groups"],
  )
  if test is not None:
    row.update(_test_fields(net, result.net, test, diff, victims.logits))
  return row


def _deep_attack_row(result, d: int, seeds: dict) -> dict:
  """What needs no ground truth, for the deep attack: queries (total, per stage), widths found, how each layer's
  signs were found, the final check, the domain, seconds, seeds."""
  by_stage: dict = {}
  for stage, n in result.queries_by_stage.items():
    key = "queries_" + STAGES.get(stage, stage.replace(" ", "_"))
    by_stage[key] = by_stage.get(key, 0) + n
  stats = result.stats
  return dict(
    oracle_output=FLAGS.fe_oracle_output,
    domain=_domain_text(result.domain),
    recovered_shape=result.net.shape_text,
    hidden_layers_found=result.net.depth,
    widths_found=list(result.net.sizes[1:-1]),
    queries=result.queries,
    queries_log2=round(math.log2(max(result.queries, 1)), 2),
    **by_stage,
    sign_methods=[m if isinstance(m, str) else "+".join(m) for m in result.sign_methods],
    exact_sign_tests=stats["exact_sign_tests"],
    wiggle_sign_tests=stats["wiggle_sign_tests"],
    max_unit_row_error=max(max(t["row_error"]) for t in result.units),
    check_error=stats["check_error"],
    check_max_abs_error=stats["check_max_abs_error"],
    check_points=stats["check_points"],
    repair_rounds=stats["repair_rounds"],
    promoted_units=stats.get("promoted_units", 0),
    units_taken_back=stats.get("units_taken_back", 0),
    settled_on_units=stats.get("settled_on_units", 0),
    unsettled_finished=stats.get("unsettled_finished", 0),
    pending_accepted=stats.get("pending_accepted", 0),
    **{
      k: stats[k]
      for k in ("polish_steps", "polish_error_before", "polish_error_after", "probability_radius")
      if k in stats
    },
    seconds=round(result.seconds, 2),
    **seeds,
  )


def _deep_evaluation_row(net, rec, dom, test, eval_seed: int) -> dict:
  """The comparison of a recovered network of any depth with the true one: aligned weight errors per layer (units
  never active on the evaluation points set aside), agreement on N(0, scale^2 I) and over the domain."""
  diff = FLAGS.fe_oracle_output == "probabilities"
  net = network.as_deep(net)
  rec = network.as_deep(rec)
  seeds = np.random.SeedSequence(eval_seed).generate_state(3)
  rand = align.random_agreement(net, rec, FLAGS.fe_eval_inputs, FLAGS.fe_scale, int(seeds[0]), diff)
  over = align.domain_agreement(net, rec, dom, FLAGS.fe_domain_eval_inputs, int(seeds[1]), diff)
  rng = np.random.default_rng(int(seeds[2]))
  x = np.concatenate(
    [FLAGS.fe_scale * rng.normal(size=(20_000, net.sizes[0])), dom.check_points(rng, net.sizes[0], 20_000)]
  )
  weights = deep_align.weight_error(net, rec, x, differences=diff)
  row = dict(
    shape=net.shape_text,
    inert_true_units=weights.get("inert_true_units"),
    undetermined_weights=weights.get("undetermined_weights"),
    max_weight_error=weights["max_weight_error"],
    weight_error_bits=round(weights["weight_error_bits"], 1),
    layer_weight_errors=weights["errors"],
    **_agreement_fields(rand, over),
  )
  if test is not None:
    row.update(_test_fields(net, rec, test, diff, network.logits))
  return row


def _agreement_fields(rand: dict, over: dict) -> dict:
  """Agreement and logit error of the recovered network on random inputs (`rand`) and over the domain (`over`)."""
  return dict(
    max_logit_error=rand["max_logit_error"],
    agreement=rand["agreement"],
    eval_inputs=rand["count"],
    domain_max_logit_error=over["max_logit_error"],
    domain_agreement=over["agreement"],
    domain_eval_inputs=over["count"],
  )


def _test_fields(net, rec, test: tuple, diff, logits) -> dict:
  """Agreement with the victim and both networks' accuracy on the test split `(inputs, labels)`."""
  t = align.logit_agreement(net, rec, test[0], diff)
  return dict(
    test_max_logit_error=t["max_logit_error"],
    test_agreement=t["agreement"],
    victim_test_accuracy=float(np.mean(logits(net, test[0]).argmax(1) == test[1])),
    extracted_test_accuracy=float(np.mean(logits(rec, test[0]).argmax(1) == test[1])),
  )


def _run(workdir: pathlib.Path) -> list[dict]:
  if "oracle_output" in FLAGS and FLAGS["oracle_output"].present:
    raise common.ConfigError(
      "--oracle_output is the learning experiments' flag; functionally-equivalent extraction asks through "
      "--fe_oracle_output (logits or probabilities)"
    )
  workdir.mkdir(parents=True, exist_ok=True)
  seeds = stream_seeds(FLAGS.seed)
  net, test = build_victim(seeds["victim_seed"])
  if net is not None:
    network.save_npz(workdir / "victim.npz", network.as_deep(net))
    if FLAGS.fe_oracle_output == "probabilities" and network.as_deep(net).sizes[-1] < 2:
      raise common.ConfigError("--fe_oracle_output=probabilities needs a victim with at least 2 outputs")
  oracle, d = _oracle(net)
  dom = domains.parse(FLAGS.fe_radius, FLAGS.fe_box, FLAGS.fe_scale)
  logging.info(
    "functional_equivalence (%s attack): d=%d, domain %s, seeds %s", FLAGS.fe_attack, d, dom.describe(), seeds
  )
  try:
    if FLAGS.fe_attack == "deep":
      cfg = deep_attack.Config(
        scale=FLAGS.fe_scale,
        domain=dom,
        max_queries=FLAGS.fe_max_queries,
        max_seconds=FLAGS.fe_seconds,
        polish_steps=FLAGS.fe_polish_steps,
        follow_wide=FLAGS.fe_follow_wide,
        wide_sign_audit=FLAGS.fe_wide_sign_audit,
        unsettled_take_back=FLAGS.fe_unsettled_take_back,
        strict_blind_tries=FLAGS.fe_strict_blind_tries,
        retest_blind_tries=FLAGS.fe_retest_blind_tries,
      )
      result = deep_attack.extract(oracle, d, cfg, seed=seeds["attack_seed"])
    else:
      cfg = attack.Config(  # type: ignore[assignment]
        scale=FLAGS.fe_scale, domain=dom, max_queries=FLAGS.fe_max_queries, max_seconds=FLAGS.fe_seconds
      )
      result = attack.extract(oracle, d, cfg, seed=seeds["attack_seed"])
  except ExtractionError as e:  # launch.run turns it into a one-line error and exit code 1
    logging.error("functional_equivalence stopped after %d queries: %s: %s", oracle.used, type(e).__name__, e)
    raise
  network.save_npz(workdir / "recovered.npz", network.as_deep(result.net))
  (workdir / "units.json").write_text(json.dumps(result.units, indent=1, default=float))
  kind = _victim_kind(FLAGS.fe_victim, FLAGS.victim_npz, FLAGS.oracle_url)
  if FLAGS.fe_attack == "deep":
    row = dict(method="functional_equivalence", attack="deep", victim=kind, **_deep_attack_row(result, d, seeds))
    if net is not None:
      row.update(_deep_evaluation_row(net, result.net, dom, test, seeds["eval_seed"]))
      if result.domain != dom:  # probabilities: the attack claims less than the flags' domain, evaluated on it all
        row["domain_evaluated"] = _domain_text(dom)
    logging.info("functional_equivalence: %s", row)
    return [row]
  row = dict(method="functional_equivalence", victim=kind, **_attack_row(result, d, seeds))
  if row["search_radius"] < dom.circumradius(d):
    logging.warning(
      "the search lines cross hyperplanes reliably only up to %.3g from the domain's center (the "
      "probabilities underflow further out), less than the domain's %.3g: units whose hyperplanes "
      "lie further out may be missed",
      row["search_radius"],
      dom.circumradius(d),
    )
  if net is not None and not isinstance(net, network.DeepNet):
    row.update(_evaluation_row(net, result, dom, test, seeds["eval_seed"]))
  elif net is not None:
    row.update(_deep_evaluation_row(net, result.net, dom, test, seeds["eval_seed"]))
  logging.info("functional_equivalence: %s", row)
  return [row]
