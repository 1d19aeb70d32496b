"""The quickstart under the fair protocol: digits, FS and semi-supervised students at 50 / 200 / 1000 queries,
mean and std over 3 student seeds against one victim, and the paper's headline in miniature.

  python -m benchmarks.quickstart [--flagfile_name=quickstart.flags] [--extra=--method=fs,mixmatch,fixmatch]
  python -m benchmarks.quickstart --extra=--strategy=random,typiclust   # the headline for each query strategy

Runs the launcher with configs/<flagfile_name> in a fresh workdir (timing the whole run, victim included), copies
its rows, and checks the headline: MM@50 >= FS@200 and MM@200 >= FS@1000 on test fidelity (mean over seeds), and
the same on the validation split, for each query strategy of the run, with the paired difference seed by seed.
Writes benchmarks/results/<name>.{json,md} with the command and the machine.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, environment_line, run_launcher

FLAGS = flags.FLAGS

HEADLINE = (
  ("mixmatch", 50, "fs", 200),
  ("mixmatch", 200, "fs", 1000),
  ("fixmatch", 50, "fs", 200),
  ("fixmatch", 200, "fs", 1000),
)


def paired(a: dict, b: dict, metric: str) -> str:
  """`a` minus `b` seed by seed (rows of the same repetitions: same victim, query and student seeds r): mean ±
  standard error and a's wins / ties / losses; empty when the rows' repetitions differ."""
  sa, sb = a.get("per_seed") or [], b.get("per_seed") or []
  if len(sa) != len(sb) or len(sa) < 2:
    return ""
  d = np.array([x[metric] for x in sa]) - np.array([x[metric] for x in sb])
  se = d.std(ddof=1) / np.sqrt(len(d))
  return f"; paired {d.mean():+.4f} ± {se:.4f}, {(d > 0).sum()}/{(d == 0).sum()}/{(d < 0).sum()} wins/ties/losses"


def headline(rows: list[dict]) -> list[str]:
  """Sentences for each pair of the headline whose rows exist, per query strategy: the semi-supervised student at
  a small budget against FS at a larger one (asked with the same strategy), on test and validation fidelity."""
  students = [r for r in rows if r["method"] != "victim"]
  strategies = list(dict.fromkeys(r.get("strategy", "random") for r in students))
  out = []
  for strategy in strategies:
    get = lambda m, q, s=strategy: next(
      (r for r in students if (r["method"], r["queries"], r.get("strategy", "random")) == (m, q, s)), None
    )
    prefix = f"[{strategy}] " if len(strategies) > 1 else ""
    for m, q, other, q2 in HEADLINE:
      a, b = get(m, q), get(other, q2)
      if a and b:
        for metric in ("fidelity", "val_fidelity"):
          holds = a[metric] >= b[metric]
          out.append(
            f"{prefix}{m}@{q} {'>=' if holds else '<'} {other}@{q2} on {metric}: "
            f"{a[metric]:.4f} ± {a[metric + '_std']:.4f} vs {b[metric]:.4f} ± {b[metric + '_std']:.4f}"
            f" ({'holds' if holds else 'does not hold'}{paired(a, b, metric)})"
          )
  return out


def launcher_flags(items: list[str]) -> list[str]:
  """--extra's items as launcher flags: an item that does not start with '-' is a further value of the flag
  before it (the comma was the flag's own)."""
  out: list[str] = []
  for item in items:
    if item.startswith("-") or not out:
      out.append(item)
    else:
      out[-1] += "," + item
  return out


def define_flags() -> None:
  """The flags of this benchmark (defined when run as a program, so that tests can import it beside others)."""
  flags.DEFINE_string("flagfile_name", "quickstart.flags", "Flagfile in configs/.")
  flags.DEFINE_string("workdir", "/tmp/bench_quickstart", "Fresh workdir (deleted first).")
  flags.DEFINE_string("name", "quickstart", "Results file name in benchmarks/results/.")
  flags.DEFINE_list(
    "extra",
    [],
    "Extra launcher flags, comma-separated; an item not starting with '-' continues the flag before it "
    "(--extra=--strategy=random,typiclust,--seeds=10 is --strategy=random,typiclust --seeds=10).",
  )
  flags.DEFINE_list(
    "compare",
    [],
    "Results files (names in benchmarks/results/) whose rows also enter the headline "
    "check, e.g. the FS rows of `quickstart` for a FixMatch-only run; their victim must be this run's.",
  )


def main(_):
  workdir = pathlib.Path(FLAGS.workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  record = run_launcher(FLAGS.flagfile_name, workdir, launcher_flags(FLAGS.extra))
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
  define_flags()
  app.run(main)
