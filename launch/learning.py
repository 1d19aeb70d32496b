"""Learning-based extraction (`--experiment=extraction`) under the fair protocol.

Train or restore the victim (its own seed and random stream); split the training inputs into the attacker's pool
and a validation split that the attacker never touches; for every oracle output, query budget and repetition
(`--seeds`), query the oracle on a seeded choice of pool inputs; then for every method train one student per
(budget, repetition), all of them stacked in one vmapped run, each from its own student seed. Students are
evaluated every `--eval_every` steps; a student's figure is the median of its last `--median_of` evaluations, and
a row reports the mean and standard deviation over repetitions. Students are checkpointed under
<workdir>/students/ and resume; `split.npz` and each group's `tasks.npz` record which inputs were queried.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import shutil
import time
from typing import Any

import numpy as np
from absl import flags, logging

from extraction import augment, datasets, evaluation, models, parallel, students, transfer
from extraction import conv as conv_lib
from extraction import oracle as oracle_lib
from extraction import rounds as rounds_lib
from extraction import victim as victim_lib
from extraction.predict import predict_logits
from extraction.strategies import Asked, Student
from launch import common, experiments, oracle_flags, strategy_flags
from launch.methods import METHODS, make_step_factory

# Data.
flags.DEFINE_string("dataset", "digits", f"One of {', '.join(datasets.DATASETS)}.")
flags.DEFINE_string("data_dir", None, "Directory with <dataset>/{train,test}.npz; without it, tfds is used.")
flags.DEFINE_string("tfds_data_dir", None, "tfds data_dir (default ~/tensorflow_datasets).")
# Victim.
flags.DEFINE_string("victim_model", "small_cnn", f"Victim architecture: {', '.join(models.MODELS)}.")
flags.DEFINE_integer("victim_steps", 2000, "Victim training steps.")
flags.DEFINE_integer("victim_batch_size", 128, "Victim batch size.")
flags.DEFINE_float("victim_lr", 0.002, "Victim peak learning rate (Adam, cosine schedule).")
flags.DEFINE_enum(
  "victim_conv",
  "xla",
  list(conv_lib.CONVS),
  "How the victim's convolutions are computed (part of its recipe: another choice rounds differently); see --conv.",
)
# Seeds and protocol.
flags.DEFINE_integer("victim_seed", None, "Seed of the victim's initialisation and data order (default --seed).")
flags.DEFINE_integer(
  "student_seed",
  None,
  "Seed of the first student's initialisation, data order and "
  "augmentation (default --seed); repetition r uses student_seed + r.",
)
flags.DEFINE_integer(
  "query_seed",
  None,
  "Seed of the first repetition's choice of queried inputs (default --seed); repetition r uses query_seed + r.",
)
flags.DEFINE_integer(
  "seeds",
  1,
  "Repetitions: students trained against the one victim, each with its own "
  "student and query seed; rows report mean and std over them.",
)
flags.DEFINE_integer(
  "val_size",
  None,
  "Training inputs held out of the attacker's pool as a validation split "
  "for tuning (never queried, never unlabeled); default 10% of the training split.",
)
flags.DEFINE_integer("eval_every", None, "Evaluate students every this many steps (default student_steps // 20).")
flags.DEFINE_integer("median_of", 3, "A student's figure is the median of its last this many evaluations.")
# Attack.
flags.DEFINE_list(
  "queries",
  ["250", "1000", "4000"],
  "Query budgets, one extraction per budget: a number of "
  "inputs, or a share of the attacker's pool ('10%', '100%': the pool fractions of the paper's Table 2).",
)
flags.DEFINE_list("oracle_output", ["probabilities"], f"Oracle outputs: {', '.join(oracle_lib.OUTPUT_MODES)}.")
flags.DEFINE_integer("top_k", None, "k for --oracle_output=top_k.")
flags.DEFINE_list("method", ["fs"], f"Extraction methods: {', '.join(METHODS)}.")
flags.DEFINE_list(
  "targets",
  ["oracle"],
  "What the labeled inputs of the students are trained on: 'oracle' (the "
  "oracle's answers, once per --oracle_output) and/or 'ground_truth' (the pool's own labels of the "
  "same inputs as --strategy=random: no oracle, 0 queries; the 'ImageNet' column of the paper's Table 2).",
)
flags.DEFINE_float(
  "rotation_weight", 0.0, "Weight of the S4L rotation loss (all four rotations of each unlabeled input); 0: off."
)
flags.DEFINE_bool("rotate_labeled", False, "The rotation loss also sees the labeled batch.")
# Student.
flags.DEFINE_string("student_model", "small_cnn", "Student architecture.")
flags.DEFINE_integer("student_steps", 1000, "Student training steps (same for every method).")
flags.DEFINE_integer("batch_size", 64, "Labeled batch size of the student.")
flags.DEFINE_integer(
  "unlabeled_batch_size",
  None,
  "Unlabeled batch size (MixMatch: per augmentation, default 64; FixMatch: default mu * batch_size).",
)
flags.DEFINE_float(
  "lr", None, "Student learning rate (default: the method's: Adam 0.002 FS/MixMatch, SGD 0.03 FixMatch)."
)
flags.DEFINE_float(
  "weight_decay", None, "Weight decay on kernels (default: the method's: 0.02 decoupled for Adam, 5e-4 L2 for SGD)."
)
flags.DEFINE_string("optimizer", None, "adam or sgd (default: the method's).")
flags.DEFINE_string("lr_schedule", None, "constant, cosine or fixmatch_cosine (default: the method's).")
flags.DEFINE_float("ema", 0.999, "EMA decay of the student weights (evaluated model).")
flags.DEFINE_integer(
  "augment_shift",
  None,
  "Students' random shift, in pixels each way (reflect padding; 0: none; default: the dataset's, digits 1, 32x32 "
  "images 4). The victim keeps its own.",
)
flags.DEFINE_boolean(
  "augment_flip",
  None,
  "Students' random horizontal flips (default: the dataset's: CIFAR-10 only; the victim keeps its own).",
)
flags.DEFINE_enum(
  "conv",
  "xla",
  list(conv_lib.CONVS),
  "How the students' convolutions are computed (extraction/conv.py): xla (XLA's convolution), matmul (shifted "
  "slices and one matrix product) or matmul_grad (XLA's forward, the matrix products' gradient: on CPU the faster "
  "training step for 32x32 images; keep xla on GPU/TPU and for 8x8 digits).",
)
flags.DEFINE_integer("steps_per_call", 1, "Training steps per jitted call (lax.scan); >1 helps small models.")
# MixMatch (reference defaults) and FixMatch (paper defaults).
flags.DEFINE_float("lambda_u", None, "Unlabeled loss weight (default: the method's, MixMatch 75, FixMatch 1).")
flags.DEFINE_integer(
  "rampup_steps", None, "Steps of MixMatch's linear lambda_u ramp-up (default: student_steps, the whole run)."
)
flags.DEFINE_float("temperature", 0.5, "MixMatch sharpening temperature.")
flags.DEFINE_float("alpha", 0.75, "MixMatch MixUp Beta(alpha, alpha).")
flags.DEFINE_integer("mixmatch_k", 2, "MixMatch augmentations per unlabeled input.")
flags.DEFINE_float("threshold", 0.95, "FixMatch confidence threshold of the pseudo-labels.")
flags.DEFINE_integer("mu", 7, "FixMatch unlabeled batch size as a multiple of the labeled batch size.")
flags.DEFINE_integer("randaugment_ops", 2, "FixMatch RandAugment operations per strongly augmented input.")
# Evaluation.
flags.DEFINE_integer("noise_samples", 2000, "Uniform-noise images for off-distribution agreement.")
flags.DEFINE_list(
  "gauss_sigmas",
  ["8", "24", "64"],
  "Gaussian noise (pixel levels of 255) added to test images for agreement under noise.",
)
flags.DEFINE_integer("gauss_samples", None, "Test images used under Gaussian noise (default all).")
flags.DEFINE_integer(
  "eval_top_k", 5, "k of the top-k accuracy and fidelity reported beside top-1 (when there are more than k classes)."
)

FLAGS = flags.FLAGS


def _check(cond: bool, message: str) -> bool:
  if not cond:
    raise flags.ValidationError(message)
  return True


def _positive_list(name):
  flags.register_validator(
    name,
    lambda v: _check(
      bool(v) and all(q.strip().replace(".", "", 1).isdigit() and float(q) > 0 for q in v),
      f"--{name} must be positive numbers, got {','.join(v)}",
    ),
  )


flags.register_validator(
  "dataset",
  lambda v: _check(v in datasets.DATASETS, f"unknown --dataset={v!r}; choose one of {', '.join(datasets.DATASETS)}"),
)
for _name in ("victim_model", "student_model"):
  flags.register_validator(
    _name,
    lambda v, n=_name: _check(v in models.MODELS, f"unknown --{n}={v!r}; choose one of {', '.join(models.MODELS)}"),
  )
flags.register_validator(
  "oracle_output",
  lambda v: _check(
    v and all(o in oracle_lib.OUTPUT_MODES for o in v),
    f"unknown --oracle_output={','.join(v)}; choose from {', '.join(oracle_lib.OUTPUT_MODES)}",
  ),
)
flags.register_validator(
  "augment_shift", lambda v: _check(v is None or v >= 0, f"--augment_shift must be >= 0 pixels, got {v}")
)
flags.register_validator(
  "method",
  lambda v: _check(
    v and all(m in METHODS for m in v), f"unknown --method={','.join(v)}; choose from {', '.join(METHODS)}"
  ),
)
TARGETS = ("oracle", "ground_truth")
flags.register_validator(
  "targets",
  lambda v: _check(
    bool(v) and len(set(v)) == len(v) and all(t in TARGETS for t in v),
    f"unknown --targets={','.join(v)}; choose from {', '.join(TARGETS)}",
  ),
)


def _budget_ok(q: str) -> bool:
  q = q.strip()
  if q.endswith("%"):
    return q[:-1].replace(".", "", 1).isdigit() and 0 < float(q[:-1]) <= 100
  return q.isdigit() and int(q) > 0


def budgets_of(queries: list, pool_size: int) -> list[int]:
  """The sorted distinct budgets of --queries for a pool of `pool_size` inputs: 'n' is n inputs, 'p%' is p% of
  the pool rounded to the nearest input (at least one)."""
  size = lambda q: max(1, round(float(q[:-1]) / 100 * pool_size)) if q.endswith("%") else int(q)
  return sorted({size(q.strip()) for q in queries})


flags.register_validator(
  "queries",
  lambda v: _check(
    bool(v) and all(_budget_ok(q) for q in v),
    f"--queries must be positive integers or percentages of the pool in (0%, 100%], got {','.join(v)}",
  ),
)
_positive_list("gauss_sigmas")
for _name in (
  "victim_steps",
  "student_steps",
  "victim_batch_size",
  "batch_size",
  "unlabeled_batch_size",
  "mixmatch_k",
  "seeds",
  "median_of",
  "mu",
  "steps_per_call",
  "eval_every",
  "gauss_samples",
  "eval_top_k",
):
  flags.register_validator(_name, lambda v, n=_name: _check(v is None or v > 0, f"--{n} must be > 0, got {v}"))
for _name in ("rotation_weight", "noise_samples", "val_size", "randaugment_ops", "lambda_u", "rampup_steps"):
  flags.register_validator(_name, lambda v, n=_name: _check(v is None or v >= 0, f"--{n} must be >= 0, got {v}"))
flags.register_validator("threshold", lambda v: _check(0 <= v <= 1, f"--threshold must be in [0, 1], got {v}"))
flags.register_validator(
  "optimizer", lambda v: _check(v in (None, "adam", "sgd"), f"unknown --optimizer={v!r}; choose adam or sgd")
)
flags.register_validator(
  "lr_schedule",
  lambda v: _check(
    v in (None, "constant", "cosine", "fixmatch_cosine"),
    f"unknown --lr_schedule={v!r}; choose constant, cosine or fixmatch_cosine",
  ),
)


@flags.multi_flags_validator(["oracle_output", "top_k", "dataset"])
def _top_k_fits(values):
  if "top_k" in (values["oracle_output"] or []):
    try:
      oracle_lib.validate_output_mode("top_k", values["top_k"], datasets.NUM_CLASSES.get(values["dataset"]))
    except ValueError as e:
      raise flags.ValidationError(f"--top_k: {e}") from e
  return True


@flags.multi_flags_validator(["oracle_url", "oracle_output"])
def _one_output_per_key(values):
  if values["oracle_url"] and len(values["oracle_output"] or []) != 1:
    raise flags.ValidationError("--oracle_url: one key serves one output mode; give exactly one --oracle_output")
  return True


def _seed(name: str) -> int:
  value = getattr(FLAGS, name)
  return FLAGS.seed if value is None else value


def method_settings(method: str) -> tuple[students.StudentConfig, dict]:
  """The students' shared config and the step's parameters for `method`: flags where set, else its defaults."""
  spec = METHODS[method]
  pick = lambda flag, default: default if flag is None else flag
  if spec.needs_unlabeled and method == "fixmatch":
    unlabeled = pick(FLAGS.unlabeled_batch_size, FLAGS.mu * FLAGS.batch_size)
  else:
    unlabeled = pick(FLAGS.unlabeled_batch_size, 64)
  cfg = students.StudentConfig(
    model=FLAGS.student_model,
    steps=FLAGS.student_steps,
    batch_size=FLAGS.batch_size,
    unlabeled_batch_size=unlabeled,
    lr=pick(FLAGS.lr, spec.lr),
    weight_decay=pick(FLAGS.weight_decay, spec.weight_decay),
    ema=FLAGS.ema,
    optimizer=pick(FLAGS.optimizer, spec.optimizer),
    schedule=pick(FLAGS.lr_schedule, spec.schedule),
    rotation_head=FLAGS.rotation_weight > 0,
    conv=FLAGS.conv,
  )
  params = {
    "ema": FLAGS.ema,
    "lambda_u": pick(FLAGS.lambda_u, spec.lambda_u),
    "rampup_steps": pick(FLAGS.rampup_steps, FLAGS.student_steps),
    "temperature": FLAGS.temperature,
    "alpha": FLAGS.alpha,
    "mixmatch_k": FLAGS.mixmatch_k,
    "threshold": FLAGS.threshold,
    "randaugment_ops": FLAGS.randaugment_ops,
  }
  return cfg, params


def config_settings(cfg) -> dict:
  """A victim's or students' config as it enters run names: `conv` left out at its default, so that the names of
  runs made before that field existed stay the same."""
  settings = dataclasses.asdict(cfg)
  if settings.get("conv") == "xla":
    del settings["conv"]
  return settings


def run_name(prefix: str, settings: dict) -> str:
  """`prefix` plus a digest of every setting: other settings, other checkpoints."""
  return f"{prefix}_{hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]}"


def _extractions(backend, output: str, budgets: list[int], shape: tuple, num_classes: int) -> tuple[list, dict]:
  """One extraction per (budget, repetition), budget-major as the students, each with its own oracle of that
  budget; and the oracle's settings that change its answers, for run names."""
  out, settings = [], {}
  for q in budgets:
    for rep in range(FLAGS.seeds):
      oracle = oracle_flags.make_oracle(backend, output, FLAGS.top_k, q, record_inputs=False)
      out.append(rounds_lib.Extraction(oracle, q, _seed("query_seed") + rep, Asked.empty(shape, num_classes)))
      settings = oracle_flags.oracle_settings(oracle)
  return out, settings


def _close(extractions: list, count: bool = True) -> None:
  """Closes the extractions' oracles (remote ones hold a connection), first reading their counts when `count`."""
  for e in extractions:
    if count:
      e.used = e.oracle.used
    if hasattr(e.oracle, "close"):
      e.oracle.close()


def _noise_top(hist: list) -> str:
  return f"{int(np.argmax(hist))}:{max(hist):.2f}"


def _rows(
  method: str, strategy: str, output: str, budgets: list[int], extractions: list, histories: list, seconds: float
) -> list:
  rows, i = [], 0
  for q in budgets:
    runs = []
    for rep in range(FLAGS.seeds):
      summary = evaluation.summarize(histories[i], FLAGS.median_of)
      curve = [{k: h[k] for k in ("step", "fidelity", "val_fidelity") if k in h} for h in histories[i]]
      runs.append(
        {
          "student_seed": _seed("student_seed") + rep,
          "query_seed": _seed("query_seed") + rep,
          "oracle_used": extractions[i].used,
          **summary,
          "curve": curve,
        }
      )
      i += 1
    agg = evaluation.aggregate(
      [{k: v for k, v in r.items() if k not in ("student_seed", "query_seed", "curve", "oracle_used")} for r in runs]
    )
    row = {
      "method": method,
      "strategy": strategy,
      "queries": q,
      "oracle_output": output,
      "oracle_used": runs[0]["oracle_used"],
      **agg,
    }
    if "noise_hist" in row:
      row["noise_top"] = _noise_top(row["noise_hist"])
    rows.append({**row, "steps": FLAGS.student_steps, "seconds": round(seconds, 1), "per_seed": runs})
  return rows


def notes() -> str:
  """How the figures of results.md were obtained."""
  every = FLAGS.eval_every or max(FLAGS.student_steps // 20, 1)
  return (
    f"Each student is evaluated every {every} steps (EMA weights; before its last {FLAGS.median_of} "
    f"evaluations only on the test and validation splits); its figure is the median of its last "
    f"{FLAGS.median_of} evaluations. A row gives the mean over `seeds` repetitions (student seed "
    f"{_seed('student_seed')}+r, query seed {_seed('query_seed')}+r, one victim of seed "
    f"{_seed('victim_seed')}) and `<figure>_std` their standard deviation. fidelity: top-1 agreement on the "
    f"test split; val_fidelity: on the held-out validation split of the training inputs (for tuning); "
    f"gauss<s>_fidelity: on test images plus Gaussian noise of s pixel levels; noise_fidelity: on uniform "
    f"noise, beside noise_top (class:share of the most frequent predicted class on noise, the victim's in its "
    f"row): a student that predicts one class on noise scores the victim's share of that class."
    + (
      " Rows with targets=ground_truth train on the pool's own labels of the inputs the random strategy's oracle "
      "rows ask (strategy random whatever --strategy says) "
      "(no oracle: oracle_used 0; `queries` is then the number of labeled inputs)."
      if "ground_truth" in FLAGS.targets
      else ""
    )
  )


def prepare(workdir: pathlib.Path) -> tuple:
  """The dataset, the attacker's pool and the validation split (saved to split.npz), and the sorted budgets,
  checked against the pool; one-line ConfigErrors where the flags do not fit the data."""
  ds = datasets.load(FLAGS.dataset, FLAGS.data_dir, FLAGS.tfds_data_dir)
  val_size = FLAGS.val_size if FLAGS.val_size is not None else len(ds.train) // 10
  if val_size >= len(ds.train):
    raise common.ConfigError(f"--val_size={val_size} leaves no attacker's pool of the {len(ds.train)} inputs")
  pool_idx, val_idx = evaluation.split_pool(len(ds.train), val_size, FLAGS.seed)
  logging.info(
    "dataset %s: %d train (%d attacker's pool, %d validation), %d test, %s",
    ds.name,
    len(ds.train),
    len(pool_idx),
    len(val_idx),
    len(ds.test),
    ds.image_shape,
  )
  budgets = budgets_of(FLAGS.queries, len(pool_idx))
  if budgets[-1] > len(pool_idx):
    raise common.ConfigError(
      f"--queries={','.join(FLAGS.queries)}: the attacker's pool has only {len(pool_idx)} "
      f"inputs ({len(ds.train)} minus --val_size={val_size})"
    )
  semi = [m for m in FLAGS.method if METHODS[m].needs_unlabeled] + (["rotation"] if FLAGS.rotation_weight else [])
  if semi and budgets[-1] == len(pool_idx):
    raise common.ConfigError(
      f"--method={','.join(FLAGS.method)}: {semi[0]} needs unlabeled inputs, but "
      f"--queries={budgets[-1]} queries the whole attacker's pool; lower the budget"
    )
  student_augmentation(ds)  # a shift the images cannot take fails here, before the victim trains
  np.savez(workdir / "split.npz", pool=pool_idx, val=val_idx)
  return ds, pool_idx, val_idx, budgets


def victim_config() -> victim_lib.VictimConfig:
  """The victim's recipe from the --victim_* flags."""
  return victim_lib.VictimConfig(
    model=FLAGS.victim_model,
    steps=FLAGS.victim_steps,
    batch_size=FLAGS.victim_batch_size,
    lr=FLAGS.victim_lr,
    seed=_seed("victim_seed"),
    conv=FLAGS.victim_conv,
  )


def build_evaluator(ds, victim_predict, val_idx: np.ndarray) -> evaluation.Evaluator:
  """The evaluation sets of the flags (test, validation split, Gaussian-noised test images, uniform noise),
  labelled by the victim directly."""
  return evaluation.Evaluator.build(
    victim_predict,
    ds.test.images,
    ds.test.labels,
    ds.num_classes,
    val_images=ds.train.images[val_idx],
    noise_samples=FLAGS.noise_samples,
    gauss_sigmas=[float(s) for s in FLAGS.gauss_sigmas],
    gauss_samples=FLAGS.gauss_samples,
    seed=FLAGS.seed,
    top_k=FLAGS.eval_top_k,
  )


def _ground_truth_extractions(pool: np.ndarray, labels: np.ndarray, budgets: list[int], num_classes: int) -> list:
  """--targets=ground_truth: the random strategy's inputs (same query seeds, so the same inputs as the oracle
  rows) answered with the pool's own labels, one-hot; no oracle is asked: 0 inputs answered."""
  strategy, one_hot = strategy_flags.make("random"), np.eye(num_classes)
  unanswered = lambda x: np.zeros((len(x), num_classes))  # stands where the oracle would be; never the victim
  out = []
  for q in budgets:
    for rep in range(FLAGS.seeds):
      e = rounds_lib.Extraction(unanswered, q, _seed("query_seed") + rep, Asked.empty(pool.shape[1:], num_classes))
      rounds_lib.ask_round(strategy, e, 0, 1, pool, None, None, num_classes, "probabilities")
      e.asked.answers = one_hot[labels[e.asked.natural]]
      out.append(e)
  return out


def student_augmentation(ds) -> tuple[bool, int]:
  """(flip, shift) of the students' weak augmentation: the dataset's (`augment.default_augmentation`) unless
  --augment_flip / --augment_shift say otherwise; a one-line ConfigError for a shift the images cannot take (reflect
  padding needs a shift below the image's side) or any augmentation of inputs that are not images."""
  flip, shift = augment.default_augmentation(ds.name)
  flip = flip if FLAGS.augment_flip is None else FLAGS.augment_flip
  shift = shift if FLAGS.augment_shift is None else FLAGS.augment_shift
  if len(ds.image_shape) != 3 and (flip or shift):
    raise common.ConfigError(f"--augment_flip/--augment_shift: the {ds.name} inputs {ds.image_shape} are not images")
  if len(ds.image_shape) == 3 and shift >= min(ds.image_shape[:2]):
    raise common.ConfigError(
      f"--augment_shift={shift}: the {ds.name} images are {ds.image_shape[0]}x{ds.image_shape[1]}; "
      f"the shift must be below their side"
    )
  return flip, shift


def extract(
  ds,
  pool_idx: np.ndarray,
  victim_model,
  victim_variables,
  evaluator: evaluation.Evaluator,
  workdir: pathlib.Path,
  budgets: list[int],
  mesh,
  victim_settings: dict,
) -> list[dict]:
  """Every (targets or oracle output, method) of the flags against one victim: the students of every budget and
  repetition trained stacked; returns their rows. `victim_settings` (how the victim was made) enters the
  students' run names, so that students of another victim never resume from these checkpoints."""
  rows = []
  backend = oracle_lib.model_backend(victim_model, victim_variables)  # the API; the evaluator never goes through it
  pool = ds.train.images[pool_idx]  # the attacker's pool: its labels are read only by --targets=ground_truth
  rot = "+rot" if FLAGS.rotation_weight > 0 else ""
  augmentation = student_augmentation(ds)
  eval_every = FLAGS.eval_every or max(FLAGS.student_steps // 20, 1)
  transfer_sets: dict = {}
  runs = [("ground_truth", "random")] if "ground_truth" in FLAGS.targets else []
  if "oracle" in FLAGS.targets:
    runs += [(output, sname) for output in FLAGS.oracle_output for sname in FLAGS.strategy]
  for output, sname in runs:
    strategy = strategy_flags.make(sname)
    natural, kinds = _natural_inputs(strategy, pool, ds, budgets, transfer_sets)
    shared = None
    if output == "ground_truth":
      labels = ds.train.labels[pool_idx]
      shared = _ground_truth_extractions(pool, labels, budgets, ds.num_classes), {"targets": "ground_truth"}
    elif not strategy.adaptive:  # one query pass, shared by every method, saved: a re-run asks nothing
      shared = _extractions(backend, output, budgets, ds.image_shape, ds.num_classes)
      query_settings = {
        "victim": victim_settings,
        "budgets": budgets,
        "seeds": FLAGS.seeds,
        "query_seed": _seed("query_seed"),
        "val": [FLAGS.seed, len(ds.train) - len(pool_idx)],
        **shared[1],
        **strategy_flags.settings(sname, strategy),
      }
      path = workdir / "queries" / run_name(f"{sname}_{output}", query_settings) / "asked.npz"
      if not _reuse_asked(path, shared[0]):
        for e in shared[0]:
          rounds_lib.ask_round(strategy, e, 0, 1, natural, kinds, None, ds.num_classes, output)
        _close(shared[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        rounds_lib.save_asked(path, shared[0])
    answers_as = "probabilities" if output == "ground_truth" else output  # one-hot labels read as probabilities
    for method in FLAGS.method:
      t0 = time.time()
      cfg, params = method_settings(method)
      needs_unlabeled = METHODS[method].needs_unlabeled or FLAGS.rotation_weight > 0
      if needs_unlabeled and strategy.source == "none":
        raise common.ConfigError(
          f"--strategy={sname} synthesises every query: --method={method} has no natural inputs to use unlabeled"
        )
      extra = None
      if FLAGS.rotation_weight > 0:
        from semisup import rotation

        extra = rotation.make_rotation_loss(FLAGS.rotation_weight, *augmentation, rotate_labeled=FLAGS.rotate_labeled)
      extractions, oracle_settings = shared or _extractions(backend, output, budgets, ds.image_shape, ds.num_classes)
      seeds_ = [_seed("student_seed") + rep for _ in budgets for rep in range(FLAGS.seeds)]
      settings = {
        "config": config_settings(cfg),
        "params": params,
        "victim": victim_settings,
        "budgets": budgets,
        "seeds": seeds_,
        "query_seed": _seed("query_seed"),
        "rotation": [FLAGS.rotation_weight, FLAGS.rotate_labeled],
        "top_k": FLAGS.top_k,
        "val": [FLAGS.seed, len(ds.train) - len(pool_idx)],
        "eval": [eval_every, FLAGS.noise_samples, FLAGS.gauss_sigmas],
        **oracle_settings,
        **strategy_flags.settings(sname, strategy),
      }
      if FLAGS.eval_top_k != 5:
        settings["eval_top_k"] = FLAGS.eval_top_k
      if augmentation != augment.default_augmentation(ds.name):
        settings["augment"] = list(augmentation)
      tag = "" if sname == "random" else f"_{sname}"
      name = run_name(f"{method}{rot}{tag}_{output}_{cfg.model}", settings)
      group_dir = workdir / "students" / name
      group_dir.mkdir(parents=True, exist_ok=True)
      train = functools.partial(
        students.train_students,
        num_classes=ds.num_classes,
        cfg=cfg,
        make_step=make_step_factory(method, params, augmentation, extra),
        needs_unlabeled=needs_unlabeled,
        mesh=mesh,
        steps_per_call=FLAGS.steps_per_call,
        evaluate=evaluator,
        eval_every=eval_every,
        full_evals=FLAGS.median_of,
        name=name,
      )

      student_tasks = functools.partial(
        _student_tasks,
        natural=natural,
        output=answers_as,
        labels_only=strategy.labels_only,
        needs_unlabeled=needs_unlabeled,
        seeds_=seeds_,
      )
      if shared is None:
        _ask_in_rounds(
          strategy,
          extractions,
          natural,
          kinds,
          output,
          ds.num_classes,
          group_dir,
          student_tasks,
          train,
        )
      data, tasks = student_tasks([e.asked for e in extractions])
      arrays: dict[str, Any] = {
        "pool": pool_idx,
        **{f"labeled_{i}": t.labeled for i, t in enumerate(tasks)},
        **{f"unlabeled_{i}": t.unlabeled for i, t in enumerate(tasks)},
      }
      np.savez(group_dir / "tasks.npz", **arrays)
      _, _, histories = train(data, tasks, checkpoint_dir=group_dir)
      for row in _rows(method + rot, sname, output, budgets, extractions, histories, time.time() - t0):
        if FLAGS.targets != ["oracle"]:
          row = {**row, "targets": "ground_truth" if output == "ground_truth" else "oracle"}
          if output == "ground_truth":
            row["oracle_output"] = "-"
        logging.info("%s", {k: v for k, v in row.items() if k != "per_seed"})
        print(
          " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k != "per_seed" and not isinstance(v, list)
          ),
          flush=True,
        )
        rows.append(row)
  return rows


def victim_row(evaluator: evaluation.Evaluator) -> dict:
  """The victim's own row: its accuracy and (on noise) its class histogram."""
  row = evaluator.victim_row()
  if "noise_victim_hist" in row:
    row["noise_top"] = _noise_top(row["noise_victim_hist"])
  return {"method": "victim", "queries": 0, "oracle_output": "-", **row, "fidelity": 1.0}


@experiments.register("extraction", notes=notes)
def run(workdir: pathlib.Path) -> list[dict]:
  ds, pool_idx, val_idx, budgets = prepare(workdir)
  mesh = parallel.data_mesh(FLAGS.num_devices)
  vcfg = victim_config()
  victim = victim_lib.train_victim(ds, vcfg, workdir / "victim", mesh)
  logging.info("victim test accuracy %.4f", victim.test_accuracy)
  evaluator = build_evaluator(ds, lambda x: predict_logits(victim.model, victim.variables, x), val_idx)
  return [victim_row(evaluator)] + extract(
    ds, pool_idx, victim.model, victim.variables, evaluator, workdir, budgets, mesh, config_settings(vcfg)
  )


def _student_tasks(
  asked: list, *, natural: np.ndarray, output: str, labels_only: bool, needs_unlabeled: bool, seeds_: list[int]
) -> tuple[np.ndarray, list[students.StudentTask]]:
  """(training data, one StudentTask per extraction) from what each extraction asked."""
  data, specs = rounds_lib.training_data(natural, asked, output, labels_only, needs_unlabeled)
  return data, [students.StudentTask(lab, tgt, free, seed) for (lab, tgt, free), seed in zip(specs, seeds_)]


def _natural_inputs(strategy, pool: np.ndarray, ds, budgets: list[int], cache: dict) -> tuple:
  """(the natural inputs the strategy asks from, their kinds or None): the attacker's pool, the transfer set
  (drawn once per run from the query stream) or nothing (data-free)."""
  if strategy.source == "pool":
    return pool, None
  if strategy.source == "none":
    return np.zeros((0,) + ds.image_shape, np.uint8), None
  same = [t for t in FLAGS.transfer_set if transfer.DOMAIN.get(t) == ds.name]
  if same:
    raise common.ConfigError(
      f"--transfer_set={same[0]} is the victim's own domain ({ds.name}); choose another "
      f"(or --strategy=random to ask the attacker's pool)"
    )
  if "set" not in cache:
    rng = transfer.draw_rng(_seed("query_seed"))
    cache["set"] = transfer.load(FLAGS.transfer_set, ds.image_shape, FLAGS.transfer_size, rng, FLAGS.data_dir)
    logging.info("transfer set %s: %d images", ",".join(FLAGS.transfer_set), len(cache["set"].images))
  ts = cache["set"]
  if budgets[-1] > len(ts.images):
    raise common.ConfigError(
      f"--queries={budgets[-1]} is more than the transfer set's {len(ts.images)} images; raise --transfer_size"
    )
  return ts.images, ts.kinds


def _reuse_asked(path: pathlib.Path, extractions: list) -> bool:
  """Whether `path` (`rounds.save_asked`) holds what these extractions asked in a finished run; if so they take it
  over, with their oracles' counts, and their oracles are closed without asking anything."""
  saved = rounds_lib.load_asked(path, len(extractions))
  if saved is None:
    return False
  for e, (asked, used) in zip(extractions, saved):
    e.asked, e.used = asked, used
  _close(extractions, count=False)
  logging.info("%s: reusing the queries of a finished run", path.parent.name)
  return True


def _ask_in_rounds(
  strategy,
  extractions: list,
  natural: np.ndarray,
  kinds,
  output: str,
  num_classes: int,
  group_dir: pathlib.Path,
  student_tasks,
  train,
) -> None:
  """Every round of an adaptive strategy for every extraction, the students trained between rounds (fine-tuned
  in `group_dir`, or retrained in `group_dir/round<r>`); what was asked is saved in `group_dir/asked.npz`. A
  finished group reuses it (the oracle is not asked again); an interrupted one starts over."""
  path = group_dir / "asked.npz"
  if _reuse_asked(path, extractions):
    return
  if any(group_dir.iterdir()):
    logging.warning("%s: an interrupted run of rounds; starting it over", group_dir.name)
    shutil.rmtree(group_dir)
    group_dir.mkdir(parents=True)
  n = rounds_lib.num_rounds(strategy, FLAGS.rounds)
  current: list[Student | None] = [None] * len(extractions)
  for r in range(n):
    for e, student in zip(extractions, current):
      rounds_lib.ask_round(strategy, e, r, FLAGS.rounds, natural, kinds, student, num_classes, output)
    logging.info("%s: round %d of %d asked", group_dir.name, r + 1, n)
    if r == n - 1:
      break
    data, tasks = student_tasks([e.asked for e in extractions])
    if FLAGS.round_training == "finetune":
      stop = max(FLAGS.student_steps * (r + 1) // n, 1)
      model, variables, _ = train(data, tasks, checkpoint_dir=group_dir, stop=stop)
    else:
      cfg = dataclasses.replace(train.keywords["cfg"], steps=FLAGS.round_steps or FLAGS.student_steps)
      model, variables, _ = train(data, tasks, cfg=cfg, checkpoint_dir=group_dir / f"round{r}", evaluate=None)
    current = [Student(model, v) for v in variables]
  _close(extractions)
  rounds_lib.save_asked(path, extractions)
