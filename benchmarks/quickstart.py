"""The quickstart under the fair protocol: digits, FS and semi-supervised students at 50 / 200 / 1000 queries,
mean and std over 3 student seeds against one victim, and the paper's headline in miniature.

  python -m benchmarks.quickstart [--flagfile_name=quickstart.flags] [--extra=--method=fs,mixmatch,fixmatch]

Runs the launcher with configs/<flagfile_name> in a fresh workdir (timing the whole run, victim included), copies
its rows, and checks the headline: MM@50 >= FS@200 and MM@200 >= FS@1000 on test fidelity (mean over seeds), and
the same on the validation split. Writes benchmarks/results/<name>.{json,md} with the command and the machine.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from absl import app, flags

from benchmarks.common import RESULTS, environment_line, run_launcher

flags.DEFINE_string("flagfile_name", "quickstart.flags", "Flagfile in configs/.")
flags.DEFINE_string("workdir", "/tmp/bench_quickstart", "Fresh workdir (deleted first).")
flags.DEFINE_string("name", "quickstart", "Results file name in benchmarks/results/.")
flags.DEFINE_list("extra", [], "Extra launcher flags.")
flags.DEFINE_list(
  "compare",
  [],
  "Results files (names in benchmarks/results/) whose rows also enter the headline "
  "check, e.g. the FS rows of `quickstart` for a FixMatch-only run; their victim must be this run's.",
)
FLAGS = flags.FLAGS

HEADLINE = (
  ("mixmatch", 50, "fs", 200),
  ("mixmatch", 200, "fs", 1000),
  ("fixmatch", 50, "fs", 200),
  ("fixmatch", 200, "fs", 1000),
)


def headline(rows: list[dict]) -> list[str]:
  """Sentences for each pair of the headline whose rows exist: the semi-supervised student at a small budget
  against FS at a larger one, on test and validation fidelity."""
  get = lambda m, q: next((r for r in rows if r["method"] == m and r["queries"] == q), None)
  out = []
  for m, q, other, q2 in HEADLINE:
    a, b = get(m, q), get(other, q2)
    if a and b:
      for metric in ("fidelity", "val_fidelity"):
        holds = a[metric] >= b[metric]
        out.append(
          f"{m}@{q} {'>=' if holds else '<'} {other}@{q2} on {metric}: "
          f"{a[metric]:.4f} ± {a[metric + '_std']:.4f} vs {b[metric]:.4f} ± {b[metric + '_std']:.4f}"
          f" ({'holds' if holds else 'does not hold'})"
        )
  return out


def main(_):
  workdir = pathlib.Path(FLAGS.workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  record = run_launcher(FLAGS.flagfile_name, workdir, FLAGS.extra)
  rows, wall = record["rows"], record["wall_seconds"]
  others = []
  victim = next((r for r in rows if r["method"] == "victim"), None)
  for name in FLAGS.compare:
    theirs = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
    their_victim = next((r for r in theirs if r["method"] == "victim"), None)
    if victim is None or their_victim is None or their_victim.get("accuracy") != victim.get("accuracy"):
      raise ValueError(f"benchmarks/results/{name}.json was not made against this run's victim")
    others += [
      r
      for r in theirs
      if r["method"] != "victim" and not any((o["method"], o["queries"]) == (r["method"], r["queries"]) for o in rows)
    ]
  out = {
    "command": "python -m benchmarks.quickstart " + " ".join(sys.argv[1:]),
    "launcher_command": record["launcher_command"],
    "wall_seconds": wall,
    "machine": record["machine"],
    "rows": rows,
    "compared_with": FLAGS.compare,
    "headline": headline(rows + others),
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.name}.json").write_text(json.dumps(out, indent=2))
  if (workdir / "curves.png").exists():
    shutil.copy(workdir / "curves.png", RESULTS / f"{FLAGS.name}_curves.png")
  from launch.results import markdown_table

  notes = record["notes"]
  md = [
    f"# Quickstart under the fair protocol ({FLAGS.flagfile_name})\n",
    f"Command: `{out['command']}`\n",
    f"Launcher: `{out['launcher_command']}`, whole run (victim included) {wall} s\n",
    f"Machine: {out['machine']}\n",
    environment_line(out["machine"]) + "\n",
    notes + "\n",
    markdown_table(rows),
    "Headline in miniature (paper: MM@250 beats FS@4000)"
    + (f", with the rows of {', '.join(FLAGS.compare)}.md" if FLAGS.compare else "")
    + ":\n",
    "\n".join(f"- {h}" for h in out["headline"]) + "\n",
  ]
  (RESULTS / f"{FLAGS.name}.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  app.run(main)
