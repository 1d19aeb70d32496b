"""The paper's Table 3 CIFAR-10 rows at reduced steps on one GPU, under the fair protocol, in one run.

  python -m benchmarks.gpu_table3 --data_dir=DIR --out=$OUT/gpu_table3.json [--scale=1.0]
  python -m benchmarks.gpu_table3 --smoke --out=/tmp/gpu_table3.json      # CPU, minutes: every code path

WRN-28-2 victim and students (configs/cifar10.flags), FS and MixMatch at 250 / 1000 / 4000 queries and FixMatch at
250, 2 student seeds each, all against one victim, at --scale times the step budgets below (sized for one H200 within
about 10 minutes: victim 6,000 steps, students 3,000). Every launcher run writes its rows to the JSON as soon as it
ends, so a run cut short keeps what it measured. The device tool carries at most 64 MiB: give --data_dir a CIFAR-10
subset that fits (for example 15,000 training and 5,000 test images of ../shared/data as npz) and say so beside the
figures. Paper (Table 3, accuracy/fidelity, far longer training): FS 53.35/53.61, 73.47/73.96, 86.51/87.37;
MM 87.98/88.79, 90.63/91.39, 93.29/93.99 at 250 / 1000 / 4000; FixMatch (Sohn et al.) 94.93% accuracy at 250 labels.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from benchmarks.common import REPO

flags.DEFINE_string("out", None, "Path of the JSON result.", required=True)
flags.DEFINE_string("data_dir", None, "Directory holding cifar10/{train,test}.npz.")
flags.DEFINE_string("workdir", "/tmp/gpu_table3", "Launcher workdir.")
flags.DEFINE_float("scale", 1.0, "Multiplies every step budget.")
flags.DEFINE_bool("smoke", False, "CPU smoke test: digits, small models, a few steps.")
FLAGS = flags.FLAGS

RUNS = (("fs_mixmatch", ["--method=fs,mixmatch", "--queries=250,1000,4000"]),
        ("fixmatch", ["--method=fixmatch", "--queries=250"]))


def main(_):
  steps = lambda n: max(int(n * FLAGS.scale), 2)
  common = ["--flagfile=cifar10.flags", f"--workdir={FLAGS.workdir}", "--seeds=2", "--val_size=2000",
            f"--victim_steps={steps(6000)}", f"--student_steps={steps(3000)}", f"--rampup_steps={steps(3000)}",
            "--noise_samples=2000", "--gauss_samples=2000"]
  if FLAGS.data_dir:
    common.append(f"--data_dir={FLAGS.data_dir}")
  runs = RUNS
  if FLAGS.smoke:
    common = [a for a in common if not a.startswith("--data_dir")] + [
        "--dataset=digits", "--victim_model=mlp", "--student_model=mlp", "--victim_steps=20", "--student_steps=4",
        "--rampup_steps=4", "--eval_every=2", "--noise_samples=16", "--gauss_samples=16", "--val_size=100"]
    runs = tuple((n, [a.replace("250,1000,4000", "20,40").replace("=250", "=20") for a in args]) for n, args in RUNS)
  out = pathlib.Path(FLAGS.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  result = {"command": " ".join(["python", "-m", "benchmarks.gpu_table3"] + sys.argv[1:]), "runs": {}}
  for name, args in runs:
    launcher = [sys.executable, "-m", "launch.run", *common, *args]
    t = time.time()
    p = subprocess.run(launcher, cwd=REPO, capture_output=True, text=True)
    rows = []
    if p.returncode == 0:
      rows = [{k: v for k, v in r.items() if k not in ("config", "per_seed")}
              for r in json.loads((pathlib.Path(FLAGS.workdir) / "results.json").read_text())]
    result["runs"][name] = {"launcher_command": " ".join(launcher[1:]), "returncode": p.returncode,
                            "seconds": round(time.time() - t, 1), "rows": rows, "stderr_tail": p.stderr[-2000:]}
    out.write_text(json.dumps(result, indent=2))
    print(name, p.returncode, f"{time.time() - t:.0f}s", [(r["method"], r["queries"], round(r["fidelity"], 4))
                                                           for r in rows], flush=True)


if __name__ == "__main__":
  app.run(main)
