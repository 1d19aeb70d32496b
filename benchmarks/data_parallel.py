"""Steps/s of the FS and MixMatch train steps against the number of data-parallel devices.

  python -m benchmarks.data_parallel            # CPU: 1, 2, 4 forced host devices (information only: they share
                                                # the same cores, so no speed-up is expected)
  python -m benchmarks.data_parallel --real     # the machine's real devices (GPU/TPU), 1..all

Each device count runs in its own process (XLA_FLAGS must be set before jax starts). Global batch fixed: 64
labeled (+ 2x64 unlabeled for MixMatch) per step, small_cnn on 32x32x3. Writes
benchmarks/results/data_parallel.{json,md} (or --out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_bool("real", False, "Use the real devices instead of forced CPU host devices.")
flags.DEFINE_string("model", "small_cnn", "Model to time.")
flags.DEFINE_integer("batch", 64, "Global labeled batch.")
flags.DEFINE_integer("timed_steps", 5, "Timed steps per configuration (after 2 warm-up steps).")
flags.DEFINE_string("out", None, "Output path prefix (default benchmarks/results/data_parallel).")
flags.DEFINE_integer("child", 0, "Internal: time this many devices in this process.")
FLAGS = flags.FLAGS


def time_steps(num_devices: int) -> dict:
  import jax
  import numpy as np

  from extraction import models, parallel, train
  from semisup import mixmatch

  out = {"devices": num_devices, "platform": jax.default_backend()}
  rng = np.random.default_rng(0)
  b = FLAGS.batch
  batch = {
    "images": rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8),
    "targets": np.eye(10, dtype=np.float32)[rng.integers(0, 10, b)],
    "unlabeled": rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8),
  }
  for method in ("fs", "mixmatch"):
    model = models.create_model(FLAGS.model, 10)
    tx = train.make_optimizer(0.002, 0.02, 100)
    state = train.create_state(model, tx, jax.random.key(0), (32, 32, 3))
    if method == "fs":
      step = train.make_supervised_step(model, flip=True, shift=4)
      host = {k: v for k, v in batch.items() if k != "unlabeled"}
    else:
      step = mixmatch.make_mixmatch_step(model, lambda_u=75.0, rampup_steps=100, flip=True, shift=4)
      host = batch
    state, put, jitted = parallel.place(step, state, parallel.data_mesh(num_devices))
    dev = put(host)
    for _ in range(2):
      state, m = jitted(state, dev)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(FLAGS.timed_steps):
      state, m = jitted(state, dev)
    jax.block_until_ready(m)
    out[f"{method}_steps_per_s"] = round(FLAGS.timed_steps / (time.perf_counter() - t), 3)
  return out


def main(argv):
  if FLAGS.child:
    print(json.dumps(time_steps(FLAGS.child)))
    return
  import jax  # only to count real devices; children set their own XLA_FLAGS

  counts = [n for n in (1, 2, 4, 8) if n <= (len(jax.devices()) if FLAGS.real else 4)]
  rows = []
  for n in counts:
    env = dict(os.environ)
    if not FLAGS.real:
      env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
      env["JAX_PLATFORMS"] = "cpu"
    args = [
      sys.executable,
      "-m",
      "benchmarks.data_parallel",
      f"--child={n}",
      f"--model={FLAGS.model}",
      f"--batch={FLAGS.batch}",
      f"--timed_steps={FLAGS.timed_steps}",
    ]
    p = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(rows[-1], flush=True)
  from benchmarks.common import RESULTS, environment_line, machine
  from launch.results import markdown_table

  prefix = FLAGS.out or str(RESULTS / "data_parallel")
  command = "python -m benchmarks.data_parallel " + " ".join(argv[1:])
  result = {
    "command": command.strip(),
    "machine": machine(),
    "model": FLAGS.model,
    "global_batch": FLAGS.batch,
    "rows": rows,
  }
  with open(prefix + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(prefix + ".md", "w") as f:
    f.write(
      f"# Data-parallel steps/s\n\nCommand: `{result['command']}`\n\nMachine: {result['machine']}\n\n"
      f"{environment_line(result['machine'])}\n\n"
      f"Model {FLAGS.model}, global batch {FLAGS.batch} (+2x{FLAGS.batch} unlabeled for MixMatch).\n\n"
      + markdown_table(rows)
    )


if __name__ == "__main__":
  app.run(main)
