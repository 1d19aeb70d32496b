"""Table 2 of the paper in miniature: students trained on the pool's own labels (`--targets=ground_truth`: the
paper's "ImageNet" column, no oracle), on the oracle's probabilities ("WSL") and on its top-k answers ("WSL-5"), at
two pool fractions, with and without the rotation loss on the unlabeled rest of the pool at the smaller one.

  python -m benchmarks.table2 [--flagfile_name=table2_digits.flags] [--name=table2_digits]
      [--student_models=mlp,small_cnn] [--rotation_weight=0.5] [--rotation_queries=10%] [--extra=...]

For each student model, two launcher runs in one workdir (the victim is trained by the first and reused): the
flagfile as it is (its --queries give the fractions, e.g. 10%,100%), then the flagfile with
--queries=<rotation_queries> --rotation_weight=<rotation_weight> (rotation needs unlabeled inputs: not at 100%).
Writes benchmarks/results/<name>.{json,md}: every row, and the table laid out like the paper's (rows: student and
pool fraction; columns: targets without and with rotation; cells: top-k accuracy / top-k fidelity, and a second
table with top-1), with a verdict computed from the rows and the paper's findings beside.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import app, flags

from benchmarks.common import RESULTS, define_launcher_flags, environment_line, run_launcher, set_aside

FLAGS = flags.FLAGS

TARGETS = (
  ("ground_truth", "ground truth (paper: ImageNet)"),
  ("probabilities", "probabilities (WSL)"),
  ("top_k", "top-k (WSL-5)"),
)
PAPER = (
  "Paper (Jagielski et al. 2020, Table 2: ResNet_v2_50 and ResNet_v2_200 students of the WSL model on 10% "
  "and 100% of ImageNet, top-5 accuracy / top-5 fidelity): querying the oracle beats training on the public "
  "labels at both fractions, even with top-5 answers only; the rotation loss on the unlabeled data helps the "
  "larger model at 10% (WSL to WSL+Rot: +1.36 top-5 accuracy, +1.80 top-5 fidelity for ResNet_v2_200). "
  "(These are the figures the issue quotes; the other cells of the paper's table are not reproduced here, "
  "as this machine cannot reach the paper to check them.)"
)


def target(row: dict) -> str:
  return "ground_truth" if row.get("targets") == "ground_truth" else row["oracle_output"]


def cell(row: dict | None, acc: str, fid: str) -> str:
  if row is None:
    return "n/a"
  pm = lambda k: f"{100 * row[k]:.2f}" + (f" ± {100 * row[k + '_std']:.2f}" if k + "_std" in row else "")
  return f"{pm(acc)} / {pm(fid)}" if acc in row else "n/a"


def layout(rows: list[dict], k: int) -> list[str]:
  """The two tables in the paper's layout (top-k, then top-1), one line per (student, pool fraction)."""
  keys = sorted({(r["student_model"], r["pool_fraction"]) for r in rows}, key=lambda t: (t[1], t[0]))
  names = [n.replace("WSL-5", f"WSL-5; here top-{k}") for _, n in TARGETS]
  head = [
    "| student | pool fraction | " + " | ".join(names + [n + " + Rot" for n in names]) + " |",
    "|" + "---|" * (2 + 2 * len(TARGETS)),
  ]
  out = []
  for acc, fid, title in (
    (f"top{k}_accuracy", f"top{k}_fidelity", f"top-{k} accuracy / top-{k} fidelity (%)"),
    ("accuracy", "fidelity", "top-1 accuracy / top-1 fidelity (%)"),
  ):
    lines = [f"{title}, mean ± std over seeds:\n"] + head
    for model, frac in keys:
      get = lambda t, rot, model=model, frac=frac: next(
        (
          r
          for r in rows
          if r["student_model"] == model
          and r["pool_fraction"] == frac
          and target(r) == t
          and r["method"].endswith("+rot") == rot
        ),
        None,
      )
      lines.append(
        f"| {model} | {100 * frac:.0f}% | "
        + " | ".join(cell(get(t, rot), acc, fid) for rot in (False, True) for t, _ in TARGETS)
        + " |"
      )
    out += lines + [""]
  return out


def verdict(rows: list[dict], k: int) -> list[str]:
  """Per (student, fraction): each oracle target against the ground truth, and rotation against none, on top-1
  and top-k fidelity and accuracy; a difference within the two rows' spread (sum of their stds) is called a tie."""
  out = []
  keys = sorted({(r["student_model"], r["pool_fraction"]) for r in rows}, key=lambda t: (t[1], t[0]))

  def compare(a, b, what):
    parts = []
    for m in ("fidelity", f"top{k}_fidelity", "accuracy", f"top{k}_accuracy"):
      if m in a and m in b:
        d, spread = a[m] - b[m], a.get(m + "_std", 0) + b.get(m + "_std", 0)
        parts.append(f"{m} {100 * d:+.2f}" + (" (tie: within the spread)" if abs(d) <= spread else ""))
    return f"{what}: " + ", ".join(parts)

  for model, frac in keys:
    sel = [r for r in rows if r["student_model"] == model and r["pool_fraction"] == frac]
    get = lambda t, rot, sel=sel: next((r for r in sel if target(r) == t and r["method"].endswith("+rot") == rot), None)
    where = f"{model} at {100 * frac:.0f}%"
    for rot in (False, True):
      gt = get("ground_truth", rot)
      for t in ("probabilities", "top_k"):
        if gt and get(t, rot):
          out.append(compare(get(t, rot), gt, f"{where}{' + Rot' if rot else ''}: {t} - ground truth"))
    for t, _ in TARGETS:
      if get(t, True) and get(t, False):
        out.append(compare(get(t, True), get(t, False), f"{where}: {t} + Rot - {t}"))
  return out


def define_flags():
  """The driver's flags (defined when it runs: tests import its pure functions beside the launcher's flags)."""
  define_launcher_flags("table2_digits.flags", "/tmp/bench_table2", "table2_digits")
  flags.DEFINE_list("student_models", ["small_cnn"], "Student architectures (the paper: ResNet_v2_50 and _200).")
  flags.DEFINE_float("rotation_weight", 0.5, "--rotation_weight of the rotation runs.")
  flags.DEFINE_string("rotation_queries", "10%", "--queries of the rotation runs.")


def main(_):
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.fresh:
    set_aside(workdir)
  runs, rows = [], []
  for model in FLAGS.student_models:
    for extra in ([], [f"--queries={FLAGS.rotation_queries}", f"--rotation_weight={FLAGS.rotation_weight}"]):
      record = run_launcher(FLAGS.flagfile_name, workdir, [f"--student_model={model}", *extra, *FLAGS.extra])
      pool = len(np.load(workdir / "split.npz")["pool"])
      for r in record["rows"]:
        if r["method"] != "victim":
          rows.append({"student_model": model, "pool_fraction": round(r["queries"] / pool, 4), **r})
        elif not any(x["method"] == "victim" for x in rows):
          rows.insert(0, r)
      runs.append({k: record[k] for k in ("launcher_command", "wall_seconds", "machine")})
      notes = record["notes"]
  k = next(
    int(key[3 : -len("_fidelity")]) for r in rows for key in r if key.startswith("top") and key.endswith("_fidelity")
  )
  out = {
    "command": "python -m benchmarks.table2 " + " ".join(sys.argv[1:]),
    "runs": runs,
    "wall_seconds": round(sum(r["wall_seconds"] for r in runs), 1),
    "rows": rows,
    "verdict": verdict(rows[1:], k),
    "paper": PAPER,
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.name}.json").write_text(json.dumps(out, indent=2))
  from launch.results import markdown_table

  victim = rows[0]
  md = [
    f"# Table 2 in miniature ({FLAGS.flagfile_name})\n",
    f"Command: `{out['command']}`, {out['wall_seconds']} s in all (victim included)\n",
    "Runs:\n",
    "\n".join(f"- `{r['launcher_command']}`: {r['wall_seconds']} s" for r in runs) + "\n",
    f"Machine: {runs[-1]['machine']}\n",
    environment_line(runs[-1]["machine"]) + "\n",
    f"Victim test accuracy {victim['accuracy']:.4f}"
    + (f", top-{k} accuracy {victim[f'top{k}_accuracy']:.4f}" if f"top{k}_accuracy" in victim else "")
    + "\n",
    notes + "\n",
    *layout(rows[1:], k),
    PAPER + "\n",
    "Verdict (computed from the rows):\n",
    "\n".join(f"- {v}" for v in out["verdict"]) + "\n",
    "Every row:\n",
    markdown_table(rows),
  ]
  (RESULTS / f"{FLAGS.name}.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  define_flags()
  app.run(main)
