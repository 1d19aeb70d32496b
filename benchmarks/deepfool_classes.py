"""DFAL's `--dfal_classes`: does DeepFool on the top K classes rank a pool as DeepFool on every class does, and how
much faster? On a launcher workdir's victim (default: the CIFAR-10 Table 1 victim), `--images` training images
drawn with `--seed`; DeepFool norms with all classes and with each K of `--classes`; Spearman correlation of the
rankings, and the share of the nearest quarter that both pick (what DFAL asks). Float32 Jacobians, 2 CPU cores.

  python -m benchmarks.deepfool_classes --workdir=workdirs/table1_learning_cifar10 --data_dir=../shared/data

Writes benchmarks/results/deepfool_classes.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from absl import app, flags

from benchmarks.common import REPO, RESULTS, environment_line, machine

flags.DEFINE_string("workdir", "workdirs/table1_learning_cifar10", "Launcher workdir holding victim/.")
flags.DEFINE_string("data_dir", "../shared/data", "Directory holding the victim's dataset.")
flags.DEFINE_string("dataset", "cifar10", "The victim's dataset.")
flags.DEFINE_integer("images", 512, "Training images ranked.")
flags.DEFINE_list("classes", ["3"], "Top-K class counts compared with every class.")
flags.DEFINE_integer("seed", 0, "Draw of the images.")
FLAGS = flags.FLAGS


def _ranks(a: np.ndarray) -> np.ndarray:
  return np.argsort(np.argsort(a, kind="stable"), kind="stable")


def main(_):
  from extraction import datasets
  from extraction import victim as victim_lib
  from extraction.datasets import to_float
  from extraction.strategies import dfal

  victim = victim_lib.load_victim(REPO / FLAGS.workdir / "victim")
  ds = datasets.load(FLAGS.dataset, FLAGS.data_dir)
  pick = np.random.default_rng(FLAGS.seed).choice(len(ds.train.images), FLAGS.images, replace=False)
  x = to_float(ds.train.images[pick])
  dfal.deepfool_norms(victim.model, victim.variables, x[:8])  # compile outside the timings
  rows, base = [], None
  for k in [0] + [int(c) for c in FLAGS.classes]:
    t = time.time()
    norms = dfal.deepfool_norms(victim.model, victim.variables, x, classes=k)
    row = {"classes": k or "all", "seconds": round(time.time() - t, 1), "median_norm": float(np.median(norms))}
    if base is None:
      base = norms
    else:
      quarter = len(x) // 4
      row["spearman"] = float(np.corrcoef(_ranks(base), _ranks(norms))[0, 1])
      row["nearest_quarter_shared"] = len(set(np.argsort(base)[:quarter]) & set(np.argsort(norms)[:quarter])) / quarter
    rows.append(row)
    print(row, flush=True)
  out = {
    "command": "python -m benchmarks.deepfool_classes " + " ".join(sys.argv[1:]),
    "machine": machine(),
    "victim": FLAGS.workdir,
    "images": FLAGS.images,
    "rows": rows,
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / "deepfool_classes.json").write_text(json.dumps(out, indent=2))
  lines = [
    "# DeepFool on the top K classes vs every class (DFAL's --dfal_classes)\n",
    f"Command: `{out['command']}`\n",
    f"Victim: `{FLAGS.workdir}/victim`; {FLAGS.images} {FLAGS.dataset} training images (seed {FLAGS.seed}); "
    f"{out['machine']['cpu']}, {out['machine']['cpu_count']} cores, load average {out['machine']['load_average']}.\n",
    environment_line(out["machine"]) + "\n",
    "| classes | seconds | median norm | Spearman vs all | nearest quarter shared |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['classes']} | {r['seconds']} | {r['median_norm']:.4f} | {r.get('spearman', 1.0):.4f} | "
      f"{r.get('nearest_quarter_shared', 1.0):.3f} |"
    )
  (RESULTS / "deepfool_classes.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
