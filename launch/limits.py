"""The limits study (`--experiment=limits`): the victim's recipe trained several times, varying exactly one source
of nondeterminism at a time (`extraction.limits`), beside the learning-based attacks of the project against the
same victim and the functionally-equivalent attack on a two-layer victim, so the table shows where each family
stops.

  python -m launch.run --flagfile=configs/limits_digits.flags

Every run of the recipe (the --victim_* flags; the base seed is --victim_seed, default --seed) is trained by
`launch.limits_worker` in a process of its own, with the number of forced CPU devices the run asks for; its
checkpoints, log and final state are kept in <workdir>/runs/<recipe>/<run>/ and reused. Each source's row gives
the mean and standard deviation over its pairs of: test accuracy, top-1 agreement (fidelity) on the test set, on
Gaussian-noised test images (--gauss_sigmas) and on uniform noise (--noise_samples), the largest logit
difference, the largest parameter difference and whether every pair was bit-identical. With --limits_attacks the
methods of --method train on --oracle_output answers (or --targets) of the base run at every --queries budget,
exactly as `--experiment=extraction` does against its victim; with --limits_fe the functionally-equivalent attack
extracts a two-layer digits network (--fe_hidden, --fe_train_steps; another victim: no attack of that family
applies to a CNN).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import flags, logging

from extraction import datasets, evaluation, limits, models, parallel, seeds
from extraction import oracle as oracle_lib
from extraction.predict import predict_logits
from launch import (
  common,
  experiments,
  fe,  # noqa: F401  (defines --fe_hidden, --fe_train_steps, --fe_scale, --fe_max_queries, --fe_seconds)
  learning,
)

REPO = pathlib.Path(__file__).resolve().parent.parent

flags.DEFINE_list(
  "limits_sources",
  ["nothing", "init", "data", "all", "devices", "precision"],
  f"Sources of nondeterminism to vary, one at a time: {', '.join(limits.SOURCES)}.",
)
flags.DEFINE_integer(
  "limits_repeats",
  3,
  "Seeds per source (--victim_seed and the next ones): init, data and all "
  "compare every pair of them (3 pairs for 3), precision and nothing one pair per seed.",
)
flags.DEFINE_list(
  "limits_devices",
  ["1", "2", "4"],
  "Device counts of the devices source (forced CPU devices on a CPU host; on GPU/TPU the first n devices).",
)
flags.DEFINE_integer(
  "limits_base_devices",
  None,
  "Devices of every run outside the devices source (default: the "
  "launcher's, i.e. one per CPU core unless --cpu_devices says otherwise, or every accelerator).",
)
flags.DEFINE_bool(
  "limits_attacks",
  True,
  "Also run the learning-based attacks (--method, --oracle_output, "
  "--queries, ...) against the base run, as --experiment=extraction does.",
)
flags.DEFINE_bool("limits_fe", True, "Also run the functionally-equivalent attack on a two-layer digits victim.")

FLAGS = flags.FLAGS


class RunFailed(RuntimeError):
  """A training run of the study ended with an error (its log says why)."""


flags.register_validator(
  "limits_sources",
  lambda v: learning._check(
    bool(v) and len(set(v)) == len(v) and all(s in limits.SOURCES for s in v),
    f"unknown --limits_sources={','.join(v)}; choose from {', '.join(limits.SOURCES)}",
  ),
)
flags.register_validator(
  "limits_devices",
  lambda v: learning._check(
    bool(v) and all(d.strip().isdigit() and int(d) > 0 for d in v),
    f"--limits_devices must be positive integers, got {','.join(v)}",
  ),
)
for _name in ("limits_repeats", "limits_base_devices"):
  flags.register_validator(_name, lambda v, n=_name: learning._check(v is None or v > 0, f"--{n} must be > 0, got {v}"))


def _train(run_dir: pathlib.Path, spec: dict, label: str) -> dict:
  """The final state of one run, trained by `launch.limits_worker` in its own process unless already done. The
  processes share a persistent compilation cache (beside the runs, unless JAX_COMPILATION_CACHE_DIR is set): runs
  of the same program skip its compilation, which changes nothing in what they compute."""
  done = run_dir / "done.json"
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(run_dir.parent.parent / "compilation_cache"))
  if not (done.exists() and json.loads(done.read_text())["spec"] == spec):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    t0 = time.time()
    logging.info("limits: training %s", label)
    with open(run_dir / "log.txt", "a") as log:
      p = subprocess.run(
        [sys.executable, "-m", "launch.limits_worker", str(run_dir / "spec.json")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
      )
    if p.returncode or not done.exists():
      tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:] or [""]
      raise RunFailed(f"{label} failed (exit {p.returncode}): {tail[0][-300:]} (log: {run_dir / 'log.txt'})")
    logging.info("limits: %s trained in %.0f s", label, time.time() - t0)
  from flax import serialization

  return serialization.msgpack_restore((run_dir / "state.msgpack").read_bytes())


def _variables(state: dict) -> dict:
  """The deployed model of a run's state: EMA weights and batch statistics."""
  return {"params": state["ema_params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}


def fe_row(sigmas: list[float]) -> dict:
  """The functionally-equivalent attack on a two-layer ReLU digits victim through a float64 logits oracle, judged
  like a pair of the study: the victim and the extracted network on the digits test set, the test set under
  Gaussian noise (sigma pixel levels of 255, features in [0, 1]) and uniform noise in [0, 1]^d."""
  import jax

  from functional_equivalence import attack, victims
  from launch.fe import stream_seeds

  streams = stream_seeds(FLAGS.seed)  # victim, attack and evaluation: independent streams, as --experiment=fe
  with jax.enable_x64(True):
    net, (_, _, x_test, y_test) = victims.digits_net(streams["victim_seed"], FLAGS.fe_hidden, FLAGS.fe_train_steps)
    oracle = oracle_lib.Oracle(victims.backend(net), output="logits", record_inputs=False)
    result = attack.extract(
      oracle,
      net.shape[0],
      attack.Config(scale=FLAGS.fe_scale, max_queries=FLAGS.fe_max_queries, max_seconds=FLAGS.fe_seconds),
      seed=streams["attack_seed"],
    )
  sets = {"test": x_test}
  for s in sigmas:
    noise = seeds.rng(streams["eval_seed"], "eval", int(s * 1000)).normal(0.0, s / 255.0, x_test.shape)
    sets[f"gauss{s:g}"] = np.clip(x_test + noise, 0.0, 1.0)
  if FLAGS.noise_samples:
    sets["noise"] = seeds.rng(streams["eval_seed"], "eval", 7).uniform(0.0, 1.0, (FLAGS.noise_samples, net.shape[0]))
  figures = limits.compare(
    {k: victims.logits(net, x) for k, x in sets.items()},
    {k: victims.logits(result.net, x) for k, x in sets.items()},
    y_test,
    net.shape[2],
    FLAGS.eval_top_k,
  )
  d, h, k = net.shape
  return {
    "source": "functional_equivalence",
    "varied": f"another victim: two-layer {d}-{h}-{k} ReLU on digits, float64 logits oracle",
    "method": "functional_equivalence",
    "queries": result.queries,
    "oracle_used": oracle.used,
    **figures,
  }


def plot(rows: list[dict], path: pathlib.Path) -> None:
  """Fidelity of every row on the test set, each Gaussian-noise level and uniform noise (bars, one std)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in rows if "fidelity" in r and r["source"] != "victim"]
  sets = (
    ["fidelity"]
    + [k for k in rows[0] if k.startswith("gauss") and k.endswith("_fidelity")]
    + (["noise_fidelity"] if "noise_fidelity" in rows[0] else [])
  )
  label = lambda r: r["source"] if r["source"] != "attack" else f"{r['method']} {r['oracle_output']} {r['queries']}"
  fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows)), 4.5))
  width = 0.8 / len(sets)
  for j, key in enumerate(sets):
    x = np.arange(len(rows)) + (j - (len(sets) - 1) / 2) * width
    ax.bar(
      x,
      [100 * r.get(key, np.nan) for r in rows],
      width,
      yerr=_clipped_errors([r.get(key, np.nan) for r in rows], [r.get(f"{key}_std", 0) for r in rows]),
      capsize=2,
      label=key.replace("_fidelity", "") if key != "fidelity" else "test",
    )
  ax.set_xticks(np.arange(len(rows)), [label(r) for r in rows], rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("top-1 agreement (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize=8, ncol=len(sets), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _clipped_errors(means: list, stds: list) -> np.ndarray:
  """Error bars of mean +- std in percent, clipped to the [0, 100] an agreement can take."""
  m, s = 100 * np.asarray(means, float), 100 * np.asarray(stds, float)
  return np.stack([np.minimum(s, m), np.minimum(s, 100 - m)])


def notes() -> str:
  return (
    f"The victim's recipe ({FLAGS.victim_model}, {FLAGS.victim_steps} steps of {FLAGS.victim_batch_size}, "
    f"Adam {FLAGS.victim_lr} with cosine decay, EMA; --victim_seed {learning._seed('victim_seed')}) trained "
    f"once per run, each run in its own process; a source's row compares pairs of runs that differ only in "
    f"that source ({FLAGS.limits_repeats} seeds per source; devices {','.join(FLAGS.limits_devices)}), mean ± "
    f"std over its pairs. accuracy: mean test accuracy of the two runs; fidelity: top-1 agreement on the test "
    f"set; gauss<s>_fidelity: on test images plus Gaussian noise of s pixel levels; noise_fidelity: on uniform "
    f"noise (noise_top_share: the largest share of one class on noise, mean of the two runs: agreement there "
    f"is at least about this much when both runs predict mostly that class); max_logit_diff: on the test set; "
    f"max_param_diff: over every weight, EMA weight and batch statistic of the final states; params_identical: "
    f"every pair bit-identical. Attack rows: students trained against the base run (the victim) as in "
    f"--experiment=extraction, median of their last {FLAGS.median_of} evaluations, mean ± std over "
    f"{FLAGS.seeds} seed(s). functional_equivalence: another victim (a two-layer ReLU network on digits), the "
    f"extracted network against it on the digits test set, noised test set and uniform noise."
  )


@experiments.register("limits", notes=notes)
def run(workdir: pathlib.Path) -> list[dict]:
  import jax

  if FLAGS.oracle_url:
    raise common.ConfigError("--experiment=limits trains its own victim; it does not take --oracle_url")
  if FLAGS.limits_attacks:
    ds, pool_idx, val_idx, budgets = learning.prepare(workdir)
  else:
    ds = datasets.load(FLAGS.dataset, FLAGS.data_dir, FLAGS.tfds_data_dir)
  cfg = learning.victim_config()
  base_devices = FLAGS.limits_base_devices or jax.device_count()
  try:
    pairs = limits.plan(
      FLAGS.limits_sources, cfg.seed, FLAGS.limits_repeats, [int(d) for d in FLAGS.limits_devices], base_devices
    )
  except ValueError as e:
    raise common.ConfigError(str(e)) from None
  base = limits.Run(cfg.seed, cfg.seed, base_devices)
  runs = list(dict.fromkeys([base] + limits.unique_runs(pairs)))
  recipe = {
    "dataset": FLAGS.dataset,
    "data_dir": FLAGS.data_dir,
    "tfds_data_dir": FLAGS.tfds_data_dir,
    "recipe": learning.config_settings(cfg),
  }
  recipe_dir = workdir / "runs" / learning.run_name("recipe", recipe)
  states = {
    r: _train(recipe_dir / r.name, {**recipe, "run": dataclasses.asdict(r)}, f"run {i + 1}/{len(runs)} {r.name}")
    for i, r in enumerate(runs)
  }
  nets = {p: models.create_model(cfg.model, ds.num_classes, precision=p, conv=cfg.conv) for p in models.PRECISIONS}
  predict = lambda r: lambda x: predict_logits(nets[r.precision], _variables(states[r]), x)
  sigmas = [float(s) for s in FLAGS.gauss_sigmas]
  sets = evaluation.Evaluator.build(
    predict(base),
    ds.test.images,
    ds.test.labels,
    ds.num_classes,
    noise_samples=FLAGS.noise_samples,
    gauss_sigmas=sigmas,
    gauss_samples=FLAGS.gauss_samples,
    seed=FLAGS.seed,
  ).sets
  logits = {r: {k: predict(r)(x) for k, x in sets.items()} for r in runs}
  accuracy = {r.name: float(np.mean(logits[r]["test"].argmax(-1) == ds.test.labels)) for r in runs}
  rows = [
    {
      "source": "victim",
      "varied": f"the base run {base.name}",
      "accuracy": accuracy[base.name],
      "run_accuracy": accuracy,
    }
  ]
  for source, ps in pairs.items():
    figures = [limits.compare(logits[a], logits[b], ds.test.labels, ds.num_classes, FLAGS.eval_top_k) for a, b in ps]
    diffs = [limits.param_difference(states[a], states[b]) for a, b in ps]
    row = limits.summarize(source, figures, diffs)
    row["per_pair"] = [
      {"a": a.name, "b": b.name, **f, "max_param_diff": d, "params_identical": same}
      for (a, b), f, (d, same) in zip(ps, figures, diffs)
    ]
    logging.info("limits: %s", {k: v for k, v in row.items() if k != "per_pair"})
    rows.append(row)
  if FLAGS.limits_attacks:
    evaluator = learning.build_evaluator(ds, predict(base), val_idx)
    attacks = learning.extract(
      ds,
      pool_idx,
      nets[base.precision],
      _variables(states[base]),
      evaluator,
      workdir,
      budgets,
      parallel.data_mesh(FLAGS.num_devices),
      {"limits": recipe, "run": base.name},
    )
    rows += [{"source": "attack", "varied": "learning-based extraction of the base run", **r} for r in attacks]
  if FLAGS.limits_fe:
    rows.append(fe_row(sigmas))
  plot(rows, workdir / "plot.png")
  return rows
