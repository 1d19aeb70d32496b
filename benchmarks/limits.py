"""The limits of learning-based extraction as a benchmark: one launcher run of a limits flagfile, its rows copied
with the command and the machine, and a reading of the numbers computed from them (which source of
nondeterminism costs most fidelity; where the learning attack and the functionally-equivalent attack stop).

  python -m benchmarks.limits [--flagfile_name=limits_digits.flags] [--name=limits_digits] [--extra=...]

The workdir is set aside first (--fresh: moved to <workdir>.previous) so that the wall time covers every training
run of the study; after an interruption, --nofresh reuses the finished runs. Writes benchmarks/results/<name>.{json,md}
and <name>.png (the launcher's bar plot).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

from absl import app, flags

from benchmarks.common import RESULTS, define_launcher_flags, environment_line, run_launcher, set_aside

FLAGS = flags.FLAGS

COLUMNS = (
  "source",
  "varied",
  "pairs",
  "method",
  "queries",
  "oracle_output",
  "oracle_used",
  "accuracy",
  "fidelity",
  "top3_fidelity",
  "top5_fidelity",
  "gauss8_fidelity",
  "gauss24_fidelity",
  "gauss64_fidelity",
  "noise_fidelity",
  "noise_top_share",
  "max_logit_diff",
  "max_param_diff",
  "params_identical",
)
_STUDY = ("victim", "attack", "functional_equivalence")


def _pm(row: dict, key: str) -> str:
  return f"{row[key]:.4f} ± {row.get(key + '_std', 0.0):.4f}"


def reading(rows: list[dict]) -> list[str]:
  """Sentences read off the rows: whether nothing-varied runs were bit-identical, the sources ranked by the test
  fidelity they cost, and the attacks beside the closest a second training of the recipe comes."""
  out = []
  sources = [r for r in rows if r["source"] not in _STUDY]
  nothing = next((r for r in sources if r["source"] == "nothing"), None)
  if nothing:
    out.append(
      f"nothing varied: {'bit-identical parameters in every pair' if nothing['params_identical'] else 'NOT bit-identical'}"
      f" (max parameter difference {nothing['max_param_diff']:.3g}, test fidelity {_pm(nothing, 'fidelity')})."
    )
  varied = sorted(
    (r for r in sources if r["source"] not in ("nothing", "deterministic_ops")), key=lambda r: r["fidelity"]
  )
  if varied:
    noise = lambda r: f", uniform noise {_pm(r, 'noise_fidelity')}" if "noise_fidelity" in r else ""
    out.append(
      "test fidelity lost per source, most first: "
      + "; ".join(f"{r['source']} {1 - r['fidelity']:.4f} (fidelity {_pm(r, 'fidelity')}{noise(r)})" for r in varied)
      + "."
    )
    worst_gauss = lambda r: min(
      (k for k in r if k.startswith("gauss") and k.endswith("_fidelity")), key=lambda k: r[k], default=None
    )
    for r in varied:
      k = worst_gauss(r)
      if k:
        out.append(
          f"{r['source']}: fidelity {r['fidelity']:.4f} on the test set, {r[k]:.4f} under "
          f"{k[: -len('_fidelity')]} noise."
        )
    # The attack beside a retraining with other seeds (what an adversary holding everything but the seeds gets)
    # and beside the closest second training of any source.
    refs = {r["source"]: r for r in varied if r["source"] == "all"}
    closest = max(varied, key=lambda r: r["fidelity"])
    refs.setdefault(closest["source"], closest)
    for a in (r for r in rows if r["source"] == "attack"):
      beside = "; ".join(
        f"{'below' if a['fidelity'] < r['fidelity'] else 'at or above'} {name} "
        f"({r['fidelity']:.4f}"
        + (
          f", uniform noise {r['noise_fidelity']:.4f} vs the attack's {a['noise_fidelity']:.4f}"
          if "noise_fidelity" in a and "noise_fidelity" in r
          else ""
        )
        + ")"
        for name, r in refs.items()
      )
      out.append(
        f"attack {a['method']} on {a['oracle_output']} answers of {a['queries']} inputs: test fidelity "
        f"{_pm(a, 'fidelity')}: {beside}."
      )
  fe = next((r for r in rows if r["source"] == "functional_equivalence"), None)
  if fe:
    sets = ", ".join(
      f"{k[: -len('_fidelity')] or 'test'} {fe[k]:.4f}"
      for k in fe
      if k.endswith("fidelity") and not k.startswith("top")
    )
    out.append(
      f"functional equivalence ({fe['varied']}; {fe['queries']} queries): fidelity {fe['fidelity']:.4f}; "
      f"on every set: {sets}; max logit difference {fe['max_logit_diff']:.3g}."
    )
  return out


def main(_):
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.fresh:
    set_aside(workdir)
  record = run_launcher(FLAGS.flagfile_name, workdir, FLAGS.extra)
  out = {
    "command": "python -m benchmarks.limits " + " ".join(sys.argv[1:]),
    **record,
    "reading": reading(record["rows"]),
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{FLAGS.name}.json").write_text(json.dumps(out, indent=2))
  if (workdir / "plot.png").exists():
    shutil.copy(workdir / "plot.png", RESULTS / f"{FLAGS.name}.png")
  from launch.results import markdown_table

  table = [
    {k: r[k] for k in COLUMNS if k in r} | {k + "_std": r[k + "_std"] for k in COLUMNS if k + "_std" in r}
    for r in record["rows"]
    if r["source"] != "victim"
  ]
  victim = next(r for r in record["rows"] if r["source"] == "victim")
  md = [
    f"# The limits of learning-based extraction ({FLAGS.flagfile_name})\n",
    f"Command: `{out['command']}`\n",
    f"Launcher: `{record['launcher_command']}`, {'fresh workdir, ' if FLAGS.fresh else ''}whole run "
    f"{record['wall_seconds']} s\n",
    f"Machine: {record['machine']}\n",
    environment_line(record["machine"]) + "\n",
    f"Victim (the base run {victim['varied'].split()[-1]}): test accuracy {victim['accuracy']:.4f}; every run: "
    + ", ".join(f"{k} {v:.4f}" for k, v in victim["run_accuracy"].items())
    + "\n",
    record["notes"] + "\n",
    markdown_table(table),
    f"Bar plot: `{FLAGS.name}.png`.\n",
    "Reading (computed from the rows above):\n",
    "\n".join(f"- {s}" for s in out["reading"]) + "\n",
  ]
  (RESULTS / f"{FLAGS.name}.md").write_text("\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  define_launcher_flags("limits_digits.flags", "/tmp/bench_limits", "limits_digits")
  app.run(main)
