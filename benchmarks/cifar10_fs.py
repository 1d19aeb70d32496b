"""Foundation benchmark on CIFAR-10 (the lossy-JPEG copy in ../shared/data): victim + FS extraction, and
training throughput.

  python -m benchmarks.cifar10_fs [--data_dir=../shared/data] [--workdir=workdirs/bench_cifar10]

1. Runs the launcher with configs/cifar10_cpu.flags (small-CNN victim, FS students at 250/1000/4000 queries,
   probabilities oracle, fixed step budgets) and copies its rows here.
2. Measures supervised training-step throughput (images/s) of small_cnn and wrn28_2 at batch 128 on 32x32x3.
Writes benchmarks/results/cifar10_fs.{json,md} with the command and the machine.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.common import RESULTS, REPO, machine

flags.DEFINE_string("data_dir", "../shared/data", "Directory holding cifar10/{train,test}.npz.")
flags.DEFINE_string("workdir", "workdirs/bench_cifar10", "Launcher workdir (the victim is reused by other benchmarks).")
flags.DEFINE_bool("skip_extraction", False, "Only measure throughput.")
flags.DEFINE_integer("timed_steps", 10, "Timed steps per model for throughput (after 2 warm-up steps).")
FLAGS = flags.FLAGS


def throughput(model_name: str, batch: int, timed_steps: int) -> dict:
  """Images/s of the supervised step (augmentation, forward, backward, Adam, EMA) on random CIFAR-shaped data."""
  import jax
  import numpy as np
  from extraction import models, train
  model = models.create_model(model_name, 10)
  tx = train.make_optimizer(0.002, 0.02, 1000)
  state = train.create_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(train.make_supervised_step(model, flip=True, shift=4), donate_argnums=0)
  rng = np.random.default_rng(0)
  b = {"images": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
       "targets": np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]}
  b = jax.device_put(b)
  for i in range(2):
    state, m = step(state, b)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(timed_steps):
    state, m = step(state, b)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / timed_steps
  return {"model": model_name, "batch": batch, "seconds_per_step": round(dt, 4), "images_per_s": round(batch / dt, 1)}


def main(_):
  command = "python -m benchmarks.cifar10_fs " + " ".join(sys.argv[1:])
  out = {"command": command.strip(), "machine": machine(), "throughput": [], "rows": []}
  for name, steps in (("small_cnn", FLAGS.timed_steps), ("wrn28_2", max(FLAGS.timed_steps // 3, 2))):
    out["throughput"].append(throughput(name, 128, steps))
    print(out["throughput"][-1], flush=True)
  previous = RESULTS / "cifar10_fs.json"
  if FLAGS.skip_extraction and previous.exists():  # keep the extraction rows of the last full run
    old = json.loads(previous.read_text())
    out.update({k: old[k] for k in ("rows", "launcher_command", "wall_seconds") if k in old})
    out["rows_from"] = old.get("rows_from") or {"command": old["command"], "machine": old["machine"],
                                                "note": old.get("note", "")}
  if not FLAGS.skip_extraction:
    t = time.time()
    launcher = [sys.executable, "-m", "launch.run", "--flagfile=configs/cifar10_cpu.flags",
                f"--data_dir={FLAGS.data_dir}", f"--workdir={FLAGS.workdir}"]
    subprocess.run(launcher, cwd=REPO, check=True)
    out["launcher_command"] = " ".join(launcher[1:])
    out["wall_seconds"] = round(time.time() - t)
    out["rows"] = [{k: v for k, v in r.items() if k not in ("config", "versions")}
                   for r in json.loads((pathlib.Path(FLAGS.workdir) / "results.json").read_text())]
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "cifar10_fs.json").write_text(json.dumps(out, indent=2))
  from launch.results import markdown_table
  md = [f"# CIFAR-10 foundation benchmark\n\nCommand: `{out['command']}`\n", f"Machine: {out['machine']}\n",
        "## Training throughput (supervised step, batch 128, 32x32x3)\n", markdown_table(out["throughput"])]
  if out["rows"]:
    md += [f"## Victim and FS extraction (`{out['launcher_command']}`, {out['wall_seconds']} s)\n"]
    if "rows_from" in out:
      md += [f"Rows from an earlier full run: `{out['rows_from']['command']}` on {out['rows_from']['machine']}. "
             f"{out['rows_from'].get('note', '')}\n"]
    md += [markdown_table(out["rows"])]
  (RESULTS / "cifar10_fs.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)
