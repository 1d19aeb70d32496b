"""CIFAR-10 at CPU scale under the fair protocol: FS at 250 / 1000 / 4000 queries, MixMatch, FixMatch, FS + Rot and
MM + Rot at 250, every student against the same small-CNN victim, with learning curves.

  python -m benchmarks.cifar10_extraction [--data_dir=../shared/data] [--workdir=workdirs/bench_cifar10]
      [--runs=fs,mixmatch,fixmatch,rotation] [--extra=--student_steps=100]

Each run is one launcher invocation of a flagfile in configs/ (the victim is trained by the first and reused by the
others: same victim flags, same workdir); each is sized to finish within 2 hours on 2 cores. The rows of every run
go into one table, the curves into one figure, and a verdict compares MM@250 with FS@250 / FS@1000 / FS@4000 (the
paper's headline: MM@250 beats FS@4000). Writes benchmarks/results/cifar10_extraction.{json,md} and
cifar10_extraction_curves.png. A run already in the results file is kept unless named in --runs.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.common import REPO, RESULTS, environment_line, machine

RUNS = {
  "fs": "cifar10_cpu.flags",
  "mixmatch": "cifar10_mixmatch_cpu.flags",
  "fixmatch": "cifar10_fixmatch_cpu.flags",
  "rotation": "cifar10_rotation_cpu.flags",
}
flags.DEFINE_string("data_dir", "../shared/data", "Directory holding cifar10/{train,test}.npz.")
flags.DEFINE_string("workdir", "workdirs/bench_cifar10", "Launcher workdir (victim shared by every run).")
flags.DEFINE_list("runs", list(RUNS), f"Runs to do now, of {', '.join(RUNS)}.")
flags.DEFINE_list("extra", [], "Extra launcher flags for every run.")
flags.DEFINE_string("name", "cifar10_extraction", "Results file name in benchmarks/results/.")
FLAGS = flags.FLAGS


def verdict(rows: list[dict]) -> list[str]:
  """Sentences comparing each semi-supervised row at 250 queries with FS at 250 / 1000 / 4000 on test fidelity."""
  get = lambda m, q: next((r for r in rows if r["method"] == m and r["queries"] == q), None)
  out = []
  for m in ("mixmatch", "fixmatch", "fs+rot", "mixmatch+rot"):
    a = get(m, 250)
    for q in (250, 1000, 4000):
      b = get("fs", q)
      if a and b and a is not b:
        word = ">=" if a["fidelity"] >= b["fidelity"] else "<"
        out.append(
          f"{m}@250 {word} fs@{q}: fidelity {a['fidelity']:.4f} ± {a.get('fidelity_std', 0):.4f} vs "
          f"{b['fidelity']:.4f} ± {b.get('fidelity_std', 0):.4f}"
        )
  return out


def main(_):
  path = RESULTS / f"{FLAGS.name}.json"
  out = json.loads(path.read_text()) if path.exists() else {"runs": {}}
  for run in FLAGS.runs:
    if run not in RUNS:
      raise app.UsageError(f"unknown run {run!r}; choose from {', '.join(RUNS)}")
    launcher = [
      sys.executable,
      "-m",
      "launch.run",
      f"--flagfile={RUNS[run]}",
      f"--data_dir={FLAGS.data_dir}",
      f"--workdir={FLAGS.workdir}",
      *FLAGS.extra,
    ]
    t = time.time()
    subprocess.run(launcher, cwd=REPO, check=True)
    rows = [
      {k: v for k, v in r.items() if k not in ("config", "versions")}
      for r in json.loads((pathlib.Path(FLAGS.workdir) / "results.json").read_text())
    ]
    notes = (pathlib.Path(FLAGS.workdir) / "results.md").read_text().split("\n\n")[0]
    out["runs"][run] = {
      "launcher_command": " ".join(launcher[1:]),
      "wall_seconds": round(time.time() - t),
      "machine": machine(),
      "rows": rows,
      "notes": notes,
    }
    path.write_text(json.dumps(out, indent=2))  # after every run: a later failure keeps what was measured
  victim = next((r for run in out["runs"].values() for r in run["rows"] if r["method"] == "victim"), None)
  rows = ([victim] if victim else []) + [
    r for run in out["runs"].values() for r in run["rows"] if r["method"] != "victim"
  ]
  out.update(command="python -m benchmarks.cifar10_extraction " + " ".join(sys.argv[1:]), verdict=verdict(rows))
  path.write_text(json.dumps(out, indent=2))
  from launch import results

  results.plot_curves(rows, RESULTS / f"{FLAGS.name}_curves.png")
  md = [
    "# CIFAR-10 extraction at CPU scale (fair protocol)\n",
    f"Last command: `{out['command']}`\n",
  ]
  envs: dict[str, list[str]] = {}  # each run's environment, as recorded when it ran
  for run, r in out["runs"].items():
    envs.setdefault(environment_line(r["machine"]), []).append(run)
  md += [line + (f" (runs {', '.join(runs)})" if len(envs) > 1 else "") + "\n" for line, runs in envs.items()]
  for run, r in out["runs"].items():
    md.append(
      f"- {run}: `{r['launcher_command']}`, {r['wall_seconds']} s on {r['machine']['cpu_count']} cores "
      f"(load average at the end {r['machine']['load_average']})"
    )
  md += [
    "",
    next(iter(out["runs"].values()))["notes"] + "\n" if out["runs"] else "",
    results.markdown_table(rows),
    f"Learning curves: `{FLAGS.name}_curves.png`.\n",
    "Verdict (paper: MM@250 beats FS@4000):\n",
    "\n".join(f"- {v}" for v in out["verdict"]) + "\n",
  ]
  (RESULTS / f"{FLAGS.name}.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)
