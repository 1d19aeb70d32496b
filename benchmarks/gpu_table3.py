"""The paper's Table 3 CIFAR-10 rows at reduced steps on one GPU, under the fair protocol, in one run.

  python -m benchmarks.gpu_table3 --data_dir=DIR --out=$OUT/gpu_table3.json [--scale=1.0] [--max_seconds=480]
  python -m benchmarks.gpu_table3 --smoke --out=/tmp/gpu_table3.json      # CPU, a minute: every code path

WRN-28-2 victim and students (configs/cifar10.flags), FS and MixMatch at 250 / 1000 / 4000 queries and FixMatch at
250, 2 student seeds each, all against one victim, at --scale times the step budgets below (victim 6,000 steps,
students 3,000). The launcher runs one after the other, most telling first (FS at every budget, which also trains
the victim; MixMatch at 250; FixMatch at 250; MixMatch at 1000 and 4000; FixMatch at 250 with the recipe chosen
on the quickstart's validation split: Adam, threshold 0.8, lambda_u 2), all in one workdir so that they share the
victim; none starts after --max_seconds. Every run writes its rows to the JSON as soon as it ends and streams its
log to `<out>.log`, so a run cut short keeps what it measured. The device tool carries at most 64 MiB: give
--data_dir a CIFAR-10 subset that fits (benchmarks/pack_images.py packs 30,000 training and 5,000 test images of
../shared/data losslessly into 55 MB) and say so beside the figures. Paper (Table 3, accuracy/fidelity, far longer
training): FS 53.35/53.61, 73.47/73.96, 86.51/87.37; MM 87.98/88.79, 90.63/91.39, 93.29/93.99 at 250 / 1000 /
4000; FixMatch (Sohn et al.) 94.93% accuracy at 250 labels.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.common import REPO, environment_line, lock_file

QUICKSTART_FIXMATCH = ["--optimizer=adam", "--lr=0.002", "--lr_schedule=constant", "--threshold=0.8", "--lambda_u=2"]
RUNS = (  # most telling first: a run cut short by the device's time limit loses the least
  ("fs", ["--method=fs", "--queries=250,1000,4000"]),
  ("mixmatch250", ["--method=mixmatch", "--queries=250"]),
  ("fixmatch250", ["--method=fixmatch", "--queries=250"]),
  ("mixmatch1000_4000", ["--method=mixmatch", "--queries=1000,4000"]),
  # FixMatch with the recipe chosen on the quickstart's validation split (configs/quickstart_fixmatch.flags)
  ("fixmatch250_adam", ["--method=fixmatch", "--queries=250", *QUICKSTART_FIXMATCH]),
)

FLAGS = flags.FLAGS


PAPER = {  # Table 3 of Jagielski et al. (2020), CIFAR-10, accuracy / fidelity in %; FixMatch from Sohn et al.
  ("fs", 250): "53.35 / 53.61",
  ("fs", 1000): "73.47 / 73.96",
  ("fs", 4000): "86.51 / 87.37",
  ("mixmatch", 250): "87.98 / 88.79",
  ("mixmatch", 1000): "90.63 / 91.39",
  ("mixmatch", 4000): "93.29 / 93.99",
  ("fixmatch", 250): "94.93 / -",
}
COLUMNS = ("accuracy", "fidelity", "val_fidelity", "gauss8_fidelity", "noise_fidelity")


def _cell(row: dict, key: str) -> str:
  return f"{row[key]:.4f} ± {row.get(key + '_std', 0.0):.4f}" if key in row else "-"


def render(paths: list[str], note: str) -> tuple[dict, str]:
  """Merges result JSONs of device calls (or earlier merges, such as benchmarks/results/gpu_table3.json) into one
  result and its Markdown table: the rows of every finished run, a later file's run replacing an earlier's."""
  merged = {"calls": [], "runs": {}}
  for path in paths:
    result = json.loads(pathlib.Path(path).read_text())  # a device call's JSON, or an earlier merge of them
    merged["calls"] += result.get("calls") or [{"command": result["command"], "lock": result["lock"]}]
    merged["runs"].update({n: r for n, r in result["runs"].items() if "rows" in r})
  made_by = " ".join(["python -m benchmarks.gpu_table3", f"--render={','.join(paths)}", "--note=..."])
  lines = ["# Table 3 (CIFAR-10) at reduced steps on one GPU, fair protocol", "", note, "", f"Table: `{made_by}`", ""]
  lines += [f"- `{c['command']}`" for c in merged["calls"]]
  lines += ["", *dict.fromkeys(environment_line({"lock": c["lock"]}) for c in merged["calls"])]
  lines += ["", "| run | launcher seconds | launcher command |", "|---|---|---|"]
  lines += [f"| {n} | {r['seconds']} | `{r['launcher_command']}` |" for n, r in merged["runs"].items()]
  header = ["run", "method", "queries", "seeds", "steps", *COLUMNS, "noise_top", "train seconds", "paper acc / fid (%)"]
  lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  victim_done = False
  for name, r in merged["runs"].items():
    for row in r["rows"]:
      if row["method"] == "victim":
        if not victim_done:
          lines.append(
            f"| - | victim | 0 | - | - | {row['accuracy']:.4f} | 1 | - | - | - | {row.get('noise_top', '-')} | - | - |"
          )
        victim_done = True
        continue
      cells = [name, row["method"], row["queries"], row["seeds"], row["steps"], *(_cell(row, k) for k in COLUMNS)]
      cells += [row.get("noise_top", "-"), row["seconds"], PAPER.get((row["method"], row["queries"]), "-")]
      lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return merged, "\n".join(lines) + "\n"


def define_flags() -> None:
  """The script's flags, defined only when run as a script (names like --out and --workdir clash on import)."""
  flags.DEFINE_string("out", None, "Path of the JSON result.", required=True)
  flags.DEFINE_string("data_dir", None, "Directory holding cifar10/{train,test}.npz.")
  flags.DEFINE_string("workdir", "/tmp/gpu_table3", "Launcher workdir.")
  flags.DEFINE_float("scale", 1.0, "Multiplies every step budget.")
  flags.DEFINE_bool("smoke", False, "CPU smoke test: digits, small models, a few steps.")
  flags.DEFINE_float("max_seconds", 480.0, "No launcher run starts after this many seconds.")
  flags.DEFINE_list("runs", [name for name, _ in RUNS], "Runs to make, in this order.")
  flags.DEFINE_list(
    "render", None, "Make no run: merge these result JSONs (device calls of this script) into --out and its .md."
  )
  flags.DEFINE_string("note", "", "--render: a line on where and how the runs were made, put under the title.")


def main(_):
  if FLAGS.render:
    merged, table = render(FLAGS.render, FLAGS.note)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2))
    out.with_suffix(".md").write_text(table)
    print(table)
    return
  steps = lambda n: max(int(n * FLAGS.scale), 2)
  common = [
    "--flagfile=cifar10.flags",
    f"--workdir={FLAGS.workdir}",
    "--seeds=2",
    "--val_size=2000",
    f"--victim_steps={steps(6000)}",
    f"--student_steps={steps(3000)}",
    f"--rampup_steps={steps(3000)}",
    "--noise_samples=2000",
    "--gauss_samples=2000",
  ]
  if FLAGS.data_dir:
    common.append(f"--data_dir={FLAGS.data_dir}")
  runs = RUNS
  if FLAGS.smoke:
    common = [a for a in common if not a.startswith("--data_dir")] + [
      "--dataset=digits",
      "--victim_model=mlp",
      "--student_model=mlp",
      "--victim_steps=20",
      "--student_steps=4",
      "--rampup_steps=4",
      "--eval_every=2",
      "--noise_samples=16",
      "--gauss_samples=16",
      "--val_size=100",
    ]
    runs = tuple(
      (n, [a.replace("250,1000,4000", "20,40").replace("1000,4000", "40").replace("=250", "=20") for a in args])
      for n, args in RUNS
    )
  unknown = sorted(set(FLAGS.runs) - {n for n, _ in RUNS})
  if unknown:
    raise app.UsageError(f"--runs: unknown {unknown}; choose from {[n for n, _ in RUNS]}")
  runs = [next(r for r in runs if r[0] == n) for n in FLAGS.runs]
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {
    "command": " ".join(["python", "-m", "benchmarks.gpu_table3"] + sys.argv[1:]),
    "lock": lock_file(),
    "runs": {},
  }
  log, start = out.with_suffix(".log"), time.time()
  log.write_text("")
  for name, args in runs:
    if time.time() - start > FLAGS.max_seconds:
      result["runs"][name] = {"skipped": f"not started: {time.time() - start:.0f} s > --max_seconds"}
      out.write_text(json.dumps(result, indent=2))
      print(name, "skipped (--max_seconds)", flush=True)
      continue
    launcher = [sys.executable, "-m", "launch.run", *common, *args]
    t = time.time()
    with log.open("a") as f:
      f.write(f"==== {name}: {' '.join(launcher[1:])}\n")
      f.flush()
      p = subprocess.run(launcher, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)
    rows, curves = [], pathlib.Path(FLAGS.workdir) / "curves.png"
    if p.returncode == 0:
      if curves.exists():
        shutil.copy(curves, out.parent / f"{out.stem}_{name}_curves.png")
      rows = [
        {k: v for k, v in r.items() if k not in ("config", "per_seed")}
        for r in json.loads((pathlib.Path(FLAGS.workdir) / "results.json").read_text())
      ]
    result["runs"][name] = {
      "launcher_command": " ".join(launcher[1:]),
      "returncode": p.returncode,
      "seconds": round(time.time() - t, 1),
      "rows": rows,
      "log_tail": log.read_text()[-2000:] if p.returncode else "",
    }
    out.write_text(json.dumps(result, indent=2))
    print(
      name,
      p.returncode,
      f"{time.time() - t:.0f}s",
      [(r["method"], r["queries"], round(r["fidelity"], 4)) for r in rows],
      flush=True,
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
