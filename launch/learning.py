"""Learning-based extraction (`--experiment=extraction`): train or restore the victim, then for every oracle
output, query budget and method, query the oracle and train a student (FS, FS + Rot, MixMatch, MM + Rot),
measuring accuracy and fidelity. Students are checkpointed under <workdir>/students/ and resume."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np
from absl import flags, logging

from extraction import datasets, metrics, models, oracle as oracle_lib, parallel, supervised, victim as victim_lib
from extraction.predict import predict_logits
from launch import common, experiments, oracle_flags

# Data.
flags.DEFINE_string("dataset", "digits", f"One of {', '.join(datasets.DATASETS)}.")
flags.DEFINE_string("data_dir", None, "Directory with <dataset>/{train,test}.npz; without it, tfds is used.")
flags.DEFINE_string("tfds_data_dir", None, "tfds data_dir (default ~/tensorflow_datasets).")
# Victim.
flags.DEFINE_string("victim_model", "small_cnn", f"Victim architecture: {', '.join(models.MODELS)}.")
flags.DEFINE_integer("victim_steps", 2000, "Victim training steps.")
flags.DEFINE_integer("victim_batch_size", 128, "Victim batch size.")
flags.DEFINE_float("victim_lr", 0.002, "Victim peak learning rate (Adam, cosine schedule).")
# Attack.
flags.DEFINE_list("queries", ["250", "1000", "4000"], "Query budgets, one extraction per budget.")
flags.DEFINE_list("oracle_output", ["probabilities"], f"Oracle outputs: {', '.join(oracle_lib.OUTPUT_MODES)}.")
flags.DEFINE_integer("top_k", None, "k for --oracle_output=top_k.")
flags.DEFINE_list("method", ["fs"], "Extraction methods: fs, mixmatch.")
flags.DEFINE_float("rotation_weight", 0.0, "Weight of the rotation loss on unlabeled inputs (0: off).")
# Student.
flags.DEFINE_string("student_model", "small_cnn", "Student architecture.")
flags.DEFINE_integer("student_steps", 1000, "Student training steps (same for every method).")
flags.DEFINE_integer("batch_size", 64, "Labeled batch size of the student.")
flags.DEFINE_integer("unlabeled_batch_size", 64, "Unlabeled batch size (per augmentation).")
flags.DEFINE_float("lr", 0.002, "Student learning rate (Adam, constant as in MixMatch).")
flags.DEFINE_float("weight_decay", 0.02, "Decoupled weight decay (times lr) on kernels.")
flags.DEFINE_float("ema", 0.999, "EMA decay of the student weights (evaluated model).")
# MixMatch (reference defaults).
flags.DEFINE_float("lambda_u", 75.0, "MixMatch unlabeled loss weight (75 CIFAR-10, 250 SVHN).")
flags.DEFINE_integer("rampup_steps", None, "Steps of the linear lambda_u ramp-up (default: student_steps // 4).")
flags.DEFINE_float("temperature", 0.5, "MixMatch sharpening temperature.")
flags.DEFINE_float("alpha", 0.75, "MixMatch MixUp Beta(alpha, alpha).")
flags.DEFINE_integer("mixmatch_k", 2, "MixMatch augmentations per unlabeled input.")
# Evaluation and devices.
flags.DEFINE_integer("noise_samples", 2000, "Uniform-noise images for off-distribution agreement.")

FLAGS = flags.FLAGS
METHODS = ("fs", "mixmatch")


def _check(cond: bool, message: str) -> bool:
  if not cond:
    raise flags.ValidationError(message)
  return True


flags.register_validator("dataset", lambda v: _check(v in datasets.DATASETS,
                         f"unknown --dataset={v!r}; choose one of {', '.join(datasets.DATASETS)}"))
for _name in ("victim_model", "student_model"):
  flags.register_validator(_name, lambda v, n=_name: _check(v in models.MODELS,
                           f"unknown --{n}={v!r}; choose one of {', '.join(models.MODELS)}"))
flags.register_validator("oracle_output", lambda v: _check(
    v and all(o in oracle_lib.OUTPUT_MODES for o in v),
    f"unknown --oracle_output={','.join(v)}; choose from {', '.join(oracle_lib.OUTPUT_MODES)}"))
flags.register_validator("method", lambda v: _check(
    v and all(m in METHODS for m in v), f"unknown --method={','.join(v)}; choose from {', '.join(METHODS)}"))
flags.register_validator("queries", lambda v: _check(
    bool(v) and all(q.strip().isdigit() and int(q) > 0 for q in v),
    f"--queries must be positive integers, got {','.join(v)}"))
for _name in ("victim_steps", "student_steps", "victim_batch_size", "batch_size", "unlabeled_batch_size",
              "mixmatch_k", "noise_samples"):
  flags.register_validator(_name, lambda v, n=_name: _check(v is not None and v > 0, f"--{n} must be > 0, got {v}"))
flags.register_validator("rotation_weight", lambda v: _check(v >= 0, f"--rotation_weight must be >= 0, got {v}"))


@flags.multi_flags_validator(["oracle_output", "top_k", "dataset"])
def _top_k_fits(values):
  if "top_k" in (values["oracle_output"] or []):
    try:
      oracle_lib.validate_output_mode("top_k", values["top_k"], datasets.NUM_CLASSES.get(values["dataset"]))
    except ValueError as e:
      raise flags.ValidationError(f"--top_k: {e}")
  return True


@flags.multi_flags_validator(["oracle_url", "oracle_output"])
def _one_output_per_key(values):
  if values["oracle_url"] and len(values["oracle_output"] or []) != 1:
    raise flags.ValidationError("--oracle_url: one key serves one output mode; give exactly one --oracle_output")
  return True


def student_config() -> supervised.StudentConfig:
  return supervised.StudentConfig(
      model=FLAGS.student_model, steps=FLAGS.student_steps, batch_size=FLAGS.batch_size,
      unlabeled_batch_size=FLAGS.unlabeled_batch_size, lr=FLAGS.lr, weight_decay=FLAGS.weight_decay, ema=FLAGS.ema,
      rotation_weight=FLAGS.rotation_weight, seed=FLAGS.seed)


def mixmatch_kwargs() -> dict:
  from semisup import mixmatch
  rampup = FLAGS.rampup_steps if FLAGS.rampup_steps is not None else max(FLAGS.student_steps // 4, 1)
  return dict(step_factory=mixmatch.make_mixmatch_step, lambda_u=FLAGS.lambda_u, rampup_steps=rampup,
              temperature=FLAGS.temperature, alpha=FLAGS.alpha, k=FLAGS.mixmatch_k)


def run_name(prefix: str, cfg: supervised.StudentConfig, kwargs: dict, oracle) -> str:
  """`prefix` plus a digest of every setting of the student and the oracle: other settings, other checkpoints."""
  settings = {**dataclasses.asdict(cfg), **{k: v for k, v in kwargs.items() if k != "step_factory"},
              "top_k": FLAGS.top_k, **oracle_flags.oracle_settings(oracle)}
  return f"{prefix}_{hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]}"


@experiments.register("extraction")
def run(workdir: pathlib.Path) -> list[dict]:
  ds = datasets.load(FLAGS.dataset, FLAGS.data_dir, FLAGS.tfds_data_dir)
  logging.info("dataset %s: %d train, %d test, %s", ds.name, len(ds.train), len(ds.test), ds.image_shape)
  if max(int(q) for q in FLAGS.queries) > len(ds.train):
    raise common.ConfigError(f"--queries={','.join(FLAGS.queries)}: the attacker's pool has only "
                             f"{len(ds.train)} inputs")
  mesh = parallel.data_mesh(FLAGS.num_devices)
  vcfg = victim_lib.VictimConfig(model=FLAGS.victim_model, steps=FLAGS.victim_steps,
                                 batch_size=FLAGS.victim_batch_size, lr=FLAGS.victim_lr, seed=FLAGS.seed)
  victim = victim_lib.train_victim(ds, vcfg, workdir / "victim", mesh)
  logging.info("victim test accuracy %.4f", victim.test_accuracy)
  backend = oracle_lib.model_backend(victim.model, victim.variables)
  noise = metrics.noise_images(FLAGS.seed, FLAGS.noise_samples, ds.image_shape)
  victim_test, victim_noise = backend(ds.test.images), backend(noise)
  rows = [{"method": "victim", "queries": 0, "oracle_output": "-", "accuracy": victim.test_accuracy,
           "fidelity": 1.0}]
  pool = ds.train.images  # the attacker's pool: its labels are never read
  rot = "+rot" if FLAGS.rotation_weight > 0 else ""
  cfg = student_config()
  for output in FLAGS.oracle_output:
    for queries in sorted(int(q) for q in FLAGS.queries):
      for method in FLAGS.method:
        t0 = time.time()
        oracle = oracle_flags.make_oracle(backend, output, FLAGS.top_k, queries, record_inputs=False)
        idx = supervised.choose_queries(FLAGS.seed, len(pool), queries)
        targets = supervised.oracle_targets(oracle(pool[idx]), output)
        unlabeled = np.delete(pool, idx, axis=0)  # never sent to the oracle
        kwargs = mixmatch_kwargs() if method == "mixmatch" else {}
        name = run_name(f"{method}{rot}_{output}_{queries}_{cfg.model}", cfg, kwargs, oracle)
        model, variables = supervised.train_student(
            pool[idx], targets, unlabeled, ds.num_classes, cfg, ds.name, checkpoint_dir=workdir / "students" / name,
            mesh=mesh, name=name, **kwargs)
        student = lambda x: predict_logits(model, variables, x)
        row = {"method": method + rot, "queries": queries, "oracle_output": output, "oracle_used": oracle.used,
               **metrics.evaluate(student, victim_test, ds.test.images, ds.test.labels, victim_noise, noise),
               "steps": cfg.steps, "seconds": round(time.time() - t0, 1)}
        logging.info("%s", row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
  return rows
