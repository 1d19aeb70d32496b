"""MixMatch vs FS on CIFAR-10 at CPU scale (issue 3's benchmark).

  python -m benchmarks.cifar10_mixmatch [--data_dir=../shared/data] [--workdir=workdirs/bench_cifar10]

Runs configs/cifar10_mixmatch_cpu.flags in the workdir of benchmarks.cifar10_fs (its victim is reused; run that
benchmark first), then puts the MixMatch rows beside the FS rows of benchmarks/results/cifar10_fs.json (same
victim, same student model and step budget) and says whether MM@250 beats FS@250 and FS@4000.
Writes benchmarks/results/cifar10_mixmatch.{json,md}.
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
flags.DEFINE_string("workdir", "workdirs/bench_cifar10", "Workdir of benchmarks.cifar10_fs (victim reused).")
flags.DEFINE_list("extra", [], "Extra launcher flags, e.g. --extra=--queries=250,1000.")
FLAGS = flags.FLAGS


def verdict(rows: list[dict]) -> list[str]:
  """Sentences comparing MM@250 with FS@250 and FS@4000 on fidelity and accuracy, from the rows alone."""
  get = lambda m, q: next((r for r in rows if r["method"] == m and r["queries"] == q), None)
  mm, out = get("mixmatch", 250), []
  for other in (get("fs", 250), get("fs", 4000)):
    if mm and other:
      for metric in ("fidelity", "accuracy"):
        word = "beats" if mm[metric] > other[metric] else "does not beat"
        out.append(f"MM@250 {word} FS@{other['queries']} on {metric}: {mm[metric]:.4f} vs {other[metric]:.4f}")
  return out


def main(_):
  fs = json.loads((RESULTS / "cifar10_fs.json").read_text())
  t = time.time()
  launcher = [sys.executable, "-m", "launch.run", "--flagfile=configs/cifar10_mixmatch_cpu.flags",
              f"--data_dir={FLAGS.data_dir}", f"--workdir={FLAGS.workdir}", *FLAGS.extra]
  subprocess.run(launcher, cwd=REPO, check=True)
  mm_rows = [{k: v for k, v in r.items() if k not in ("config", "versions")}
             for r in json.loads((pathlib.Path(FLAGS.workdir) / "results.json").read_text())
             if r["method"] != "victim"]
  rows = fs["rows"] + mm_rows
  out = {"command": "python -m benchmarks.cifar10_mixmatch " + " ".join(sys.argv[1:]),
         "launcher_command": " ".join(launcher[1:]), "fs_from": "benchmarks/results/cifar10_fs.json",
         "wall_seconds": round(time.time() - t), "machine": machine(), "rows": rows, "verdict": verdict(rows)}
  (RESULTS / "cifar10_mixmatch.json").write_text(json.dumps(out, indent=2))
  from launch.results import markdown_table
  md = ["# CIFAR-10: MixMatch vs fully-supervised extraction (CPU scale)\n", f"Command: `{out['command']}`\n",
        f"Launcher: `{out['launcher_command']}` ({out['wall_seconds']} s); FS rows from `{out['fs_from']}`\n",
        f"Machine: {out['machine']}\n", markdown_table(rows), "\n".join(f"- {v}" for v in out["verdict"]) + "\n"]
  (RESULTS / "cifar10_mixmatch.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)
