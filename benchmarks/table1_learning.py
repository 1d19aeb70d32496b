"""Table 1, learning with chosen queries: every query strategy at two budgets against one victim, beside ART's
CopycatCNN and KnockoffNets (random and adaptive) against the same victim, budget, oracle and student.

  python -m benchmarks.table1_learning --scale=digits                           # quickstart scale
  python -m benchmarks.table1_learning --scale=cifar10 --data_dir=../shared/data  # CIFAR-10, small CNN, CPU

One launcher run (`configs/table1_learning_<scale>.flags`, every `--strategy` of the flagfile, victim trained once
or reused from the workdir) gives our rows: each the mean and std over the seeds of the median of the last
evaluations. Then, in this process, ART's attacks (`pip install adversarial-robustness-toolbox`; it is not a
dependency) run against the same victim through the same `Oracle` (the API's output mode, a hard budget), from the
same transfer set, each repetition with its own numpy seed. ART's thieved classifier is our student (same model,
optimizer, augmentation, EMA and number of steps: ART's `nb_epochs` is set so that epochs x batches = the
launcher's `--student_steps`), wrapped as an ART classifier, so that the comparison is of the attacks' choices of
queries, not of training code. ART's rows are evaluated as the launcher's are: every `--eval_every` steps of the
final training and at its end (EMA weights, test and validation inputs), the figure the median of the last
`--median_of` evaluations; `last_fidelity` (per seed) is the final evaluation's, beside it. Writes
benchmarks/results/table1_learning_<scale>.{json,md}.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags

from benchmarks.art_extraction import run_art, side_by_side
from benchmarks.common import REPO, RESULTS, environment_line, machine, run_launcher

flags.DEFINE_enum("scale", "digits", ["digits", "cifar10"], "Which flagfile: table1_learning_<scale>.flags.")
flags.DEFINE_string("data_dir", "../shared/data", "Directory holding cifar10/{train,test}.npz.")
flags.DEFINE_string("workdir", None, "Launcher workdir (default workdirs/table1_learning_<scale>).")
flags.DEFINE_list("extra", [], "Extra launcher flags (e.g. --student_steps=100).")
flags.DEFINE_list(
  "art", ["copycat", "knockoff_random", "knockoff_adaptive"], "ART attacks to run beside ours (empty: none)."
)
flags.DEFINE_bool("launcher", True, "Run the launcher (false: reuse its results.json in the workdir).")
flags.DEFINE_string(
  "results_dir",
  None,
  "Where the JSON and Markdown go (default benchmarks/results; a smoke run with tiny step counts writes elsewhere).",
)
flags.DEFINE_bool("markdown_only", False, "Only rewrite the Markdown from benchmarks/results/<name>.json.")
FLAGS = flags.FLAGS


def _results() -> pathlib.Path:
  out = pathlib.Path(FLAGS.results_dir) if FLAGS.results_dir else RESULTS
  out.mkdir(parents=True, exist_ok=True)
  return out


def write_markdown(name: str, out: dict) -> str:
  """<results>/<name>.md from the benchmark's JSON `out`."""
  from launch import results

  table = results.markdown_table(sorted(out["rows"], key=lambda r: (r["queries"], r.get("strategy", ""))))
  m = out["machine"]
  launcher_time = (
    f"{out['launcher_seconds']} s"
    if out["launcher_seconds"]
    else "not re-run by this command: its results.json in the workdir reused; a row's `seconds` is its "
    "group's time in the run that made it, or of a reuse"
  )
  md = [
    f"# Table 1, learning with chosen queries ({out['scale']})\n",
    f"Command: `{out['command']}`\n",
    f"Launcher: `{out['launcher_command']}` ({launcher_time}); ART rows {out['art_seconds']} s; "
    f"{m['cpu']}, {m['cpu_count']} cores, load average at the end {m['load_average']}, ART "
    f"{m['adversarial-robustness-toolbox']}.\n",
    environment_line(m) + "\n",
    out["notes"] + "\n",
    "ART rows: ART's attack code choosing the queries, our student trained by ART's loop (`fit` with "
    "nb_epochs x batches = the launcher's steps, batches drawn with replacement), evaluated as the launcher "
    "evaluates (every eval_every steps of the final training, the median of the last median_of evaluations; "
    "per_seed.last_fidelity is the final evaluation's). ART's adaptive Knockoff also fits the "
    "student on each query as it is answered (its online update), hence more steps.\n",
    "## Side by side (mean ± std over the seeds)\n",
    side_by_side(out["rows"]),
    "## Every figure\n",
    table,
  ]
  text = "\n".join(md)
  (_results() / f"{name}.md").write_text(text)
  return text


def main(_):
  name = f"table1_learning_{FLAGS.scale}"
  if FLAGS.markdown_only:
    print(write_markdown(name, json.loads((_results() / f"{name}.json").read_text())))
    return
  workdir = pathlib.Path(FLAGS.workdir or f"workdirs/{name}")
  record = run_launcher(f"{name}.flags", workdir, [f"--data_dir={FLAGS.data_dir}", *FLAGS.extra], FLAGS.launcher)
  out = {
    "scale": FLAGS.scale,
    "command": "python -m benchmarks.table1_learning " + " ".join(sys.argv[1:]),
    "launcher_command": record["launcher_command"],
    "launcher_seconds": round(record["wall_seconds"]),
  }
  ours = record["rows"]
  t = time.time()
  art_rows = run_art(REPO / workdir, FLAGS.art) if FLAGS.art else []
  out.update(
    art_seconds=round(time.time() - t),
    machine=machine("adversarial-robustness-toolbox"),
    rows=ours + art_rows,
    notes=record["notes"],
  )
  (_results() / f"{name}.json").write_text(json.dumps(out, indent=2))
  print(write_markdown(name, out))


if __name__ == "__main__":
  app.run(main)
