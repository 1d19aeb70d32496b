"""The `direct_recovery` experiment: the direct-recovery attacks of the paper's Table 1 on simple victims.

  python -m launch.run --experiment=direct_recovery --attack=lowd_meek|equation_solving|path_finding|
      gradient_recovery|active_linear --victim=PATH|DATASET:MODEL --box=LOW,HIGH --workdir=DIR [--queries=N]

--victim is the user's own fitted scikit-learn model as a .joblib file (trusted input: joblib unpickles code),
a two-layer ReLU network as an .npz file (w0, b0, w1, b1), or a victim trained here on a scikit-learn dataset
scaled to [0, 1] (`extraction/tabular.py`): DATASET in breast_cancer, wine, iris, digits, diabetes and MODEL in
logistic_regression, linear_svc, tree (regression tree on diabetes), two_layer. The attacker knows the box
(--box, the same interval for every feature) and the API (output mode, how a tree answers missing features), never
the victim; the victim, the attack and the evaluation draw from independent random streams of --seed. --queries, if
given, is a hard budget (one number): the query that would pass it is refused and the run ends in one line.
Writes <workdir>/victim.{joblib,npz} (built victims), recovered.{joblib,npz} and one result row: attack, queries,
agreement on --eval_inputs random points of the box and on the victim's test data (built victims, or
--victim_data=NPZ with an array `x`), and the attack's own errors.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import flags, logging

from extraction import sklearn_victims, tabular
from extraction.oracle import BudgetExceeded, Oracle
from extraction.two_layer import TwoLayerBackend
from functional_equivalence import align
from functional_equivalence import victims as net_victims
from functional_equivalence.errors import VictimFileError
from functional_equivalence.simple_models import (
  active_linear,
  equation_solving,
  evaluate,
  lowd_meek,
  milli,
  path_finding,
  tree_build,
)
from functional_equivalence.simple_models.common import Box
from launch import common, experiments, learning, oracle_flags  # noqa: F401  (define --queries, --oracle_url, validated here too)

# What each attack asks the API for, and which victims it can handle (checked before any query).
OUTPUTS = {
  "lowd_meek": ("labels",),
  "equation_solving": ("probabilities", "labels"),
  "path_finding": ("leaf",),
  "gradient_recovery": ("gradients",),
  "active_linear": ("labels",),
}
HANDLES = {
  "lowd_meek": "a binary linear classifier (LogisticRegression or LinearSVC with 2 classes)",
  "active_linear": "a binary linear classifier (LogisticRegression or LinearSVC with 2 classes)",
  "equation_solving": "a LogisticRegression or a two-layer network (probabilities), or a linear "
  "classifier (labels, by retraining)",
  "path_finding": "a DecisionTreeClassifier or DecisionTreeRegressor",
  "gradient_recovery": "a two-layer ReLU network (.npz or DATASET:two_layer)",
}
MODELS = tabular.SKLEARN_MODELS + ("two_layer",)
EXACT_ANSWERS = ("equation_solving", "path_finding", "gradient_recovery")  # recover the answers, not only labels

flags.DEFINE_enum("attack", None, list(OUTPUTS), "direct_recovery: which attack of Table 1.")
flags.DEFINE_string(
  "victim",
  None,
  "direct_recovery: PATH.joblib (scikit-learn, trusted), PATH.npz (two-layer "
  f"net) or DATASET:MODEL with DATASET in {', '.join(tabular.DATASETS)} and MODEL in "
  f"{', '.join(MODELS)}.",
)
flags.DEFINE_list("box", ["0", "1"], "direct_recovery: LOW,HIGH, the attacker's input domain [LOW, HIGH]^d.")
flags.DEFINE_integer("eval_inputs", 100_000, "direct_recovery: random box points for the agreement.", lower_bound=1)
flags.DEFINE_string(
  "victim_data",
  None,
  "direct_recovery: npz with array x (N, d) of the victim's data, for the "
  "agreement on data (evaluation only; built victims use their test split).",
)
flags.DEFINE_enum(
  "direct_output",
  None,
  ["probabilities", "labels"],
  "direct_recovery: equation_solving from probabilities (default) or labels (retraining).",
)
flags.DEFINE_float(
  "direct_epsilon",
  None,
  "direct_recovery: precision of line searches and bisections, in box "
  "widths (default: each attack's own: 1e-9 Lowd-Meek and path finding, 1e-10 gradients, "
  "1e-6 active learning).",
  lower_bound=0.0,
)
flags.DEFINE_enum(
  "path_strategy",
  "top_down",
  list(path_finding.STRATEGIES),
  "direct_recovery: path finding with incomplete queries from the root (top_down), Algorithm 1 "
  "with incomplete queries (incomplete) or with complete queries only (exhaustive).",
)
flags.DEFINE_bool(
  "path_reuse_thresholds",
  True,
  "direct_recovery: path finding tries the boundaries it already "
  "found on a feature before bisecting (False: Tramer et al.'s plain line searches).",
)
flags.DEFINE_enum(
  "tree_missing",
  "stop",
  list(sklearn_victims.MISSING),
  "direct_recovery: how the tree API answers an input with NaN features: stop at the node that "
  "tests it (BigML) or follow the majority branch.",
)
flags.DEFINE_integer(
  "mlp_hidden",
  None,
  "direct_recovery: hidden units of the two-layer network that "
  "equation_solving fits (Tramer et al. assume the architecture is known).",
  lower_bound=1,
)
flags.DEFINE_integer("victim_tree_depth", 6, "direct_recovery: max_depth of a built tree victim.", lower_bound=1)
flags.DEFINE_integer("victim_hidden", 32, "direct_recovery: hidden units of a built two-layer victim.", lower_bound=1)
flags.DEFINE_integer("victim_net_steps", 300, "direct_recovery: Adam steps of a built two-layer victim.", lower_bound=1)

FLAGS = flags.FLAGS
_ON = "direct_recovery"


def parse_victim(spec: str):
  """('file', path) or ('built', dataset, model); ValueError (one line) for anything else."""
  if spec.endswith((".joblib", ".npz")):
    return ("file", spec)
  parts = spec.split(":")
  if len(parts) != 2 or parts[0] not in tabular.DATASETS or parts[1] not in MODELS:
    raise ValueError(
      f"--victim={spec!r}: give PATH.joblib, PATH.npz or DATASET:MODEL with DATASET in "
      f"{', '.join(tabular.DATASETS)} and MODEL in {', '.join(MODELS)}"
    )
  if tabular.DATASETS[parts[0]] == "regression" and parts[1] != "tree":
    raise ValueError(f"--victim={spec!r}: {parts[0]} is a regression dataset; only 'tree' fits it")
  return ("built", parts[0], parts[1])


def _box(values) -> tuple[float, float]:
  if len(values) != 2:
    raise ValueError(f"--box needs LOW,HIGH, got {','.join(values)}")
  try:
    low, high = float(values[0]), float(values[1])
  except ValueError:
    raise ValueError(f"--box needs two numbers LOW,HIGH, got {','.join(values)}") from None
  if not (np.isfinite(low) and np.isfinite(high) and low < high):
    raise ValueError(f"--box needs finite LOW < HIGH, got {low}, {high}")
  return low, high


@flags.multi_flags_validator(
  ["experiment", "attack", "victim", "box", "queries", "direct_output", "oracle_url", "victim_data"],
  message="bad direct_recovery flags",
)
def _check(values):
  if values["experiment"] != _ON:
    return True
  try:
    if values["attack"] is None:
      raise ValueError(f"--experiment={_ON} needs --attack, one of {', '.join(OUTPUTS)}")
    if values["victim"] is None:
      raise ValueError(f"--experiment={_ON} needs --victim=PATH.joblib|PATH.npz|DATASET:MODEL")
    kind = parse_victim(values["victim"])
    if kind[0] == "file":
      load_file(kind[1])
    _box(values["box"])
    given = not FLAGS["queries"].using_default_value or values["queries"] != FLAGS["queries"].default
    if given and len(values["queries"]) != 1:
      raise ValueError(f"--queries is one hard budget for {_ON}, got {','.join(values['queries'])}")
    out = values["direct_output"]
    if out is not None and out not in OUTPUTS[values["attack"]]:
      raise ValueError(f"--direct_output={out}: {values['attack']} asks the API for {OUTPUTS[values['attack']][0]}")
    if values["oracle_url"]:
      raise ValueError(
        f"{_ON} runs against a local victim; --oracle_url is not supported (the prediction service "
        f"serves neither scikit-learn models nor leaf/gradient answers)"
      )
    if values["victim_data"] and not pathlib.Path(values["victim_data"]).is_file():
      raise ValueError(f"--victim_data={values['victim_data']!r} does not exist")
  except (ValueError, VictimFileError) as e:
    raise flags.ValidationError(str(e)) from None
  return True


def load_file(path: str):
  """A victim file: a checked scikit-learn model (.joblib) or a TwoLayerNet (.npz)."""
  if path.endswith(".npz"):
    return net_victims.load_npz(path)
  return sklearn_victims.load_joblib(path)


def victim_kind(model) -> str:
  return "two_layer" if isinstance(model, net_victims.TwoLayerNet) else sklearn_victims.kind(model)


def build_victim(spec: str, seed_seq: list[int], workdir: pathlib.Path):
  """(model, test inputs or None) for --victim; a built victim is written to workdir/victim.{joblib,npz}."""
  parsed = parse_victim(spec)
  if parsed[0] == "file":
    return load_file(parsed[1]), None
  _, dataset, model = parsed
  data = tabular.load(dataset, seed=int(np.random.default_rng(seed_seq).integers(2**31)))
  if model == "two_layer":
    net = net_victims.train_two_layer(
      data.x_train,
      data.y_train,
      FLAGS.victim_hidden,
      seed=seed_seq[0],
      steps=FLAGS.victim_net_steps,
      num_classes=data.num_classes,
    )
    net_victims.save_npz(workdir / "victim.npz", net)
    return net, data.x_test
  est = tabular.train(model, data, seed=seed_seq[0], tree_depth=FLAGS.victim_tree_depth)
  sklearn_victims.save_joblib(workdir / "victim.joblib", est)
  return est, data.x_test


def check_fits(attack: str, model, output: str) -> None:
  """ConfigError (one line) when `attack` cannot handle this victim, before any query."""
  kind, k = victim_kind(model), None
  if kind in ("logistic_regression", "linear_svc"):
    k = sklearn_victims.num_classes(model)
  ok = {
    "lowd_meek": kind in ("logistic_regression", "linear_svc") and k == 2,
    "active_linear": kind in ("logistic_regression", "linear_svc") and k == 2,
    "equation_solving": kind
    in (("logistic_regression", "two_layer") if output == "probabilities" else ("logistic_regression", "linear_svc")),
    "path_finding": kind.startswith("tree"),
    "gradient_recovery": kind == "two_layer",
  }[attack]
  if not ok:
    what = f"{type(model).__name__}" + (f" with {k} classes" if k else "")
    if kind == "linear_svc" and attack == "equation_solving":
      what += " (it has no probabilities: use --direct_output=labels, or lowd_meek)"
    raise common.ConfigError(f"{attack} needs {HANDLES[attack]}; the victim is {what}")
  if attack == "equation_solving" and kind == "two_layer" and FLAGS.mlp_hidden is None:
    raise common.ConfigError(
      "equation_solving on a two-layer network fits a network of known architecture: give --mlp_hidden=H"
    )
  if attack == "path_finding" and FLAGS.path_strategy in path_finding.NEEDS_STOP and FLAGS.tree_missing != "stop":
    raise common.ConfigError(
      f"--path_strategy={FLAGS.path_strategy} needs an API that stops at a node testing a "
      f"missing feature (--tree_missing=stop); use --path_strategy=exhaustive"
    )


def backend_of(model, missing: str = "stop", id_seed: int = 0):
  """The batched backend of a victim or recovered model (two-layer network or scikit-learn estimator)."""
  if isinstance(model, net_victims.TwoLayerNet):
    return TwoLayerBackend(*model)
  return sklearn_victims.backend(model, missing, id_seed)


def budget() -> int | None:
  """--queries as this experiment's hard budget, None when not given."""
  if FLAGS["queries"].using_default_value:
    return None
  if not FLAGS.queries[0].strip().isdigit():
    raise common.ConfigError(
      f"--queries={FLAGS.queries[0]}: direct recovery takes a number of queries, not a share of a pool"
    )
  return int(FLAGS.queries[0])


def run_attack(attack: str, oracle, box: Box, classes: int, rng):
  """(what the attack found, queries, stats). `classes`: the API's number of classes (for the size of the
  two-layer fit, whose architecture Tramer et al.'s attacker knows)."""
  eps, limit = FLAGS.direct_epsilon, budget()
  if attack in ("lowd_meek", "active_linear"):
    mod = lowd_meek if attack == "lowd_meek" else active_linear
    cfg = mod.Config() if eps is None else mod.Config(epsilon=eps)
    r = mod.extract(oracle, box, cfg, rng)
    return (r.w[None], np.array([r.b])), r.queries, r.stats
  if attack == "equation_solving":
    if oracle.output == "labels":
      r = equation_solving.retrain(oracle, box, limit or 50 * (box.dim + 1), rng)
      return (r.coef, r.intercept), r.queries, r.stats
    if FLAGS.mlp_hidden is not None:
      n = limit or equation_solving.mlp_unknowns(box.dim, FLAGS.mlp_hidden, classes)
      net, queries, stats = equation_solving.fit_two_layer(oracle, box, FLAGS.mlp_hidden, n, rng)
      return net, queries, stats
    r = equation_solving.solve_logistic(oracle, box, rng)
    return (r.coef, r.intercept), r.queries, r.stats
  if attack == "path_finding":
    cfg = path_finding.Config(
      strategy=FLAGS.path_strategy,
      reuse_thresholds=FLAGS.path_reuse_thresholds,
      **({} if eps is None else dict(epsilon=eps)),
    )
    r = path_finding.extract(oracle, box, cfg, rng)
    return r, r.queries, r.stats
  cfg = milli.Config() if eps is None else milli.Config(epsilon=eps)
  r = milli.extract(oracle, box, cfg, rng)
  return r.net, r.queries, r.stats


def recovered_model(victim, found, d: int):
  """The recovered model as an object of the victim's kind (scikit-learn estimator or TwoLayerNet)."""
  if isinstance(found, net_victims.TwoLayerNet):
    return found
  if isinstance(found, path_finding.Result):
    return tree_build.to_sklearn(found.tree, d, sklearn_victims.kind(victim) == "tree_regressor")
  coef, intercept = found
  est = type(victim)()
  est.coef_, est.intercept_ = np.atleast_2d(coef), np.asarray(intercept, np.float64).reshape(-1)
  est.classes_, est.n_features_in_ = np.arange(2 if len(est.coef_) == 1 else len(est.coef_)), d
  return est


def attack_errors(attack: str, victim, found, rec_model, box: Box) -> dict:
  if attack == "path_finding":
    splits, leaves = evaluate.reachable_splits(victim.tree_, box.low, box.high)
    return dict(
      leaves_found=int(len(found.ids)),
      true_leaves=int(leaves),
      max_threshold_error=evaluate.threshold_error(splits, found.lo, found.hi),
    )
  if isinstance(victim, net_victims.TwoLayerNet):
    if attack == "equation_solving":
      return dict(max_weight_error=align.weight_error(victim, rec_model, differences=True)["max_weight_error"])
    w = align.weight_error(victim, rec_model)
    return dict(
      max_weight_error=w["max_weight_error"],
      weight_error_bits=round(w["weight_error_bits"], 1),
      matched_units=w["matched_units"],
      true_units=w["true_units"],
    )
  scaled = attack != "equation_solving" or FLAGS.direct_output == "labels"
  return dict(
    max_rel_weight_error=evaluate.linear_error(
      victim.coef_, victim.intercept_, rec_model.coef_, rec_model.intercept_, scaled
    ),
    error_after_scaling=scaled,
  )


def agreement_on(victim, rec_model, x, regression: bool, chunk: int = 16384) -> tuple[float, float]:
  """(agreement, max |answer difference|) of the two models' backends on x."""
  vb, rb = backend_of(victim), backend_of(rec_model)
  same, worst = 0.0, 0.0
  for i in range(0, len(x), chunk):
    a, b = vb(x[i : i + chunk]), rb(x[i : i + chunk])
    same += evaluate.agreement(a, b, regression) * len(a)
    finite = np.isfinite(a) & np.isfinite(b)
    worst = max(worst, float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)))  # log-probs may be -inf
  return same / len(x), worst


@experiments.register(_ON)
def run(workdir: pathlib.Path) -> list[dict]:
  import jax

  with jax.enable_x64(True):  # two-layer victims train and are fitted in float64
    return _run(pathlib.Path(workdir))


def _run(workdir: pathlib.Path) -> list[dict]:
  workdir.mkdir(parents=True, exist_ok=True)
  attack = FLAGS.attack
  seed = FLAGS.seed
  victim, data = build_victim(FLAGS.victim, [seed, 1], workdir)
  output = FLAGS.direct_output or OUTPUTS[attack][0]
  check_fits(attack, victim, output)
  d = victim.shape[0] if isinstance(victim, net_victims.TwoLayerNet) else sklearn_victims.num_features(victim)
  if FLAGS.victim_data:
    with np.load(FLAGS.victim_data) as f:
      data = np.asarray(f["x"], np.float64).reshape(len(f["x"]), -1)
  box = Box(*_box(FLAGS.box), d)
  id_seed = int(np.random.default_rng([seed, 4]).integers(2**31))
  oracle = Oracle(backend_of(victim, FLAGS.tree_missing, id_seed), output=output, budget=budget(), record_inputs=False)
  classes = victim.shape[2] if isinstance(victim, net_victims.TwoLayerNet) else sklearn_victims.num_classes(victim)
  logging.info(
    "%s on %s (%s, d=%d) through a %s oracle, budget %s",
    attack,
    FLAGS.victim,
    victim_kind(victim),
    d,
    output,
    budget() or "none",
  )
  start = time.monotonic()
  try:
    found, queries, stats = run_attack(attack, oracle, box, classes, np.random.default_rng([seed, 2]))
  except BudgetExceeded as e:
    logging.error("%s stopped by the budget after %d queries: %s", attack, oracle.used, e)
    raise
  seconds = time.monotonic() - start
  rec = recovered_model(victim, found, d)
  path = (
    net_victims.save_npz(workdir / "recovered.npz", rec)
    if isinstance(rec, net_victims.TwoLayerNet)
    else sklearn_victims.save_joblib(workdir / "recovered.joblib", rec)
  )
  regression = victim_kind(victim) == "tree_regressor"
  x_eval = box.sample(np.random.default_rng([seed, 3]), FLAGS.eval_inputs)
  agree, worst = agreement_on(victim, rec, x_eval, regression)
  row = dict(
    method=attack,
    attack=attack,
    victim=FLAGS.victim,
    victim_kind=victim_kind(victim),
    d=d,
    oracle_output=output,
    queries=int(queries),
    oracle_used=int(oracle.used),
    agreement=agree,
    eval_inputs=FLAGS.eval_inputs,
  )
  if attack in EXACT_ANSWERS and not (attack == "equation_solving" and (output == "labels" or FLAGS.mlp_hidden)):
    row["max_answer_error"] = worst  # |logit| (LR, nets) or |leaf value| differences on the box points
  if attack == "path_finding":
    row["strategy"] = FLAGS.path_strategy
  if data is not None:
    row["data_agreement"], _ = agreement_on(victim, rec, data, regression)
    row["data_inputs"] = int(len(data))
  row.update(attack_errors(attack, victim, found, rec, box))
  row.update(
    seconds=round(seconds, 3),
    recovered=path.name,
    **{f"stat_{k}": v for k, v in stats.items() if isinstance(v, (int, float, str))},
  )
  logging.info("direct_recovery: %s", row)
  return [row]
