"""GPU throughput of the MixMatch train step (semisup.mixmatch) at several batch sizes, float32.

Run on one accelerator (sized for one H200: compiles plus timing finish within about 5 minutes, and the run stops
starting new configurations after --max_seconds, 7 minutes by default):
  python -m benchmarks.gpu_mixmatch --out=$OUT/gpu_mixmatch.json
Smoke test on a CPU, in seconds (MLP, 16x16 images, tiny batches; exercises every code path but the model):
  python -m benchmarks.gpu_mixmatch --smoke --out=/tmp/gpu_mixmatch.json

For each labeled batch B in --batches the step sees B labeled + K=2 x B unlabeled images (3B counted) of
32x32x3 (the unlabeled batch has B images, augmented K times). Reports steps/s and images/s over the median of
--rounds timing rounds of at least --round_seconds each; the JSON is rewritten after every configuration, so
a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks.common import lock_file
from extraction import models, train
from semisup import mixmatch

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Path of the JSON result.", required=True)
flags.DEFINE_string("model", "wrn28_2", "Model name (extraction.models.MODELS).")
flags.DEFINE_list("batches", ["64", "128", "256", "512", "1024"], "Labeled batch sizes B.")
flags.DEFINE_integer("image_size", 32, "Height = width of the inputs (3 channels).")
flags.DEFINE_integer("rounds", 5, "Timing rounds per batch size.")
flags.DEFINE_float("round_seconds", 3.0, "Minimum duration of one timing round.")
flags.DEFINE_float("max_seconds", 420.0, "No new batch size is started after this many seconds.")
flags.DEFINE_bool("smoke", False, "CPU smoke test: mlp, 16x16 inputs, batches 4 and 8, 2 short rounds.")

K = 2


def time_batch(name: str, b: int, size: int, rounds: int, round_seconds: float) -> dict:
  """Compiles the step for labeled batch b, then times `rounds` rounds; returns one result row."""
  shape = (size, size, 3)
  model = models.create_model(name, 10)
  tx = train.make_optimizer(0.002, 0.02, 10_000)
  state = train.create_state(model, tx, jax.random.key(0), shape)
  step = jax.jit(
    mixmatch.make_mixmatch_step(model, lambda_u=75.0, rampup_steps=1000, k=K, flip=True, shift=4), donate_argnums=0
  )
  r = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "images": r.integers(0, 256, (b,) + shape, dtype=np.uint8),
      "targets": r.dirichlet(np.ones(10), b).astype(np.float32),
      "unlabeled": r.integers(0, 256, (b,) + shape, dtype=np.uint8),
    }
  )
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s, i, per_step = time.perf_counter() - t0, 1, []
  for _ in range(rounds):
    n, t0 = 0, time.perf_counter()
    while True:
      state, metrics = step(state, batch)
      i, n = i + 1, n + 1
      if n % 5 == 0:
        jax.block_until_ready(metrics)
        if time.perf_counter() - t0 >= round_seconds:
          break
    per_step.append((time.perf_counter() - t0) / n)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"loss {loss} at batch {b}")
  s = statistics.median(per_step)
  return {
    "model": name,
    "batch": f"{b}+{K}x{b}",
    "images_per_step": (1 + K) * b,
    "compile_s": compile_s,
    "timed_steps": i - 1,
    "s_per_step": s,
    "steps_per_s": 1.0 / s,
    "images_per_s": (1 + K) * b / s,
    "s_per_step_rounds": per_step,
  }


def main(argv):
  del argv
  name, size, batches, rounds, round_s = (
    FLAGS.model,
    FLAGS.image_size,
    [int(b) for b in FLAGS.batches],
    FLAGS.rounds,
    FLAGS.round_seconds,
  )
  if FLAGS.smoke:
    name, size, batches, rounds, round_s = "mlp", 16, [4, 8], 2, 0.05
  dev = jax.devices()[0]
  result = {
    "command": " ".join(["python", "-m", "benchmarks.gpu_mixmatch"] + sys.argv[1:]),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "machine": {
      "device": dev.device_kind,
      "platform": dev.platform,
      "devices": jax.device_count(),
      "host": platform.platform(),
      "jax": jax.__version__,
      "precision": "float32",
      "lock": lock_file(),
    },
    "rows": [],
    "skipped": [],
  }
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  for b in batches:
    if time.perf_counter() - start > FLAGS.max_seconds:
      result["skipped"].append(b)
      continue
    row = time_batch(name, b, size, rounds, round_s)
    result["rows"].append(row)
    print(
      f"{name} B={row['batch']}: compile {row['compile_s']:.1f}s  {row['steps_per_s']:.2f} steps/s  "
      f"{row['images_per_s']:.0f} images/s",
      flush=True,
    )
    result["total_s"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=2) + "\n")
  out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
